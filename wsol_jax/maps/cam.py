"""Class activation maps (CAM) of CNNs.

* ``cam``: the wsolevaluation baseline (``wsol/resnet.py ResNetCam(return_cam=True)``) —
  for the target class t, ``mean_k fc.weight[t, k] · features[k]`` over the K feature
  channels of the last stage (no bias, no ReLU, no normalisation).
  For an ``RfgaResNet`` (1×1-conv class-map head) the CAM is the target's class map.
* ``class_maps``: every class at once for a 1×1-conv class-map head (ACoL/RFGA-style),
  ``Σ_k W[k, c] · features[k] + b[c]``, i.e. the head's output before the spatial mean.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsol_jax.maps.targets import resolve_targets
from wsol_jax.models.rfga import RfgaResNet

_HIGHEST = jax.lax.Precision.HIGHEST


def cam_from_features(features: jax.Array, fc_kernel: jax.Array, targets: jax.Array) -> jax.Array:
  """wsolevaluation CAM: (B, h, w, K) features, (K, C) fc kernel, (B,) targets -> (B, h, w)."""
  weights = jnp.take(fc_kernel, targets, axis=1).T  # (B, K) = fc.weight[targets]
  return jnp.einsum("bhwk,bk->bhw", features, weights, precision=_HIGHEST) / features.shape[-1]


def class_maps(features: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """1×1-conv class maps for every class: (B, h, w, K), kernel (K, C) or (1, 1, K, C) -> (B, C, h, w)."""
  kernel = kernel.reshape(kernel.shape[-2], kernel.shape[-1])
  maps = jnp.einsum("bhwk,kc->bchw", features, kernel, precision=_HIGHEST)
  return maps if bias is None else maps + bias[None, :, None, None]


def cam(model: nn.Module, variables: Any, images: jax.Array,
        targets: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """CAM of a ResNet with an ``fc`` head (wsolevaluation ``ResNetCam``) or of an ``RfgaResNet``.

  Args:
    model: a ``ResNet`` (``head='fc'``; output stride 32, 16 or 8) or an ``RfgaResNet``.
    variables: ``{'params': ..., 'batch_stats': ...}``.
    images: (B, H, W, 3) normalised NHWC images.
    targets: (B,) int classes; None = argmax.

  Returns:
    (maps (B, h, w) raw, logits (B, C)); h, w = H/stride, W/stride.
  """
  if isinstance(model, RfgaResNet):
    return class_map_cam(model, variables, images, targets)
  if getattr(model, "head", None) != "fc":
    raise ValueError("cam needs a ResNet with an 'fc' head (got "
                     f"{type(model).__name__} head={getattr(model, 'head', None)!r})")
  logits, aux = model.apply(variables, images, capture=("features",))
  targets = resolve_targets(logits, targets)
  kernel = variables["params"]["fc"]["kernel"]
  return cam_from_features(aux["features"].astype(jnp.float32), kernel, targets), logits


def class_map_cam(model: nn.Module, variables: Any, images: jax.Array,
                  targets: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """RFGA's CAM: the class map of ``targets`` (None: predicted), (B, h, w) raw (bias included;
  min-max removes it), and the logits."""
  logits, aux = model.apply(variables, images, capture=("class_maps",))
  targets = resolve_targets(logits, targets)
  class_maps_ = aux["class_maps"].astype(jnp.float32)  # (B, h, w, K)
  return jnp.take_along_axis(class_maps_, targets[:, None, None, None], axis=-1)[..., 0], logits
