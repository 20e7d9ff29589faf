"""The commands, one module each (``python -m maskbit_jax.<command>`` runs them); the library never imports them.

``sample`` and ``edit`` live here already: their ``python -m`` names are also the library functions
``maskbit_jax.sample`` / ``maskbit_jax.edit``, so the modules at those names are only ever run, never imported.
"""
