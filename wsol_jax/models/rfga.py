"""RFGA's network (Sohn et al., arXiv 2104.04952): residual fine-grained attention after ResNet-50 layer4.

Module (``RfgaModule``, NHWC; X (B, H, W, C) = the layer4 output)::

    z_c = mean_hw X (B, C)      z_h = mean_w X (B, H, C)      z_w = mean_h X (B, W, C)
    a_c = σ(BN_c(conv_c(z_c)))   conv_c: 1-D along C, 1 → 1 channel, k taps (ECA)
    a_h = σ(BN_h(conv_h(z_h)))   conv_h: 1-D along H ('full' C → C | 'shared' | 'depthwise')
    a_w = σ(BN_w(conv_w(z_w)))
    S[b,i,j,c] = a_w[b,j,c] + a_h[b,i,c] + a_c[b,c]              (outer sum)
    M = σ(S) (paper, Eq. 7) or S (MoANA code, M ∈ (0, 3))
    out = X ⊙ (1 + M) ('residual' = X + X⊙M) | X ⊙ M | X ⊙ (0.35 + 0.65·M)

All 1-D convs: zero padding (k − 1)/2, no bias, PyTorch's default init U(±1/√fan_in).
BatchNorm is PyTorch's (``layers.BatchNorm``): the channel view normalises over the batch
only, the h/w views over B·H (B·W) values. The two readings (``config.rfga``,
``wsol_jax.methods.rfga``):

* paper (default): second sigmoid; the h/w conv structure (not stated) defaults to the
  code's 'full' C → C conv;
* ``moana`` preset (ku-milab/MoANA ``moana_module.py``): ``second_sigmoid=False``.

Network (``RfgaResNet``): ResNet-50 (timm names; output stride 8 = MoANA's layer3/layer4
stride 1, no dilation) → module → 1×1-conv class-map head with bias (kaiming-normal
fan-out) → logits = GAP of the class maps. CAM = the class map of the target (raw, bias
included; min-max removes it): ``wsol_jax.maps.cam``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsol_jax.models import heads, layers
from wsol_jax.models.resnet import CAPTURE_NAMES as RESNET_CAPTURES
from wsol_jax.models.resnet import ResNet

CALIBRATIONS = ("residual", "multiplicative", "affine_0.35_0.65")
HW_CONVS = ("full", "shared", "depthwise")
CAPTURE_NAMES = tuple(c for c in RESNET_CAPTURES if c != "pre_logits") + (
    "calibrated", "attention", "class_maps")


def validate(second_sigmoid: bool, calibration: str, hw_conv: str, kernel_size: int) -> None:
  """Raises ``ValueError`` for module options outside the supported readings."""
  del second_sigmoid
  if calibration not in CALIBRATIONS:
    raise ValueError(f"rfga.calibration must be one of {CALIBRATIONS}, got {calibration!r}")
  if hw_conv not in HW_CONVS:
    raise ValueError(f"rfga.hw_conv must be one of {HW_CONVS}, got {hw_conv!r}")
  if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
    raise ValueError(f"rfga.kernel_size must be odd and positive, got {kernel_size}")


def _conv1d(features: int, kernel_size: int, fan_in: int, name: str, groups: int = 1) -> nn.Conv:
  pad = (kernel_size - 1) // 2
  return nn.Conv(features, (kernel_size,), padding=((pad, pad),), use_bias=False,
                 feature_group_count=groups, kernel_init=layers.torch_uniform_init(fan_in),
                 name=name)


def _along_channels(conv: nn.Conv, z: jax.Array) -> jax.Array:
  """A 1 → 1 conv along the last axis: (..., C) -> (..., C)."""
  return conv(z.reshape(-1, z.shape[-1], 1)).reshape(z.shape)


class RfgaModule(nn.Module):
  """Triple-view attention + expansion + calibration: (B, H, W, C) -> (B, H, W, C).

  Parameters ``conv_c`` (k, 1, 1), ``conv_h``/``conv_w`` ((k, C, C) 'full', (k, 1, C)
  'depthwise', (k, 1, 1) 'shared'), ``bn_c``/``bn_h``/``bn_w`` (MoANA ``bn1``/``bn2``/``bn3``).
  The views are computed in float32; the calibration in the input's dtype.
  """
  second_sigmoid: bool = True
  calibration: str = "residual"
  hw_conv: str = "full"
  kernel_size: int = 3

  def _hw(self, z: jax.Array, name: str) -> jax.Array:
    """conv_h / conv_w along the sequence axis of (B, L, C)."""
    k, c = self.kernel_size, z.shape[-1]
    if self.hw_conv == "full":
      return _conv1d(c, k, k * c, name)(z)
    if self.hw_conv == "depthwise":
      return _conv1d(c, k, k, name, groups=c)(z)
    if self.hw_conv == "shared":  # the same 1 → 1 conv for every channel
      zt = jnp.swapaxes(z, 1, 2)  # (B, C, L)
      return jnp.swapaxes(_conv1d(1, k, k, name)(zt.reshape(-1, zt.shape[-1], 1))
                          .reshape(zt.shape), 1, 2)
    raise ValueError(f"rfga.hw_conv must be one of {HW_CONVS}, got {self.hw_conv!r}")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_views: bool = False
               ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """Calibrated features; with ``return_views`` also ``{'a_c' (B, C), 'a_h' (B, H, C),
    'a_w' (B, W, C), 'M' (B, H, W, C)}``."""
    validate(self.second_sigmoid, self.calibration, self.hw_conv, self.kernel_size)
    xf = x.astype(jnp.float32)
    z_c = jnp.mean(xf, axis=(1, 2))
    z_h = jnp.mean(xf, axis=2)
    z_w = jnp.mean(xf, axis=1)
    conv_c = _conv1d(1, self.kernel_size, self.kernel_size, "conv_c")
    a_c = nn.sigmoid(layers.BatchNorm(name="bn_c")(_along_channels(conv_c, z_c), train))
    a_h = nn.sigmoid(layers.BatchNorm(name="bn_h")(self._hw(z_h, "conv_h"), train))
    a_w = nn.sigmoid(layers.BatchNorm(name="bn_w")(self._hw(z_w, "conv_w"), train))
    s = a_w[:, None, :, :] + a_h[:, :, None, :] + a_c[:, None, None, :]  # MoANA's order
    m = nn.sigmoid(s) if self.second_sigmoid else s
    out = calibrate(x, m.astype(x.dtype), self.calibration)
    if return_views:
      return out, {"a_c": a_c, "a_h": a_h, "a_w": a_w, "M": m}
    return out


def calibrate(x: jax.Array, m: jax.Array, calibration: str) -> jax.Array:
  """Feature calibration (Eq. 8): X⊙(1 + M), X⊙M or X⊙(0.35 + 0.65·M)."""
  if calibration == "residual":
    return x * (1 + m)  # = X + X⊙M, computed like MoANA's x * (1 + attmap)
  if calibration == "multiplicative":
    return x * m
  if calibration == "affine_0.35_0.65":
    return x * (0.35 + 0.65 * m)
  raise ValueError(f"rfga.calibration must be one of {CALIBRATIONS}, got {calibration!r}")


class RfgaResNet(nn.Module):
  """ResNet (timm names, shared scope) → ``RfgaModule`` (``rfga``) → 1×1-conv head (``head``).

  ``logits, aux = model.apply(variables, images, train=False, capture=...)``; logits =
  GAP of the class maps (B, K). ``capture`` (static) accepts the ResNet's names
  (``features`` = layer4 before the module) and ``calibrated`` (module output
  (B, h, w, 2048)), ``attention`` (the module's views dict), ``class_maps`` (B, h, w, K).
  """
  layers: Sequence[int] = (3, 4, 6, 3)
  num_classes: int = 1000
  output_stride: int = 8
  in_chans: int = 3
  width: int = 64
  dtype: Any = jnp.float32
  second_sigmoid: bool = True
  calibration: str = "residual"
  hw_conv: str = "full"
  kernel_size: int = 3

  def setup(self):
    self.backbone = ResNet(layers=tuple(self.layers), num_classes=self.num_classes,
                           output_stride=self.output_stride, head="none", in_chans=self.in_chans,
                           width=self.width, dtype=self.dtype)
    nn.share_scope(self, self.backbone)  # backbone variables at the top level (timm names)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False, capture: Sequence[str] = ()
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    capture = tuple(capture)
    unknown = sorted(set(capture) - set(CAPTURE_NAMES))
    if unknown:
      raise ValueError(f"unknown capture names {unknown}; valid: {list(CAPTURE_NAMES)}")
    backbone_capture = tuple(c for c in capture if c in RESNET_CAPTURES)
    _, aux = self.backbone(images, train=train, capture=backbone_capture + ("features",))
    features = aux["features"] if "features" in capture else aux.pop("features")
    x, views = RfgaModule(self.second_sigmoid, self.calibration, self.hw_conv, self.kernel_size,
                          name="rfga")(features, train, return_views=True)
    maps = heads.class_map_head(x, self.num_classes, self.dtype, name="head")
    if "calibrated" in capture:
      aux["calibrated"] = x
    if "attention" in capture:
      aux["attention"] = views
    if "class_maps" in capture:
      aux["class_maps"] = maps
    return heads.spatial_mean(maps), aux


# ---- MoANA checkpoints ------------------------------------------------------------------------

_TORCH_BN = {"bn1": "bn_c", "bn2": "bn_h", "bn3": "bn_w"}


def module_variables_from_torch(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Variables of ``RfgaModule`` ('full' h/w convs) from a MoANA ``moana`` state dict.

  ``conv_{c,h,w}.weight`` (out, in, k) -> ``conv_*/kernel`` (k, in, out);
  ``bn{1,2,3}.{weight,bias,running_mean,running_var}`` -> ``bn_{c,h,w}`` scale/bias/mean/var.
  ``prefix`` selects the module inside a larger state dict (e.g. ``'layer4.3.'``).
  """
  def get(key):
    return np.asarray(state[prefix + key], np.float32)
  params, stats = {}, {}
  for view in "chw":
    params[f"conv_{view}"] = {"kernel": get(f"conv_{view}.weight").transpose(2, 1, 0)}
  for torch_name, name in _TORCH_BN.items():
    params[name] = {"scale": get(f"{torch_name}.weight"), "bias": get(f"{torch_name}.bias")}
    stats[name] = {"mean": get(f"{torch_name}.running_mean"),
                   "var": get(f"{torch_name}.running_var")}
  return {"params": params, "batch_stats": stats}
