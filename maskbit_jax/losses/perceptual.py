"""The tokenizer's ResNet50 perceptual loss (reference ``modeling/modules/perceptual_loss.py``) and weight loading.

Reference ``PerceptualLoss(model_name="resnet50")`` in eval mode, for inputs
``x`` and targets ``y`` (RGB in [0, 1], not clamped; the tokenizer loss feeds
``(inputs, reconstructions)``):

1. both are resized to 224 x 224 with ``F.interpolate(mode="bilinear",
   antialias=True, align_corners=False)`` (``torch_resize``'s ``bilinear_aa``;
   it also up-samples smaller images, e.g. 64 -> 224, where the filter is plain
   bilinear);
2. normalised with the ImageNet mean (0.485, 0.456, 0.406) and std
   (0.229, 0.224, 0.225);
3. passed through ResNet50 (BatchNorm in inference mode);
4. ``perceptual_loss_on_logits: True`` (every released config): MSE between
   the two batches' raw logits (no softmax), mean over all ``B * 1000``
   entries. ``False``: MSE between the ``layer4`` maps (mean over all
   ``B * 2048 * 7 * 7`` entries, before pooling) PLUS the logits MSE above.

``load_resnet50_params`` / ``load_lpips_params`` read PyTorch-layout files
(``.pth``/``.bin``/``.safetensors``/``.npz``, no torch needed) and convert
them strictly; they never download anything.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from maskbit_jax import paths, torch_resize
from maskbit_jax.convert.checkpoint_files import read_state_dict
from maskbit_jax.convert.lpips_mapping import lpips_param_mapping
from maskbit_jax.convert.param_mapping import CheckpointMismatchError, torch_state_to_flax
from maskbit_jax.convert.resnet50_mapping import resnet50_param_mapping
from maskbit_jax.models import resnet50 as resnet50_lib
from maskbit_jax.models import vgg_lpips

IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)
PERCEPTUAL_IMAGE_SIZE = 224

RESNET50_FILE_HINT = (
    "torchvision's ResNet50 ImageNet weights (IMAGENET1K_V1, 'resnet50-0676ba61.pth', the file "
    "torchvision.models.resnet50(weights='IMAGENET1K_V1') caches under ~/.cache/torch/hub/checkpoints/)")
VGG16_FILE_HINT = (
    "torchvision's VGG16 ImageNet weights (IMAGENET1K_V1, 'vgg16-397923af.pth', the file "
    "torchvision.models.vgg16(weights='IMAGENET1K_V1') caches under ~/.cache/torch/hub/checkpoints/)")
LPIPS_HEADS_FILE_HINT = (
    "the LPIPS linear heads 'vgg_lpips.pth' (shipped in the MaskBit repository as pretrained/vgg_lpips.pth)")


# --------------------------------------------------------------------------- ResNet50 perceptual loss


def resnet50_preprocess(images_bhwc: jax.Array, size: int = PERCEPTUAL_IMAGE_SIZE) -> jax.Array:
  """[0, 1] images -> the ResNet50 input of the reference loss: antialiased resize, ImageNet normalisation."""
  x = torch_resize.resize(images_bhwc, size, "bilinear_aa")
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def resnet50_perceptual_outputs(variables, images_bhwc: jax.Array, *,
                                model: resnet50_lib.ResNet50 | None = None) -> dict[str, jax.Array]:
  """ResNet50 outputs (``logits``, ``pooled``, ``layer4``) of [0, 1] images after the loss's preprocessing."""
  model = model or resnet50_lib.ResNet50()
  return model.apply(variables, resnet50_preprocess(images_bhwc))


def perceptual_loss_from_outputs(outputs_inputs: Mapping[str, jax.Array], outputs_targets: Mapping[str, jax.Array],
                                 *, on_logits: bool = True) -> jax.Array:
  """The reference reduction: MSE of the logits, plus the MSE of the ``layer4`` maps if not ``on_logits``."""
  mse = lambda a, b: jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))
  loss = mse(outputs_inputs["logits"], outputs_targets["logits"])
  if not on_logits:
    loss = mse(outputs_inputs["layer4"], outputs_targets["layer4"]) + loss
  return loss


def resnet50_perceptual_loss(variables, inputs_bhwc: jax.Array, targets_bhwc: jax.Array, *,
                             on_logits: bool = True,
                             model: resnet50_lib.ResNet50 | None = None) -> jax.Array:
  """The reference ``PerceptualLoss("resnet50", compute_perceptual_loss_on_logits=on_logits)`` (eval mode).

  Args:
    variables: ResNet50 ``{"params", "batch_stats"}`` (e.g. ``load_resnet50_params``).
    inputs_bhwc, targets_bhwc: ``[B, H, W, 3]`` RGB in [0, 1] (not clamped), any size.
    on_logits: the config flag ``perceptual_loss_on_logits``.
    model: a configured ``ResNet50`` (dtype / precision); default float32.
  Returns:
    Scalar float32 loss (see the module docstring).
  """
  batch = inputs_bhwc.shape[0]
  # One network pass over both batches; inference-mode BatchNorm makes this identical to two passes.
  outputs = resnet50_perceptual_outputs(variables, jnp.concatenate([inputs_bhwc, targets_bhwc], axis=0), model=model)
  first = {k: v[:batch] for k, v in outputs.items()}
  second = {k: v[batch:] for k, v in outputs.items()}
  return perceptual_loss_from_outputs(first, second, on_logits=on_logits)


