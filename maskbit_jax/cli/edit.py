"""The editing command, ``python -m maskbit_jax.edit`` (the library: ``maskbit_jax.edit``, ``vary``, ``outpaint``,
in ``maskbit_jax.sampling.editing``): ``edit`` (inpainting, class-guided editing), ``outpaint`` (a larger
canvas) and ``vary`` (bit-level variations), for MaskBit and BAR.

    out = maskbit_jax.edit(gen, tok, images, keep_mask, [3, 5], jax.random.key(0))  # keep_mask: pixels or tokens
    out = maskbit_jax.vary(gen, tok, images, 8, [3, 3], jax.random.key(0))           # every token keeps 8 high bits
    out = maskbit_jax.edit.outpaint(gen, tok, images, [3], key, pad=(0, 4, 0, 0))     # 4 token rows below

  python -m maskbit_jax.edit --config configs/generator_tiny.py --generator runs/gen/export/generator \\
      --image cat.png --box 8,8,24,24 --classes 3,5 --out out/edit          # regenerate the box as classes 3, 5
  python -m maskbit_jax.edit --config ... --image cat.png --mask hole.png --classes 3 --out out/inpaint
  python -m maskbit_jax.edit --config ... --image cat.png --keep_bits 8 --classes 3,3,3 --out out/vary
  python -m maskbit_jax.edit --config ... --image cat.png --outpaint 0,4,0,4 --classes 3 --out out/wider

The images are encoded, the kept tokens (or kept bits of every token) are fixed and the generator's own compiled
sampler fills in the rest under the classes, then everything is decoded; what each family can keep, and how,
is the library's (``maskbit_jax.sampling.editing``: ``maskbit_jax.edit``, ``vary``, ``outpaint``).

The command writes ``grid.png`` (input, the kept tokens bright, one output per class), the outputs' PNGs,
``tokens.npz`` (``tokens``, ``input_tokens``, ``fixed_bits``, ``labels``) and ``summary.json``.
"""


from __future__ import annotations

import argparse
import io
import json
import sys
import time

import jax
import numpy as np

from maskbit_jax import cli_errors, paths, registry
from maskbit_jax.sampling import editing

def _ints(text: str, flag: str, count: int | None = None) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"{flag} must be comma-separated integers, got {text!r}") from None
  if count is not None and len(values) != count:
    raise argparse.ArgumentTypeError(f"{flag} needs {count} integers, got {text!r}")
  return values


