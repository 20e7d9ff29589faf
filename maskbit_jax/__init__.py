"""maskbit_jax: MaskBit and BAR bit-token image generators in JAX.

    import maskbit_jax
    tok = maskbit_jax.load_tokenizer("configs/maskbit_tokenizer_12bit.py", "maskbit_tokenizer_12bit.bin")
    tokens = tok.encode(images)            # float32 NHWC in [0, 1] -> int32 [B, h, w]
    images = tok.decode_tokens(tokens)     # -> float32 NHWC
    gen = maskbit_jax.load_generator("configs/maskbit_generator_12bit.py", "maskbit_generator_12bit.bin")
    out = maskbit_jax.sample(gen, tok, [207, 360], jax.random.key(0))   # BAR: load_bar_generator / load_bar_tokenizer
    out = maskbit_jax.edit(gen, tok, images, keep_mask, [207, 360], jax.random.key(0))   # also vary, edit.outpaint
"""

import warnings

# `python -m maskbit_jax.sample` runs the CLI module that this package also imports for its
# `sample` function; runpy warns about that on every run, though nothing is executed twice that
# matters (the module defines functions only). Silence that one warning, for this module only.
warnings.filterwarnings("ignore", message=r"'maskbit_jax\.(sample|edit)' found in sys\.modules",
                        category=RuntimeWarning)

from maskbit_jax.bar import load_bar_generator, load_bar_tokenizer  # noqa: E402
from maskbit_jax.config import load_config  # noqa: E402
from maskbit_jax.convert.param_mapping import CheckpointMismatchError  # noqa: E402
from maskbit_jax.convert.torch_pickle import UnsafeCheckpointError  # noqa: E402
from maskbit_jax.models.lfq_quantizer import bits_to_indices, indices_to_bits  # noqa: E402
from maskbit_jax.generator import Generator, load_generator  # noqa: E402
from maskbit_jax.sample import sample  # noqa: E402
from maskbit_jax import edit  # noqa: E402  (the module is callable: maskbit_jax.edit(gen, tok, ...))
from maskbit_jax.edit import KeepMaskError, vary  # noqa: E402
from maskbit_jax.tokenizer import Tokenizer, load_tokenizer  # noqa: E402

__all__ = [
    "CheckpointMismatchError",
    "KeepMaskError",
    "Generator",
    "Tokenizer",
    "UnsafeCheckpointError",
    "bits_to_indices",
    "edit",
    "indices_to_bits",
    "load_bar_generator",
    "load_bar_tokenizer",
    "load_config",
    "load_generator",
    "load_tokenizer",
    "sample",
    "vary",
]
__version__ = "0.1.0"