# --------------------------------------------------------------------------- weight loading


def _require_file(path, what: str) -> str:
  path = os.fspath(path)
  if not paths.isfile(path):
    raise FileNotFoundError(
        f"{path} not found: put {what} there (any of .pth/.bin/.safetensors/.npz in PyTorch names and "
        f"layouts), or pass the path of your copy. maskbit_jax never downloads weights.")
  return path


def load_resnet50_params(path, *, model: resnet50_lib.ResNet50 | None = None) -> dict:
  """Reads a torchvision ResNet50 state dict and converts it strictly.

  Returns ``{"params", "batch_stats"}`` for ``ResNet50.apply``. Every tensor
  must map onto the model with the right shape (``fc.*`` included). The
  ``num_batches_tracked`` counters are the one leniency: their values are not
  read by an inference-mode BatchNorm, so they are accepted whatever they hold,
  and supplied as 0 when the file lacks them (older torchvision files), as
  ``torch.nn.BatchNorm2d`` itself does when loading such files.
  Raises:
    FileNotFoundError naming the missing file and what to put there;
    CheckpointMismatchError listing every missing/unexpected/mis-shaped key.
  """
  path = _require_file(path, RESNET50_FILE_HINT)
  state = OrderedDict(read_state_dict(path))
  mapping = resnet50_param_mapping()
  for key in mapping.buffers:
    bn = key[: -len(".num_batches_tracked")]
    if key in state or f"{bn}.running_mean" in state:
      state[key] = np.zeros((), np.int64)
  abstract = resnet50_lib.abstract_resnet50_variables(model)
  return jax.tree.map(jnp.asarray, torch_state_to_flax(state, abstract, mapping, source=path))


def _lpips_state_from_reference_module(state: Mapping[str, np.ndarray], source: str) -> "OrderedDict[str, np.ndarray]":
  """Accepts the reference ``LPIPS`` module's own names: ``net.slice<s>.<i>.*`` -> ``features.<i>.*``.

  Its scaling-layer buffers must hold the reference constants and are dropped
  (the flax module has them built in).
  """
  out = OrderedDict()
  constants = {"scaling_layer.shift": vgg_lpips.LPIPS_SHIFT, "scaling_layer.scale": vgg_lpips.LPIPS_SCALE}
  for key, value in state.items():
    if key in constants:
      if not np.allclose(np.asarray(value).reshape(-1), constants[key], rtol=0, atol=1e-7):
        raise CheckpointMismatchError(f"{source}: {key} = {np.asarray(value).reshape(-1)} differs from the LPIPS "
                                      f"constant {constants[key]}")
      continue
    if key.startswith("net.slice"):
      rest = key.split(".", 2)[2]  # '<i>.weight'
      key = f"features.{rest}"
    out[key] = value
  return out


def load_lpips_params(path, trunk_path=None, *, model: vgg_lpips.LPIPS | None = None) -> dict:
  """Reads the LPIPS weights (VGG16 trunk + linear heads) and converts them strictly.

  Args:
    path: a file with the linear heads ``lin<k>.model.1.weight`` (the
      reference's ``pretrained/vgg_lpips.pth``), optionally together with the
      trunk ``features.<i>.*`` (a combined file, or the reference ``LPIPS``
      module's state dict with its ``net.slice<s>.<i>.*`` names).
    trunk_path: the torchvision VGG16 file, when ``path`` holds the heads only
      (the reference takes the trunk from torchvision). Only its
      ``features.*`` tensors are used: LPIPS never runs the classifier, so its
      ``classifier.*`` tensors are ignored; any other key is an error.
  Returns:
    ``{"params": ...}`` for ``LPIPS.apply``.
  Raises:
    FileNotFoundError naming the missing file and what to put there;
    CheckpointMismatchError listing every missing/unexpected/mis-shaped key.
  """
  path = _require_file(path, LPIPS_HEADS_FILE_HINT)
  state = _lpips_state_from_reference_module(read_state_dict(path), path)
  source = path
  if trunk_path is not None:
    trunk_path = _require_file(trunk_path, VGG16_FILE_HINT)
    trunk = read_state_dict(trunk_path)
    stray = [k for k in trunk if not k.startswith(("features.", "classifier."))]
    if stray:
      raise CheckpointMismatchError(f"{trunk_path} is not a torchvision VGG16 state dict: unexpected keys {stray}")
    clash = [k for k in trunk if k.startswith("features.") and k in state]
    if clash:
      raise CheckpointMismatchError(f"both {path} and {trunk_path} hold trunk tensors: {clash}")
    state.update((k, v) for k, v in trunk.items() if k.startswith("features."))
    source = f"{path} + {trunk_path}"
  elif not any(k.startswith("features.") for k in state):
    raise CheckpointMismatchError(
        f"{path} holds no VGG16 trunk (features.*): pass trunk_path=<{VGG16_FILE_HINT}>")
  abstract = vgg_lpips.abstract_lpips_variables(model)
  params = torch_state_to_flax(state, abstract["params"], lpips_param_mapping(), source=source)
  return {"params": jax.tree.map(jnp.asarray, params)}
