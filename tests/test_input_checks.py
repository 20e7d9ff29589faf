"""Bad input is refused at the boundary with a one-line error naming it (issue 15, items 7-9): non-finite
pixels and sampling settings, out-of-range class ids, images of every PIL mode, unusable flags."""

from __future__ import annotations

import os
import re
import struct
import zlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import maskbit_jax
from conftest import REPO, load_npz, nhwc, tokenizer_config
from maskbit_jax import bar, image_io
from maskbit_jax.config import vq_model_config
from maskbit_jax.data.sources import CorruptImageError, ImageFolderSource
from maskbit_jax.models.tokenizer import latent_stride_of
from maskbit_jax.sampling.maskgit_sampler import SamplerConfig
from maskbit_jax.tokenizer import validate_images

GEN_TINY = str(REPO / "configs/generator_tiny.py")
BAR_TINY = str(REPO / "configs/bar_tiny.py")
TOK_TINY = str(REPO / "configs/tokenizer_tiny.py")
NOT_FINITE = (float("nan"), float("inf"), float("-inf"))


@pytest.fixture(scope="module")
def tok(golden, fixture_configs):
  return maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")


@pytest.fixture(scope="module")
def images(golden):
  return nhwc(load_npz(golden / "tokenizer_tiny_io.npz")["images"]).astype(np.float32)


@pytest.fixture(scope="module")
def maskbit_pair():
  return maskbit_jax.load_generator(GEN_TINY, random_init=True), maskbit_jax.load_tokenizer(GEN_TINY, random_init=True)


@pytest.fixture(scope="module")
def bar_pair():
  return bar.load_bar_generator(BAR_TINY, random_init=True), bar.load_bar_tokenizer(BAR_TINY, random_init=True)


def _stride(config: str) -> int:
  return latent_stride_of(vq_model_config(maskbit_jax.load_config(config)))


def _png16(path, pixels: np.ndarray) -> None:
  """A 16-bit PNG (grayscale [H, W] or RGB [H, W, 3]) written by hand: PIL cannot write 16-bit RGB."""
  pixels = np.asarray(pixels, ">u2")
  colour_type = 0 if pixels.ndim == 2 else 2
  raw = b"".join(b"\0" + row.tobytes() for row in pixels)  # filter type 0 on every row

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 16, colour_type, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                   + chunk(b"IEND", b""))