def _parse(argv):
  from maskbit_jax import hub
  from maskbit_jax.cli.sample import add_sampling_flags, check_sampling_flags, resolve_model_args
  from maskbit_jax.config import add_config_help, split_config_args

  config, overrides, rest = split_config_args(argv)
  p = cli_errors.parser("python -m maskbit_jax.edit", __doc__)
  add_config_help(p, required="default: the config stored with --generator when that is one of our exports")
  p.add_argument("--tokenizer", help="tokenizer checkpoint or released name (default: the config's)")
  p.add_argument("--generator", help="generator checkpoint or released name, e.g. maskbit_generator_12bit "
                 "(default: experiment.generator_checkpoint)")
  p.add_argument("--random_init", action="store_true", help="untrained weights for both (smoke test)")
  hub.add_download_flag(p)
  p.add_argument("--image", required=True, help="the image to edit (resized and centre-cropped to the model's size)")
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument("--mask", help="mask image: white (> 127) pixels are regenerated, the others kept")
  what.add_argument("--box", help="x0,y0,x1,y1 pixels (end exclusive, at the model's size) to regenerate")
  what.add_argument("--keep_bits", type=int, help="vary: every token keeps its N most significant bits")
  what.add_argument("--outpaint", help="top,bottom,left,right tokens to add around the image")
  p.add_argument("--classes", required=True, help="comma-separated class ids, one output each, e.g. 3,5")
  p.add_argument("--order", choices=editing.ORDERS, default="auto", help="BAR: generation order (see the module doc)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  add_sampling_flags(p)
  args = p.parse_args(rest)
  config = resolve_model_args(p, config, args)
  try:
    args.class_ids = list(_ints(args.classes, "--classes"))
    args.box = None if args.box is None else _ints(args.box, "--box", 4)
    args.outpaint = None if args.outpaint is None else _ints(args.outpaint, "--outpaint", 4)
  except argparse.ArgumentTypeError as e:
    p.error(str(e))
  if not args.class_ids:
    p.error("--classes names no class id")
  check_sampling_flags(p, args)
  from maskbit_jax.image_io import check_output_path

  try:
    check_output_path(args.out, folder=True)
  except ValueError as e:
    p.error(f"--out: {e}")
  return config, overrides, args


def _encoder_options(cfg) -> dict:
  """Editing encodes the image: a tokenizer that loads decode-only by default (BAR-FSQ) gets its encoder."""
  fam = registry.tokenizer_family_of(cfg)
  return dict(with_encoder=True) if fam.bits == "bar_fsq" else {}


def _square(image_u8: np.ndarray, side: int) -> np.ndarray:
  """uint8 ``[H, W, 3]`` -> float32 ``[side, side, 3]`` in [0, 1]: centre crop to a square, bicubic resize."""
  from PIL import Image

  h, w = image_u8.shape[:2]
  s = min(h, w)
  crop = image_u8[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
  return np.asarray(Image.fromarray(crop).resize((side, side), Image.BICUBIC), np.float32) / 255.0


def _read_mask(path: str, side: int) -> np.ndarray:
  """A mask image -> pixel keep mask ``[side, side]``: white (> 127) is regenerated."""
  from PIL import Image

  from maskbit_jax.image_io import read_rgb

  gray = read_rgb(path).astype(np.float32).mean(-1)
  h, w = gray.shape
  s = min(h, w)
  crop = gray[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s].astype(np.uint8)
  return np.asarray(Image.fromarray(crop).resize((side, side), Image.NEAREST)) <= 127


def _mask_picture(image: np.ndarray, kept_hw: np.ndarray, stride: int) -> np.ndarray:
  """The input with its generated tokens greyed out (partly kept tokens partly), for the grid."""
  weight = np.kron(kept_hw, np.ones((stride, stride)))[..., None]
  return (image * (0.25 + 0.75 * weight) + 0.375 * (1 - weight)).astype(np.float32)


def main(argv=None) -> int:
  config, overrides, args = _parse(sys.argv[1:] if argv is None else argv)
  from maskbit_jax import image_io
  from maskbit_jax.config import load_config
  from maskbit_jax.data.sample_images import class_caption
  from maskbit_jax.cli.sample import _replicated, load_models

  raw = image_io.read_rgb(args.image)  # before the models load: a bad file fails at once
  cfg = load_config(config, overrides)
  gen, tok, settings = load_models(cfg, args, **_encoder_options(cfg))
  gen, tok = _replicated(gen), _replicated(tok)
  if args.random_init:
    print("NOTE: random (untrained) weights; the images are not meaningful.")
  gen.check_labels(args.class_ids)
  grid = editing.check_models(gen, tok, jax.random.key(0))
  side = editing.image_hw(tok, grid)[0]
  image = _square(raw, side)
  labels = np.asarray(args.class_ids, np.int64)
  key = jax.random.key(args.seed)
  start = time.perf_counter()
  if args.keep_bits is not None:
    out = editing.vary(gen, tok, image, args.keep_bits, labels, key, **settings)
  elif args.outpaint is not None:
    out = editing.outpaint(gen, tok, image, labels, key, pad=args.outpaint, order=args.order, **settings)
  else:
    keep = _read_mask(args.mask, side) if args.mask else editing.box_keep_mask((side, side), args.box)
    out = editing.edit(gen, tok, image, keep, labels, key, order=args.order, **settings)
  outputs = np.asarray(out["images"])
  seconds = time.perf_counter() - start

  # the input placed where it lies on the (possibly larger) canvas, then the mask picture
  top, left = (args.outpaint[0], args.outpaint[2]) if args.outpaint else (0, 0)
  stride = side // grid[0]
  canvas_in = np.full(outputs.shape[1:], 0.5, np.float32)
  canvas_in[top * stride:top * stride + side, left * stride:left * stride + side] = image
  fixed = np.asarray(out["fixed_bits"])[0]
  full = (1 << gen.token_bits) - 1
  picture = _mask_picture(canvas_in, editing.kept_fraction(fixed, gen.token_bits), stride)
  source = (cfg.get("dataset", None) or {}).get("source", "")
  captions = ["input", "kept (bright)"] + [class_caption(int(c), source) for c in labels]
  paths.makedirs(args.out)
  for i, (label, img) in enumerate(zip(labels, outputs)):
    image_io.save_png(paths.join(args.out, f"{i:05d}_class{label}.png"), img)
  grid_images = np.concatenate([canvas_in[None], picture[None], outputs])
  image_io.save_labelled_grid(paths.join(args.out, "grid.png"), grid_images, captions, min(len(captions), 8))
  buffer = io.BytesIO()  # one upload on an object store (np.savez seeks in what it writes)
  np.savez(buffer, labels=labels, **{k: np.asarray(out[k]) for k in ("tokens", "input_tokens", "fixed_bits")})
  paths.write_bytes_atomic(paths.join(args.out, "tokens.npz"), buffer.getvalue())
  kept = int(np.count_nonzero(fixed == full))
  summary = dict(images=len(labels), seconds=round(seconds, 3), kept_tokens=kept, tokens=int(fixed.size),
                 random_init=bool(args.random_init), mode="vary" if args.keep_bits is not None else
                 "outpaint" if args.outpaint else "edit")
  paths.write_text_atomic(paths.join(args.out, "summary.json"), json.dumps(summary, indent=1))
  print(json.dumps(summary))
  print(f"wrote {len(labels)} images and {paths.join(args.out, 'grid.png')}")
  return 0



if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
