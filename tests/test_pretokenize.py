"""``python -m maskbit_jax.pretokenize``: ArrayRecord tokens equal on-the-fly tokenization."""

from __future__ import annotations

import numpy as np
import pytest

import maskbit_jax
from conftest import REPO, task_on_token_set, tokenizer_config
from maskbit_jax.data.sources import SyntheticSource
from maskbit_jax.pretokenize import TokenDataset, main as pretokenize_main


def test_pretokenized_tokens_equal_on_the_fly(tmp_path, golden, fixture_configs):
  cfg = tmp_path / "c.py"
  cfg.write_text(f"def get_config():\n  return {tokenizer_config(fixture_configs, 'tokenizer_tiny')!r}\n")
  out = tmp_path / "tok"
  args = ["--config", str(cfg), "--checkpoint", str(golden / "tokenizer_tiny.bin"), "--data", "synthetic:11",
          "--size", "32", "--batch_size", "8", "--out", str(out)]
  assert pretokenize_main(args) == 0
  ds = TokenDataset(str(out))
  assert len(ds) == 11 and ds.meta["token_grid"] == [2, 2]
  tok = maskbit_jax.load_tokenizer(tokenizer_config(fixture_configs, "tokenizer_tiny"), golden / "tokenizer_tiny.bin")
  src = SyntheticSource(11, 32)
  images = np.stack([src[i]["image"] for i in range(11)])
  expected = np.asarray(tok.encode(images))
  expected_flipped = np.asarray(tok.encode(images[:, :, ::-1]))
  got = [ds[i] for i in range(11)]
  assert [int(r["index"]) for r in got] == list(range(11))
  np.testing.assert_array_equal(np.stack([r["tokens"] for r in got]), expected)
  np.testing.assert_array_equal(np.stack([r["tokens_flipped"] for r in got]), expected_flipped)
  np.testing.assert_array_equal([int(r["label"]) for r in got], [src[i]["label"] for i in range(11)])
  with pytest.raises(FileExistsError):
    pretokenize_main(args)
  assert len(TokenDataset(str(out))) == 11  # the refused run left the dataset intact


@pytest.mark.parametrize("tokenizer_arg, size, message", [
    (":bits=10", 32, r"holds 10-bit tokens; the model takes 12 bits per token"),
    ("", 64, r"holds a \(8, 8\) token grid; the model takes \(4, 4\)")])
def test_stage_two_refuses_a_token_set_of_other_bits_or_grid(tmp_path, tokenizer_arg, size, message):
  """A set pretokenized by another tokenizer (bits) or at another size (grid): named before any step."""
  out = tmp_path / "tokens"
  assert pretokenize_main(["--config", str(REPO / f"configs/tokenizer_tiny.py{tokenizer_arg}"), "--random_init",
                           "--data", "synthetic:8", "--size", str(size), "--batch_size", "8", "--out", str(out)]) == 0
  task = task_on_token_set("generator_tiny.py", out, tmp_path)
  with pytest.raises(ValueError, match=message):
    task.dataset()
