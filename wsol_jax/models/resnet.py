"""ResNet-50 (timm / torchvision v1.5 math: the stride sits in the 3×3 conv).

``logits, aux = model.apply(variables, images, train=False, capture=('features',))``
with ``variables = {'params': ..., 'batch_stats': ...}``; in training mode pass
``mutable=['batch_stats']`` to get the updated running statistics back.

Output stride (``output_stride``): 32 is timm/torchvision; 16 and 8 are the
wsolevaluation CAM variants, which set the FIRST block's stride of layer4
(16) or of layer3 and layer4 (8) to 1 — its 3×3 conv and its projection
shortcut — without any dilation (timm's ``output_stride`` option dilates and
is a different network).

``aux`` (static ``capture``): ``stem`` (after max-pool), ``layer1`` … ``layer3``,
``features`` (layer4 output, (B, h, w, 2048) NHWC) and ``pre_logits`` ((B, 2048)).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsol_jax.models import layers

CAPTURE_NAMES = ("stem", "layer1", "layer2", "layer3", "features", "pre_logits")
STAGE_STRIDES = {32: (1, 2, 2, 2), 16: (1, 2, 2, 1), 8: (1, 2, 1, 1)}


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 kernel_init=layers.kaiming_normal_fan_out, name=name)


class Bottleneck(nn.Module):
  """1×1 -> 3×3 (stride) -> 1×1 (×4 channels) with a projection shortcut when needed."""
  planes: int
  stride: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = nn.relu(layers.BatchNorm(name="bn1")(_conv(self.planes, 1, 1, "conv1", self.dtype)(x), train))
    out = nn.relu(layers.BatchNorm(name="bn2")(
        _conv(self.planes, 3, self.stride, "conv2", self.dtype)(out), train))
    out = layers.BatchNorm(zero_init=True, name="bn3")(
        _conv(self.planes * 4, 1, 1, "conv3", self.dtype)(out), train)
    shortcut = x
    if self.downsample:
      shortcut = layers.BatchNorm(name="downsample_bn")(
          _conv(self.planes * 4, 1, self.stride, "downsample_conv", self.dtype)(x), train)
    return nn.relu(out + shortcut)


class ResNet(nn.Module):
  """ResNet with Bottleneck blocks; ``layers=(3, 4, 6, 3)`` is ResNet-50.

  Attributes:
    head: ``'fc'`` (global average pool + Linear, timm ``fc``) or ``'none'``
      (logits = pooled features).
    width: stem width and planes of the first stage (64 in ResNet-50; smaller values
      give the narrow from-scratch models of the CPU demos).
  """
  layers: Sequence[int] = (3, 4, 6, 3)
  num_classes: int = 1000
  output_stride: int = 32
  head: str = "fc"
  in_chans: int = 3
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False,
               capture: Sequence[str] = ()) -> tuple[jax.Array, dict[str, jax.Array]]:
    capture = tuple(capture)
    if images.ndim != 4 or images.shape[-1] != self.in_chans:
      hint = " (they look NCHW; wsol_jax expects NHWC)" if images.ndim == 4 and images.shape[1] == 3 else ""
      raise ValueError(f"images must be NHWC with {self.in_chans} channels, got shape "
                       f"{tuple(images.shape)}{hint}")
    if images.shape[1] < 32 or images.shape[2] < 32:
      raise ValueError(f"image size {images.shape[1]}x{images.shape[2]} is too small for a ResNet")
    unknown = sorted(set(capture) - set(CAPTURE_NAMES))
    if unknown:
      raise ValueError(f"unknown capture names {unknown}; valid: {list(CAPTURE_NAMES)}")
    if self.output_stride not in STAGE_STRIDES:
      raise ValueError(f"output_stride must be one of {sorted(STAGE_STRIDES)}, got {self.output_stride}")
    if self.head not in ("fc", "none"):
      raise ValueError(f"unknown ResNet head {self.head!r}; valid: ['fc', 'none']")

    aux: dict[str, jax.Array] = {}
    x = _conv(self.width, 7, 2, "conv1", self.dtype)(images.astype(self.dtype))
    x = nn.relu(layers.BatchNorm(name="bn1")(x, train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    if "stem" in capture:
      aux["stem"] = x
    in_ch = self.width
    for stage, (blocks, stride) in enumerate(zip(self.layers, STAGE_STRIDES[self.output_stride])):
      planes = self.width * 2 ** stage
      for j in range(blocks):
        s = stride if j == 0 else 1
        x = Bottleneck(planes, s, downsample=(j == 0 and (s != 1 or in_ch != planes * 4)),
                       dtype=self.dtype, name=f"layer{stage + 1}_{j}")(x, train)
        in_ch = planes * 4
      if stage < 3 and f"layer{stage + 1}" in capture:
        aux[f"layer{stage + 1}"] = x
    if "features" in capture:
      aux["features"] = x
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if "pre_logits" in capture:
      aux["pre_logits"] = pooled
    if self.head == "none":
      return pooled, aux
    fc = nn.Dense(self.num_classes, dtype=self.dtype, name="fc",
                  kernel_init=layers.torch_uniform_init(in_ch),
                  bias_init=layers.torch_uniform_init(in_ch))
    return fc(pooled.astype(self.dtype)).astype(jnp.float32), aux
