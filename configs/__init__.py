"""The released and tiny configs, shipped in the package as ``maskbit_jax.configs`` (``maskbit_jax/configs`` is
a link to this folder), so ``load_config("generator_tiny")`` and ``--config generator_tiny`` work from an
installed wheel; in a checkout ``configs/generator_tiny.py`` works as before."""
