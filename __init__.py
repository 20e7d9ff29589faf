"""This folder is a source checkout of maskbit_jax; the package itself is the ``maskbit_jax/`` folder inside it.

Python imports this file only when it runs in the folder ABOVE a checkout named ``maskbit_jax`` (the checkout
then shadows the installed package, and every name, e.g. ``maskbit_jax.load_tokenizer``, would be missing).
Say so instead of failing later with an AttributeError.
"""

import os as _os

if __name__ == "maskbit_jax":  # not when a test runner imports this folder under its own name
  raise ImportError(
      f"'import maskbit_jax' found the source checkout {_os.path.dirname(_os.path.abspath(__file__))}, not the "
      "package inside it (Python was started in the folder above the checkout): run from another folder, or rename "
      "the checkout")
