"""SAT (Wu et al., ICCV'23; wpy1999/SAT): a spatial-aware token for WSOL on DeiT.

The network is ``wsol_jax.models.sat.SatVisionTransformer`` (a spatial token, spatial-aware
attention in the last blocks; its math is documented there). Training loss, as the
official ``train.py``/``train_ImageNet.py``::

    M = mean of the spatial-aware blocks' masks         (B, h, w)
    L = CE(GAP(conv head)) + w_ba · |mean_b mean(M_b) − area_thr|      batch area loss
                           + w_norm · mean_b mean(G∗M ⊙ (1 − G∗M))     normalization loss

with G the official 3×3 Gaussian kernel (``get_kernel(3, 6)``, zero padding). Maps (eval):
M itself, class-agnostic (the same map whatever the target), resized bilinearly
(``cv2.resize``'s default in the official ``normalize_map``).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsol_jax import maps as maps_lib
from wsol_jax.methods import base
from wsol_jax.models import sat as sat_model

NO_DECAY_NAMES = ("loc_token", "loc_embed")  # official ``no_weight_decay`` adds these


@dataclasses.dataclass(frozen=True)
class SatConfig:
  """SAT settings (``config.sat``); the defaults are the official CUB ``train.py``'s.

  Attributes:
    area_thr: target of the batch area loss (CUB 0.25, ILSVRC 0.35).
    ba_weight, norm_weight: weights of the batch area and normalization losses (the
      official code adds both with weight 1).
    layers: number of final spatial-aware blocks, whose masks are averaged into the map
      (official 3: ``cur_depth >= 9`` and ``mask_all[-3:]`` with depth 12).
    kernel_size, kernel_nsig: the normalization loss's Gaussian smoothing (``get_kernel``).
  """
  area_thr: float = 0.25
  ba_weight: float = 1.0
  norm_weight: float = 1.0
  layers: int = 3
  kernel_size: int = 3
  kernel_nsig: float = 6.0

  def __post_init__(self):
    if not 0.0 <= self.area_thr <= 1.0:
      raise ValueError(f"sat.area_thr must be in [0, 1], got {self.area_thr}")
    if self.layers < 1:
      raise ValueError(f"sat.layers must be >= 1, got {self.layers}")
    if self.kernel_size < 1 or self.kernel_size % 2 == 0:
      raise ValueError(f"sat.kernel_size must be a positive odd number, got {self.kernel_size}")


def sat_losses(sat_map: jax.Array, cfg: SatConfig) -> dict[str, jax.Array]:
  """The official spatial losses of the maps (B, h, w): ``{'ba', 'norm'}`` per image (B,)
  and the batch terms ``loss_ba`` = |mean(ba) − area_thr|, ``loss_norm`` = mean(norm)."""
  m = sat_map.astype(jnp.float32)
  ba = jnp.mean(m, axis=(1, 2))
  smoothed = sat_model.smooth(m, sat_model.gaussian_kernel(cfg.kernel_size, cfg.kernel_nsig))
  norm = jnp.mean((1.0 - smoothed) * smoothed, axis=(1, 2))
  return {"ba": ba, "norm": norm, "loss_ba": jnp.abs(jnp.mean(ba) - cfg.area_thr),
          "loss_norm": jnp.mean(norm)}


class Sat(base.Method):
  """SAT: ``params`` = the DeiT's (conv3x3 head) + ``loc_token``, ``loc_embed``."""
  name = "sat"
  map_kinds = ("sat",)
  maps_all_classes = False
  upsample = "bilinear"
  eval_protocols = ("sat",)
  config_section = ("sat", SatConfig)
  drop_path_rate = 0.1  # official argparse default

  def build_model(self) -> nn.Module:
    kwargs = dict(head="conv3x3", drop_path_rate=self.drop_path, img_size=self.image_size,
                  sat_layers=int(self.section_config.layers))
    return self.build("sat", self.model_kwargs("sat", **kwargs))

  def train_forward(self, variables: base.Variables, images: jax.Array, rng: jax.Array | None,
                    train: bool = True) -> tuple[jax.Array, jax.Array]:
    """Logits (B, C) and the map (B, h, w) of a (train-mode) forward (``rng``: the
    dropout/drop-path stream; None only without stochastic layers)."""
    rngs = {"dropout": rng} if train and rng is not None else None
    logits, aux = self.model.apply(variables, images, train=train, rngs=rngs)
    return logits, aux["sat_map"]

  def loss(self, variables, batch, rng):
    cfg = self.section_config
    logits, sat_map = self.train_forward(variables, batch["image"], rng)
    loss_cls, metrics = base.cross_entropy(logits, batch["label"])
    terms = sat_losses(sat_map, cfg)
    loss = loss_cls + cfg.ba_weight * terms["loss_ba"] + cfg.norm_weight * terms["loss_norm"]
    metrics.update(loss=loss, loss_cls=loss_cls, loss_ba=terms["loss_ba"],
                   loss_norm=terms["loss_norm"], map_area=jnp.mean(terms["ba"]))
    return loss, {"metrics": metrics, "model_state": {}}

  def maps(self, variables, images, targets=None, kind=None):
    kind = self.check_kind(kind)
    out, logits = maps_lib.compute(self.model, variables, images, (kind,), targets)
    return out[kind], logits

  def param_labels(self, params):
    labels = base.timm_decay_labels(params)
    return {k: ("no_decay" if k in NO_DECAY_NAMES else v) for k, v in labels.items()}


__all__ = ["NO_DECAY_NAMES", "Sat", "SatConfig", "sat_losses"]
