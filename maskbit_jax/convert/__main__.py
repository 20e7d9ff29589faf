from maskbit_jax.convert.cli import main

raise SystemExit(main())
