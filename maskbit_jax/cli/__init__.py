"""The commands, one module each; ``python -m maskbit_jax.<command>`` runs them through a shim at the old name.

train, convert, sample, evaluate, pretokenize, reconstruct, edit: each module holds its argument parsing and
``main(argv=None) -> exit code`` and calls the library; the library never imports a command
(``tests/test_registry.py``). The shims (``maskbit_jax/{sample,edit,evaluate,pretokenize,reconstruct}.py``,
``train/__main__.py``, ``convert/__main__.py``) are only run: ``maskbit_jax.sample`` / ``maskbit_jax.edit``
are also the library's functions, and importing a module of the same name would replace them.
"""