# -- 7. NaN / Inf ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", NOT_FINITE)
def test_non_finite_pixels_are_refused(tok, images, bad):
  one = images.copy()
  one[-1, 0, 0, 0] = bad
  with pytest.raises(ValueError, match="NaN or infinite"):
    tok.encode(one)
  large = np.full((64,) + images.shape[1:], 0.5, np.float32)  # min/max reductions of XLA drop NaN here
  large[len(large) // 2, 1, 2, 1] = bad
  with pytest.raises(ValueError, match="NaN or infinite"):
    validate_images(large)


@pytest.mark.parametrize("name", ["guidance_scale", "softmax_temperature", "randomize_temperature", "scale_pow"])
@pytest.mark.parametrize("bad", NOT_FINITE)
def test_non_finite_maskbit_settings_are_refused(maskbit_pair, name, bad):
  gen, tok = maskbit_pair
  with pytest.raises(ValueError, match=rf"{name}=.*must be finite"):
    maskbit_jax.sample(gen, tok, [0], jax.random.key(0), num_steps=2, **{name: bad})
  with pytest.raises(ValueError, match=rf"{name}=.*must be finite"):  # the sampler itself, as a library
    SamplerConfig(num_steps=2, num_positions=gen.seq_len, codebook_splits=gen.codebook_splits,
                  mask_token=gen.mask_token, **{name: bad})


@pytest.mark.parametrize("name", ["guidance_scale", "randomize_temperature"])
@pytest.mark.parametrize("bad", NOT_FINITE)
def test_non_finite_bar_settings_are_refused(bar_pair, name, bad):
  gen, tok = bar_pair
  with pytest.raises(ValueError, match=rf"{name}=.*must be finite"):
    maskbit_jax.sample(gen, tok, [0], jax.random.key(0), **{name: bad})


def test_non_finite_settings_are_refused_on_the_command_line(tmp_path, capsys):
  from maskbit_jax.cli.sample import main as sample_main

  for config, flag in ((GEN_TINY, "--softmax_temperature"), (BAR_TINY, "--guidance_scale"),
                       (GEN_TINY, "--randomize_temperature")):
    with pytest.raises(SystemExit):
      sample_main(["--config", config, "--random_init", "--classes", "1", flag, "nan", "--out", str(tmp_path / "s")])
    assert f"{flag} nan: must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# -- 9. class ids ------------------------------------------------------------------------

def test_huge_class_ids_are_named(maskbit_pair, bar_pair, tmp_path):
  from maskbit_jax.cli.sample import main as sample_main

  for gen, tok in (maskbit_pair, bar_pair):
    for bad in (2**64, -2**70, 2**63):
      with pytest.raises(ValueError, match=rf"class labels must be in \[0, \d+\), got {bad}"):
        maskbit_jax.sample(gen, tok, [0, bad], jax.random.key(0))
  with pytest.raises(ValueError, match=f"got {2**64}"):
    sample_main(["--config", GEN_TINY, "--random_init", "--classes", f"1,{2**64}", "--out", str(tmp_path / "s")])


# -- 9. unusable flags and batches -------------------------------------------------------

def test_sample_out_is_checked_before_sampling(tmp_path, capsys):
  from maskbit_jax.cli.sample import main as sample_main

  existing = tmp_path / "taken.png"
  existing.write_bytes(b"not a folder")
  for out, why in ((existing, "exists and is not a folder"), (existing / "sub", "is a file, not a folder")):
    with pytest.raises(SystemExit):
      sample_main(["--config", GEN_TINY, "--random_init", "--classes", "1", "--out", str(out)])
    assert why in capsys.readouterr().err
  # an unwritable place (os.access stubbed: these tests may run as root, who may write anywhere)
  with mock.patch.object(os, "access", return_value=False):
    with pytest.raises(ValueError, match=rf"cannot write to {re.escape(str(tmp_path))} \(permission denied\)"):
      image_io.check_output_path(str(tmp_path / "new" / "deeper"), folder=True)


def test_reconstruct_flags_are_named(tmp_path, capsys):
  from maskbit_jax.cli.reconstruct import main as reconstruct_main

  stride = _stride(TOK_TINY)
  base = ["--config", TOK_TINY, "--random_init", "--out", str(tmp_path / "out")]
  with pytest.raises(SystemExit):
    reconstruct_main(base + ["--batch_size", "0"])
  assert "--batch_size must be >= 1" in capsys.readouterr().err
  for size in (stride - 1, stride + 1, 0):
    with pytest.raises(ValueError, match=rf"--size {size}: must be a positive multiple of .* stride {stride}"):
      reconstruct_main(base + ["--size", str(size)])
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (4 * stride, 4 * stride, 3), dtype=np.uint8)).save(folder / "whole.jpg")
  data = (folder / "whole.jpg").read_bytes()
  (folder / "cut.jpg").write_bytes(data[:len(data) // 2])
  with pytest.raises(CorruptImageError, match=r"cannot decode image .*cut\.jpg"):
    reconstruct_main(base + ["--size", str(2 * stride), "--images", str(folder)])


def test_evaluate_batch_size_zero_is_named(tok, capsys, tmp_path):
  from maskbit_jax.data.sources import SyntheticSource
  from maskbit_jax.cli.evaluate import main as evaluate_main
  from maskbit_jax.evaluation.runs import evaluate_tokenizer

  with pytest.raises(SystemExit):
    evaluate_main(["tokenizer", "--config", TOK_TINY, "--random_init", "--batch_size", "0", "--skip", "fid,lpips"])
  assert "--batch_size must be >= 1, got 0" in capsys.readouterr().err
  with pytest.raises(ValueError, match="--batch_size must be >= 1, got 0"):
    evaluate_tokenizer(tok, SyntheticSource(2, 2 * tok.latent_stride), batch_size=0, num_images=None, progress=False)
  with pytest.raises(SystemExit):
    evaluate_main(["tokenizer", "--config", TOK_TINY, "--random_init", "--out", str(tmp_path)])
  assert "is a folder, not a file" in capsys.readouterr().err


def test_encode_empty_and_bfloat16_batches(tok, images):
  with pytest.raises(ValueError, match=r"empty batch \(shape \(0,"):
    tok.encode(images[:0])
  exact = np.asarray(jnp.asarray(images, jnp.bfloat16).astype(jnp.float32))  # bfloat16-representable pixels
  want = np.asarray(tok.encode(exact))
  np.testing.assert_array_equal(np.asarray(tok.encode(jnp.asarray(exact, jnp.bfloat16))), want)
  np.testing.assert_array_equal(np.asarray(tok.encode(np.asarray(jnp.asarray(exact, jnp.bfloat16)))), want)


# -- 8. image modes ----------------------------------------------------------------------

def _readers(path, size: int):
  """What every image reader of the package makes of the single image file ``path`` (uint8, stored size
  for the raw readers)."""
  folder = path.parent
  source = ImageFolderSource(str(folder), size)
  loaded, _ = image_io.load_image_folder(str(folder), size)
  return dict(read_rgb=image_io.read_rgb(path), source_raw=source.raw(0)["image"],
              source_item=source[0]["image"], load_image_folder=loaded[0])


def test_16_bit_pngs_are_scaled_not_clipped(tmp_path):
  h, w = 12, 10
  gray = (np.arange(h * w, dtype=np.float64).reshape(h, w) / (h * w - 1) * 65535).astype(np.uint16)
  rgb = np.stack([gray, gray[::-1], 65535 - gray], axis=-1)
  for name, pixels in (("gray", gray), ("rgb", rgb)):
    (tmp_path / name).mkdir()
    path = tmp_path / name / "x.png"
    _png16(path, pixels)
    want = np.broadcast_to(pixels[..., None] if pixels.ndim == 2 else pixels, (h, w, 3)) / 65535.0
    out = _readers(path, min(h, w))
    for reader in ("read_rgb", "source_raw"):
      got = out[reader] / 255.0
      assert got.shape == (h, w, 3), reader
      assert abs(got.mean() - want.mean()) <= 1 / 255, (name, reader)
      assert np.abs(got - want).max() <= 1 / 255 + 1e-9, (name, reader)
    for reader in ("source_item", "load_image_folder"):  # resized: the mean survives
      assert abs(out[reader].mean() - want.mean()) <= 2 / 255, (name, reader)


def test_other_modes_are_converted_or_refused_by_name(tmp_path):
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  base = Image.fromarray(rgb)
  files = {"1.png": base.convert("1"), "L.png": base.convert("L"), "P.png": base.convert("P"),
           "LA.png": base.convert("LA"), "RGBA.png": base.convert("RGBA"), "CMYK.jpg": base.convert("CMYK")}
  for name, im in files.items():
    im.save(tmp_path / name)
    with Image.open(tmp_path / name) as stored:
      assert stored.mode == name.split(".")[0]
      want = np.asarray(stored.convert("RGB"))
    np.testing.assert_array_equal(image_io.read_rgb(tmp_path / name), want, err_msg=name)
  np.testing.assert_array_equal(image_io.read_rgb(tmp_path / "RGBA.png"), rgb)  # alpha dropped, colours kept
  # 32-bit integer (mode I) holding 16-bit samples, as decoders give 16-bit files: scaled
  wide = (rgb[..., 0].astype(np.int32) * 257)
  np.testing.assert_array_equal(image_io.pil_to_rgb_uint8(Image.fromarray(wide), "i"), np.repeat(rgb[..., :1], 3, -1))
  with pytest.raises(CorruptImageError, match=r"big\.tif: 32-bit integer image \(mode I\)"):
    image_io.pil_to_rgb_uint8(Image.fromarray(wide * 1000), "big.tif")
  with pytest.raises(CorruptImageError, match=r"f\.tif: image mode 'F' is not supported"):
    image_io.pil_to_rgb_uint8(Image.fromarray(rng.random((4, 4), dtype=np.float32)), "f.tif")
  # decoded arrays (tfds sources): 16-bit scaled, grayscale repeated, floats refused by name
  np.testing.assert_array_equal(image_io.array_to_rgb_uint8(rgb.astype(np.uint16) * 257, "a"), rgb)
  np.testing.assert_array_equal(image_io.array_to_rgb_uint8(rgb[..., :1], "a"), np.repeat(rgb[..., :1], 3, -1))
  with pytest.raises(CorruptImageError, match="example 3: pixel dtype float32"):
    image_io.array_to_rgb_uint8(rgb.astype(np.float32), "example 3")
