"""The released weights, by name: where each file lives, what it pairs with, its checksum where known.

Data only; ``maskbit_jax.hub`` resolves and downloads. Each entry:

* ``kind``: ``tokenizer`` / ``generator`` (MaskBit), ``bar_tokenizer`` / ``bar_generator`` (BAR), or an
  evaluation network: ``inception``, ``lpips``, ``vgg16``, ``resnet50``, ``ref_stats``;
* ``repo_id`` + ``filename`` (+ ``revision``): a Hugging Face hub file, spelled as the reference READMEs and
  demo code spell it; or ``url``: a plain HTTPS download;
* ``config``: the packaged config (``configs/*.py``) the weights load with;
* ``tokenizer``: for a generator, the entry its tokens decode with (the pairing of the reference READMEs);
* ``size`` (bytes) and ``sha256``: None where nobody publishes them. Hub files are checked against the hub's
  own sha256 (the ETag of an LFS file) in any case; ``sha256_prefix`` is the short hash torchvision puts in
  its file names (and checks on download).

Sources: github markweberdev/maskbit at 5ea3d73 (README model zoo, demo_utils, metrics/inception.py),
github amazon-far/BAR (README: ``hf download FAR-Amazon/BAR-collections``, the sampling commands' file
names), torchvision's weight tables, OpenAI's guided-diffusion evaluation README (reference batches).
"""

from __future__ import annotations

MASKBIT_COMMIT = "5ea3d733c62625eaf86dab8364bdb7e6e71def99"
BAR_REPO = "FAR-Amazon/BAR-collections"
ADM_REF = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet"


def _maskbit(name: str, kind: str, config: str | None = None, repo: str | None = None, **extra) -> dict:
  """A MaskBit release: hub repo ``markweber/<repo>`` holding ``<repo>.bin``."""
  repo = repo or name
  return dict(kind=kind, repo_id=f"markweber/{repo}", filename=f"{repo}.bin", config=config or name, **extra)


def _bar(name: str, kind: str, filename: str, config: str, **extra) -> dict:
  return dict(kind=kind, repo_id=BAR_REPO, filename=filename, config=config, **extra)


RELEASED: dict[str, dict] = {
    # ---- MaskBit tokenizers (README "Tokenizer" table)
    **{f"maskbit_tokenizer_{b}bit": _maskbit(f"maskbit_tokenizer_{b}bit", "tokenizer") for b in (10, 12, 14, 16, 18)},
    "vqgan_plus_12bit": _maskbit("vqgan_plus_12bit", "tokenizer"),
    # the paper's 10-bit VQGAN+ (the README's newer 10-bit VQGAN+ is marked TODO, not released)
    "vqgan_plus_10bit": _maskbit("vqgan_plus_10bit", "tokenizer", repo="vqgan_plus_paper",
                                 note="file name inferred (<repo>.bin as the other releases); the README links "
                                      "the hub repository only"),
    "maskgit_tokenizer": _maskbit("maskgit_tokenizer", "tokenizer"),
    "taming_vqgan_tokenizer": dict(kind="tokenizer", repo_id="markweber/taming_vqgan", filename="taming_vqgan.ckpt",
                                   config="taming_vqgan_tokenizer",
                                   note="file name as the reference config's checkpoint path (taming_vqgan.ckpt)"),
    # ---- MaskBit generators (README "Generator" table); 128 and 256 steps sample the 14-bit file
    **{f"maskbit_generator_{b}bit": _maskbit(f"maskbit_generator_{b}bit", "generator",
                                             tokenizer=f"maskbit_tokenizer_{b}bit") for b in (10, 12, 14, 16, 18)},
    **{f"maskbit_generator_14bit_{s}steps": _maskbit(f"maskbit_generator_14bit_{s}steps", "generator",
                                                     repo="maskbit_generator_14bit",
                                                     tokenizer="maskbit_tokenizer_14bit") for s in (128, 256)},
    # ---- BAR (FAR-Amazon/BAR-collections, laid out as the README's assets/ folder)
    "bar_b_patch4": _bar("bar_b_patch4", "bar_generator", "generator/bar_b_patch4.bin", "bar_b_patch4",
                         tokenizer="bar_fsq_16bits"),
    "bar_b_patch2": _bar("bar_b_patch2", "bar_generator", "generator/bar_b_patch2.bin", "bar_b_patch2",
                         tokenizer="bar_fsq_16bits"),
    "bar_b": _bar("bar_b", "bar_generator", "generator/bar_b.bin", "bar_b", tokenizer="bar_fsq_16bits_ft"),
    "bar_l": _bar("bar_l", "bar_generator", "generator/bar_l.bin", "bar_l", tokenizer="bar_fsq_16bits_ft"),
    "bar_l_res512": _bar("bar_l_res512", "bar_generator", "generator/bar_l_res512.bin", "bar_l_res512",
                         tokenizer="bar_fsq_10bits_res512"),
    "bar_fsq_16bits": _bar("bar_fsq_16bits", "bar_tokenizer", "tokenizer/bar_fsq_16bits.bin", "bar_fsq_16bits"),
    "bar_fsq_16bits_ft": _bar("bar_fsq_16bits_ft", "bar_tokenizer", "tokenizer/bar_fsq_16bits_ft.bin",
                              "bar_fsq_16bits", note="decoder fine-tuned; BAR-B and BAR-L decode with it"),
    # the release spells this file "sfq"
    "bar_fsq_10bits_res512": _bar("bar_fsq_10bits_res512", "bar_tokenizer", "tokenizer/bar_sfq_10bits_res512.bin",
                                  "bar_fsq_10bits_res512"),
    # ---- evaluation networks
    "fid_inception": dict(
        kind="inception",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
        note="pytorch-fid's release, what MaskBit's metrics/inception.py loads"),
    "lpips_vgg": dict(
        kind="lpips",
        url=f"https://raw.githubusercontent.com/markweberdev/maskbit/{MASKBIT_COMMIT}/pretrained/vgg_lpips.pth",
        size=7289, sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        note="the LPIPS linear heads of the MaskBit repository (checksum of the file at that commit)"),
    "vgg16": dict(kind="vgg16", url="https://download.pytorch.org/models/vgg16-397923af.pth",
                  sha256_prefix="397923af", note="torchvision VGG16 IMAGENET1K_V1 (the trunk under the LPIPS heads)"),
    "resnet50": dict(kind="resnet50", url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
                     sha256_prefix="0676ba61", note="torchvision ResNet50 IMAGENET1K_V1 (perceptual loss)"),
    "adm_imagenet256": dict(kind="ref_stats", url=f"{ADM_REF}/256/VIRTUAL_imagenet256_labeled.npz",
                            note="ADM reference batch with mu / sigma (256 px)"),
    "adm_imagenet512": dict(kind="ref_stats", url=f"{ADM_REF}/512/VIRTUAL_imagenet512.npz",
                            note="ADM reference batch with mu / sigma (512 px)"),
}

# ``--inception auto`` and friends: the entry of each evaluation kind (ref_stats: by image side)
DEFAULTS = {"inception": "fid_inception", "lpips": "lpips_vgg", "vgg16": "vgg16", "resnet50": "resnet50",
            "ref_stats": {256: "adm_imagenet256", 512: "adm_imagenet512"}}
