"""Evaluation CLIs: ``python -m maskbit_jax.evaluate {tokenizer,generator}``.

Tokenizer (rFID, IS, PSNR, SSIM, MAE, MSE, LPIPS, codebook usage and entropy
of the reconstructions of a dataset split)::

  python -m maskbit_jax.evaluate tokenizer --config configs/maskbit_tokenizer_12bit.py \\
      --checkpoint maskbit_tokenizer_12bit.bin --data tfds:imagenet2012:validation \\
      --inception pretrained/pt_inception-2015-12-05-6726825d.pth \\
      --lpips pretrained/vgg_lpips.pth --vgg16 pretrained/vgg16-397923af.pth --out results/tok12.json

Generator, MaskBit or BAR by the config (class-balanced samples with the
config's evaluation settings, FID and IS against ADM reference statistics; the
samples are also written as one ADM ``.npz``, whatever the process count)::

  python -m maskbit_jax.evaluate generator --config configs/maskbit_generator_12bit.py \\
      --tokenizer maskbit_tokenizer_12bit.bin --generator maskbit_generator_12bit.bin \\
      --num_images 50000 --ref_stats VIRTUAL_imagenet256_stats.npz \\
      --inception pretrained/pt_inception-2015-12-05-6726825d.pth --samples_npz out/samples.npz --out results/gen12.json
  python -m maskbit_jax.evaluate generator --config configs/bar_b.py --tokenizer bar_fsq_16bits_ft.bin \
      --generator bar_b.bin --num_images 50000 --ref_stats VIRTUAL_imagenet256_labeled.npz \
      --inception pretrained/pt_inception-2015-12-05-6726825d.pth --samples_npz out/bar_b.npz --out results/bar_b.json

The networks' weights are the files published for them (read without torch,
never downloaded here). The tokenizer's images are decoded and resized in grain threads (``--num_threads``)
while the devices reconstruct the batch before. Batches are split over every local device; statistics
are accumulated in float64 on the host (running sums, not images) and merged
over processes. The result JSON says ``"complete": false`` for a run that was
interrupted, and such numbers are never printed as final.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import jax

from maskbit_jax import cli_errors, distributed, hub, paths, registry, sharding
from maskbit_jax.evaluation.fid import load_reference_stats
from maskbit_jax.sampling import api as sampling_api
from maskbit_jax.evaluation.runs import evaluate_generator, evaluate_tokenizer, load_inception, load_lpips



def _require(path: str | None, flag: str, what: str) -> str:
  if not path:
    raise SystemExit(f"{flag} is required for {what} (a weights file; see `python -m maskbit_jax.evaluate -h`)")
  if not paths.exists(path):
    raise FileNotFoundError(f"{flag} {path}: file not found ({what})")
  return path


def _write_result(path: str | None, result: dict) -> None:
  if path and jax.process_index() == 0:
    paths.makedirs_parent(path)
    paths.write_text_atomic(path, json.dumps(result, indent=1))


def load_generator_pair(cfg, args) -> tuple:
  """(generator, tokenizer, resolved sampling settings, family) of a generator config, through its family in
  the registry (``family``: the result's name of it, ``maskbit`` or ``bar``). The parameters are placed on every
  local device once."""
  fam = registry.family_of(cfg)
  if fam.role != registry.GENERATOR:
    raise SystemExit(f"--config {cfg.experiment.get('name', '')!r} is a {fam.role} config ({fam.name}); "
                     "evaluate generator takes a generator config")
  overrides = dict(guidance_scale=args.guidance_scale)
  if args.num_steps is not None:
    if "num_steps" not in fam.sampling_keys:
      raise SystemExit(f"--num_steps is a MaskBit setting; a {fam.name} config takes "
                       f"{', '.join(fam.sampling_keys)}")
    overrides["num_steps"] = args.num_steps
  tok = registry.tokenizer_family_of(cfg).get("loader")(cfg, args.tokenizer, random_init=args.random_init,
                                                        precision=args.precision)
  gen = fam.get("loader")(cfg, args.generator, random_init=args.random_init, seed=1, precision=args.precision)
  sampling_api.check_pair(gen, tok)
  settings = sampling_api.resolve_settings(gen, overrides)
  family = fam.name.removesuffix("_generator")  # the result's name of the family: maskbit, bar
  rep = sharding.replicated(sharding.create_mesh({"data": -1}, jax.local_devices()))
  gen, tok = (dataclasses.replace(m, params=jax.device_put(m.params, rep)) for m in (gen, tok))
  return gen, tok, settings, family


# -- command line ------------------------------------------------------------------------

def main(argv=None) -> int:
  from maskbit_jax.config import load_config, split_config_args

  config, overrides, rest = split_config_args(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="python -m maskbit_jax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="what", required=True)
  t = sub.add_parser("tokenizer", help="reconstruction metrics of a tokenizer")
  t.add_argument("--checkpoint", help="a PyTorch file, converted checkpoint dir or released name")
  t.add_argument("--data", default="photos", help="photos | synthetic:N | tfds:NAME:SPLIT[:DIR] | image folder")
  t.add_argument("--size", type=int, default=None, help="image side (default dataset.preprocessing.resolution)")
  t.add_argument("--lpips", help="LPIPS heads (the reference's pretrained/vgg_lpips.pth), 'auto' or a released "
                 "name: downloaded once (--vgg16 then defaults to auto)")
  t.add_argument("--vgg16", help="torchvision VGG16 weights (vgg16-397923af.pth), if --lpips holds heads only; "
                 "'auto': downloaded once")
  t.add_argument("--skip", default="", help="comma list of metric groups to skip: fid (rFID and IS), lpips")
  t.add_argument("--num_threads", type=int, default=4, help="grain threads decoding and resizing images")
  g = sub.add_parser("generator", help="FID / IS of class-conditional samples")
  g.add_argument("--tokenizer", help="tokenizer checkpoint (default: the config's experiment.vqgan_checkpoint; "
                 "BAR-FSQ: experiment.tokenizer_checkpoint)")
  g.add_argument("--generator", help="MaskBit or BAR generator checkpoint (default: experiment.generator_checkpoint)")
  g.add_argument("--num_images", type=int, default=50_000)
  g.add_argument("--ref_stats", help="ADM reference statistics .npz (mu, sigma); 'auto': ADM's batch for the "
                 "config's resolution (256 or 512), downloaded once")
  g.add_argument("--samples_npz", help="also write the samples as an ADM .npz")
  g.add_argument("--seed", type=int, default=0)
  g.add_argument("--num_steps", type=int, help="MaskBit only (default: the config's evaluation settings)")
  g.add_argument("--guidance_scale", type=float, help="default: the config's evaluation settings")
  for q in (t, g):
    q.add_argument("--random_init", action="store_true", help="untrained model weights (smoke test)")
    q.add_argument("--inception", help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth); 'auto' or "
                   "a released name (fid_inception): downloaded once")
    hub.add_download_flag(q)
    q.add_argument("--batch_size", type=int, default=32)
    q.add_argument("--num_images_max", type=int, default=None, help=argparse.SUPPRESS)
    q.add_argument("--precision", choices=("default", "highest"), default=None)
    q.add_argument("--out", help="result JSON file")
    distributed.add_distributed_args(q)
  args = p.parse_args(rest)
  if config is None:
    p.error("--config is required")
  if args.random_init and args.download:
    p.error("--random_init excludes --download")
  if args.what == "tokenizer":
    args.checkpoint = hub.cli_checkpoint(args.checkpoint, config, "tokenizer", args.download)
    if args.lpips == "auto" and args.vgg16 is None:  # the released heads need the torchvision trunk
      args.vgg16 = "auto"
  else:
    args.tokenizer = hub.cli_checkpoint(args.tokenizer, config, "tokenizer", args.download)
    args.generator = hub.cli_checkpoint(args.generator, config, "generator", args.download)
  from maskbit_jax.image_io import check_output_path

  # before loading anything: a bad flag fails in seconds, not after the evaluation (the device count is
  # checked later, by evaluate_*, once the devices are up)
  if args.batch_size < 1:
    p.error(f"--batch_size must be >= 1, got {args.batch_size}")
  if getattr(args, "num_threads", 1) < 1:
    p.error(f"--num_threads must be >= 1, got {args.num_threads}")
  try:
    if args.out:
      check_output_path(args.out, folder=False)
  except ValueError as e:
    p.error(f"--out: {e}")
  cfg = load_config(hub.config_of(config) or config, overrides)
  pre = (cfg.get("dataset", None) or {}).get("preprocessing", {})
  resolution = int(pre.get("resolution", pre.get("crop_size", 256)))  # BAR's configs call it crop_size
  # one process per host under a launcher (launch/local_multiprocess.sh, SLURM, Cloud TPU); nothing on one host
  plan = distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                                timeout_s=args.distributed_timeout_s)
  if plan.is_distributed:  # [pI/N] log lines; one process leaves the caller's logging alone
    distributed.setup_logging()

  if args.what == "tokenizer":
    from maskbit_jax.config import vq_model_config
    from maskbit_jax.data.sources import eval_interpolation, make_source
    from maskbit_jax.models.tokenizer import latent_stride_of
    from maskbit_jax.tokenizer import check_image_side, load_tokenizer

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"fid", "lpips"}:
      p.error(f"--skip {args.skip!r}: unknown metric group(s) {sorted(skip - {'fid', 'lpips'})}; "
              "choose from fid, lpips")
    size = args.size if args.size is not None else int(
        cfg.get("dataset", {}).get("preprocessing", {}).get("resolution", 256))
    check_image_side(size, latent_stride_of(vq_model_config(cfg)),
                     "dataset.preprocessing.resolution" if args.size is None else "--size")
    tok = load_tokenizer(cfg, args.checkpoint, random_init=args.random_init, precision=args.precision)
    # the reference's eval_transform: Resize(size, the config's interpolation) of the shorter side, CenterCrop
    source = make_source(args.data, size, interpolation=eval_interpolation(cfg))
    inception = None if "fid" in skip else load_inception(
        _require(hub.resolve_file(args.inception, "inception"), "--inception", "rFID and IS (or --skip fid)"),
        args.precision)
    lpips = None if "lpips" in skip else load_lpips(
        _require(hub.resolve_file(args.lpips, "lpips"), "--lpips", "LPIPS (or --skip lpips)"),
        hub.resolve_file(args.vgg16, "vgg16"))
    result = evaluate_tokenizer(tok, source, batch_size=args.batch_size, num_images=args.num_images_max,
                                inception=inception, lpips=lpips, num_threads=args.num_threads)
  else:
    gen, tok, settings, family = load_generator_pair(cfg, args)
    inception = load_inception(_require(hub.resolve_file(args.inception, "inception"), "--inception", "FID and IS"),
                           args.precision)
    ref_stats = hub.resolve_file(args.ref_stats, "ref_stats", resolution=resolution)
    ref = load_reference_stats(ref_stats, expected_dim=2048) if ref_stats else None
    result = evaluate_generator(gen, tok, num_images=args.num_images, batch_size=args.batch_size, seed=args.seed,
                                inception=inception, ref_stats=ref, samples_npz=args.samples_npz,
                                settings=settings)
    result.update(family=family, settings=settings, processes=jax.process_count())
  result["random_init"] = bool(args.random_init)
  _write_result(args.out, result)
  if jax.process_index() == 0:
    status = "final" if result["complete"] else "PARTIAL (interrupted; not final)"
    print(f"{args.what} evaluation, {status}:")
    print(json.dumps(result, indent=1))
  return 0 if result["complete"] else 1


if __name__ == "__main__":
  sys.exit(cli_errors.run(main))
