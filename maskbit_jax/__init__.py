"""maskbit_jax: MaskBit and BAR bit-token image generators in JAX.

    import maskbit_jax
    tok = maskbit_jax.load_tokenizer("configs/maskbit_tokenizer_12bit.py", "maskbit_tokenizer_12bit.bin")
    tokens = tok.encode(images)            # float32 NHWC in [0, 1] -> int32 [B, h, w]
    images = tok.decode_tokens(tokens)     # -> float32 NHWC
    gen = maskbit_jax.load_generator("configs/maskbit_generator_12bit.py", "maskbit_generator_12bit.bin")
    out = maskbit_jax.sample(gen, tok, [207, 360], jax.random.key(0))   # BAR: load_bar_generator / load_bar_tokenizer
    out = maskbit_jax.edit(gen, tok, images, keep_mask, [207, 360], jax.random.key(0))   # also vary, outpaint
"""

# ``sample`` and ``edit`` are the library's functions (sampling.api, sampling.editing). Their ``python -m``
# command files have the same names; the library never imports them, and ``python -m`` runs a file without
# binding it to this package, so these names stay the functions (the commands live in maskbit_jax.cli).
from maskbit_jax.bar import load_bar_generator, load_bar_tokenizer
from maskbit_jax.config import load_config
from maskbit_jax.convert.param_mapping import CheckpointMismatchError
from maskbit_jax.convert.torch_pickle import UnsafeCheckpointError
from maskbit_jax.generator import Generator, load_generator
from maskbit_jax.models.lfq_quantizer import bits_to_indices, indices_to_bits
from maskbit_jax.sampling.api import sample
from maskbit_jax.sampling.editing import KeepMaskError, edit, outpaint, vary
from maskbit_jax.tokenizer import Tokenizer, load_tokenizer

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
    "outpaint",
    "sample",
    "vary",
]
__version__ = "0.1.0"
