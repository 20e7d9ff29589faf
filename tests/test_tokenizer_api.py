"""The public tokenizer API: loading from every checkpoint form, configs, helpers, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import maskbit_jax
from conftest import load_npz, nhwc, tokenizer_config
from maskbit_jax.convert.checkpoint_files import read_state_dict, write_state_dict
from maskbit_jax.cli.convert import main as convert_main

NAME = "tokenizer_tiny"


@pytest.fixture(scope="module")
def io(golden):
  return load_npz(golden / f"{NAME}_io.npz")


@pytest.fixture(scope="module")
def cfg(fixture_configs):
  return tokenizer_config(fixture_configs, NAME)


@pytest.fixture(scope="module")
def tok(cfg, golden):
  return maskbit_jax.load_tokenizer(cfg, golden / f"{NAME}.bin")


def test_encode_decode_match_reference(tok, io):
  tokens = tok.encode(nhwc(io["images"]))
  assert tokens.dtype == np.int32 and tokens.shape == io["indices"].shape
  np.testing.assert_array_equal(np.asarray(tokens), io["indices"])
  images = tok.decode_tokens(tokens)
  assert images.dtype == np.float32
  np.testing.assert_allclose(np.asarray(images), nhwc(io["decoded_from_indices"]), rtol=1e-4, atol=1e-4)
  flat = np.asarray(tokens).reshape(tokens.shape[0], -1)  # [B, N] as the reference takes it
  np.testing.assert_array_equal(np.asarray(tok.decode_tokens(flat)), np.asarray(images))
  z_q, result = tok.quantize(nhwc(io["images"]))
  np.testing.assert_allclose(np.asarray(tok.decode(z_q)), nhwc(io["decoded"]), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(result["quantizer_loss"]), float(io["eval_quantizer_loss"]), rtol=1e-5)


def test_bits_helpers(tok, io):
  bits = tok.tokens_to_bits(io["indices"])
  assert bits.shape == io["indices"].shape + (tok.token_bits,)
  np.testing.assert_array_equal(np.asarray(bits), np.where(nhwc(io["z_e"]) > 0, 1.0, -1.0))
  np.testing.assert_array_equal(np.asarray(tok.bits_to_tokens(bits)), io["indices"])


def test_every_checkpoint_form_loads_the_same_params(tmp_path, cfg, golden, tok):
  import jax

  state = read_state_dict(golden / f"{NAME}.bin")
  write_state_dict(tmp_path / "t.safetensors", state)
  write_state_dict(tmp_path / "t.bin", state)
  _write_yaml(tmp_path / "cfg.yaml", cfg)
  assert convert_main(["--config", str(tmp_path / "cfg.yaml"), "--checkpoint", str(golden / f"{NAME}.bin"),
                       "--out", str(tmp_path / "orbax")]) == 0
  reference = jax.tree.map(np.asarray, tok.params)
  for source in [golden / f"{NAME}_state.npz", tmp_path / "t.safetensors", tmp_path / "t.bin", tmp_path / "orbax"]:
    other = maskbit_jax.load_tokenizer(cfg, source)
    jax.tree.map(np.testing.assert_array_equal, reference, jax.tree.map(np.asarray, other.params))


def _write_yaml(path, cfg) -> None:
  """A reference-style YAML: extra sections, an interpolation and YAML 1.1 numbers."""
  doc = {"experiment": {"project": "MaskBit", "name": NAME, "max_train_examples": 1281167},
         "model": cfg["model"],
         "optimizer": {"params": {"learning_rate": "1e-4"}},
         "lr_scheduler": {"params": {"learning_rate": "${optimizer.params.learning_rate}"}}}
  text = yaml.safe_dump(doc, sort_keys=False).replace("'1e-4'", "1e-4").replace("1281167", "1_281_167")
  path.write_text(text)


def test_reference_yaml_loads_unchanged(tmp_path, cfg, golden, io):
  _write_yaml(tmp_path / "ref.yaml", cfg)
  loaded = maskbit_jax.load_config(tmp_path / "ref.yaml")
  assert loaded.lr_scheduler.params.learning_rate == pytest.approx(1e-4)
  assert loaded.experiment.max_train_examples == 1281167
  tok = maskbit_jax.load_tokenizer(tmp_path / "ref.yaml", golden / f"{NAME}.bin")
  np.testing.assert_array_equal(np.asarray(tok.encode(nhwc(io["images"]))), io["indices"])


def test_overrides(cfg, tmp_path):
  loaded = maskbit_jax.load_config(cfg, ["--config.model.vq_model.token_size=10",
                                         "model.vq_model.channel_mult=[1,2]"])
  assert loaded.model.vq_model.token_size == 10
  assert list(loaded.model.vq_model.channel_mult) == [1, 2]
  with pytest.raises(KeyError, match="token_sise"):
    maskbit_jax.load_config(cfg, ["--config.model.vq_model.token_sise=10"])
  with pytest.raises(ValueError, match="integer"):
    maskbit_jax.load_config(cfg, ["--config.model.vq_model.token_size=ten"])


def test_py_config_with_argument():
  from conftest import REPO

  cfg = maskbit_jax.load_config(f"{REPO}/configs/tokenizer_tiny.py:bits=10")
  assert cfg.model.vq_model.token_size == 10 and cfg.model.vq_model.codebook_size == 1024


# -- bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("images, error, match", [
    (np.zeros((8, 8, 3), np.float32), ValueError, "4-D"),
    (np.zeros((1, 3, 16, 16), np.float32), ValueError, "NCHW"),
    (np.zeros((1, 16, 16, 4), np.float32), ValueError, "3 channels"),
    (np.zeros((1, 16, 16, 3), np.uint8), TypeError, "floating point"),
    (np.full((1, 16, 16, 3), 255.0, np.float32), ValueError, r"\[0, 1\]"),
    (np.full((1, 16, 16, 3), -1.0, np.float32), ValueError, r"\[0, 1\]"),
    (np.full((1, 16, 16, 3), np.nan, np.float32), ValueError, "NaN"),
])
def test_bad_images(tok, images, error, match):
  with pytest.raises(error, match=match):
    tok.encode(images)


def test_bad_tokens(tok):
  n = tok.codebook_size  # 2 ** bits of the fixture tokenizer
  with pytest.raises(ValueError, match=rf"\[0, {n}\)"):
    tok.decode_tokens(np.full((1, 4, 4), n))
  with pytest.raises(ValueError, match=rf"\[0, {n}\)"):
    tok.decode_tokens(np.full((1, 4, 4), -1))
  with pytest.raises(TypeError, match="integers"):
    tok.decode_tokens(np.zeros((1, 4, 4), np.float32))
  with pytest.raises(ValueError, match="square"):
    tok.decode_tokens(np.zeros((1, 15), np.int32))


@pytest.mark.parametrize("key, value, match", [
    ("model_class", "vqgan++", "model_class"),
    ("quantizer_type", "vae", "quantizer_type"),
    ("token_size", 31, "token_size"),
    ("hidden_channels", 24, "divisible by 32"),
    ("num_resolutions", 3, "channel_mult"),
])
def test_bad_config_values(cfg, key, value, match):
  bad = {"model": {"vq_model": {**cfg["model"]["vq_model"], key: value}}}
  with pytest.raises(ValueError, match=match):
    maskbit_jax.load_tokenizer(bad, random_init=True)


def test_no_checkpoint_is_an_error_not_random_weights(cfg):
  with pytest.raises(ValueError, match="random_init"):
    maskbit_jax.load_tokenizer(cfg)


def test_checkpoint_for_another_config(cfg, golden):
  with pytest.raises(maskbit_jax.CheckpointMismatchError) as err:
    maskbit_jax.load_tokenizer(cfg, golden / "tokenizer_vq_tiny.bin")
  text = str(err.value)
  assert "missing key" in text and "unexpected key 'quantize.embedding.weight'" in text


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, cfg, golden):
  state = read_state_dict(golden / f"{NAME}.bin")
  dropped = next(iter(state))
  reshaped = list(state)[5]
  state.pop(dropped)
  state[reshaped] = np.zeros((7,) + state[reshaped].shape[1:], state[reshaped].dtype)
  state["decoder.extra.weight"] = np.zeros((2,), np.float32)
  state["quantize.codebook"] = -state["quantize.codebook"]
  write_state_dict(tmp_path / "bad.npz", state)
  with pytest.raises(maskbit_jax.CheckpointMismatchError) as err:
    maskbit_jax.load_tokenizer(cfg, tmp_path / "bad.npz")
  text = str(err.value)
  assert f"missing key {dropped!r}" in text
  assert "unexpected key 'decoder.extra.weight'" in text
  assert f"shape mismatch for {reshaped!r}" in text and "(7," in text
  assert "buffer 'quantize.codebook' differs" in text


def test_missing_file_and_unknown_format(tmp_path, cfg):
  with pytest.raises(FileNotFoundError, match="nope.bin"):
    maskbit_jax.load_tokenizer(cfg, tmp_path / "nope.bin")
  (tmp_path / "w.h5").write_bytes(b"x")
  with pytest.raises(ValueError, match="unknown checkpoint format"):
    maskbit_jax.load_tokenizer(cfg, tmp_path / "w.h5")


def _lightning_ckpt(path, state):
  """A Lightning-style ``.ckpt``: {'epoch', 'global_step', 'state_dict': {...}} in torch's zip format.

  Built by nesting the state-dict pickle our writer produces inside an outer
  dict at the pickle-opcode level (the writer itself only writes flat dicts).
  """
  import io as _io
  import zipfile

  from maskbit_jax.convert.torch_pickle import write_torch_file

  flat = path.with_suffix(".flat.bin")
  write_torch_file(flat, state)
  with zipfile.ZipFile(flat) as z:
    members = {n: z.read(n) for n in z.namelist()}
  pkl_name = next(n for n in members if n.endswith("/data.pkl"))
  inner = members[pkl_name]
  assert inner[:2] == b"\x80\x02" and inner[-1:] == b"."
  outer = (b"\x80\x02}(X\x05\x00\x00\x00epochK\x07X\x0b\x00\x00\x00global_stepM\xe8\x03"
           b"X\n\x00\x00\x00state_dict" + inner[2:-1] + b"u.")
  members[pkl_name] = outer
  buf = _io.BytesIO()
  with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
    for name, data in members.items():
      z.writestr(name, data)
  path.write_bytes(buf.getvalue())


def test_lightning_ckpt_uses_inner_state_dict_and_drops_loss(tmp_path, cfg, golden, tok):
  import jax

  state = read_state_dict(golden / f"{NAME}.bin")
  state["loss.discriminator.main.0.weight"] = np.ones((4, 3, 3, 3), np.float32)
  state["loss.perceptual_loss.scaling_layer.shift"] = np.zeros((1, 3, 1, 1), np.float32)
  _lightning_ckpt(tmp_path / "model.ckpt", state)
  loaded = read_state_dict(tmp_path / "model.ckpt")
  assert not any(k.startswith("loss.") for k in loaded) and len(loaded) == len(state) - 2
  other = maskbit_jax.load_tokenizer(cfg, tmp_path / "model.ckpt")
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, tok.params),
               jax.tree.map(np.asarray, other.params))
  # a .bin with a stray loss.* key is NOT silently cleaned: only Lightning files drop them
  write_state_dict(tmp_path / "stray.bin", state)
  with pytest.raises(maskbit_jax.CheckpointMismatchError, match="unexpected key 'loss.discriminator"):
    maskbit_jax.load_tokenizer(cfg, tmp_path / "stray.bin")


def test_bfloat16_compute_keeps_float32_params_and_outputs(cfg, golden, io):
  import jax

  tok16 = maskbit_jax.load_tokenizer(cfg, golden / f"{NAME}.bin", dtype="bfloat16")
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(tok16.params))
  tokens = np.asarray(tok16.encode(nhwc(io["images"])))
  assert tokens.shape == io["indices"].shape
  # bf16 keeps ~3 significant digits: latents near 0 may flip a bit, most tokens agree
  assert np.mean(tokens == io["indices"]) > 0.5
  images = tok16.decode(nhwc(io["z_q"]))
  assert images.dtype == np.float32 and images.shape == nhwc(io["decoded"]).shape
  err = np.abs(np.asarray(images) - nhwc(io["decoded"]))
  assert float(err.mean()) < 0.1 * float(np.abs(io["decoded"]).mean())
  with pytest.raises(ValueError, match="runtime.dtype"):
    maskbit_jax.load_tokenizer(cfg, golden / f"{NAME}.bin", dtype="float8")
