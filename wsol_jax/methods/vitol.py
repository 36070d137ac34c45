"""ViTOL (Gupta et al., CVPRW'22; Saurav-31/ViTOL): DeiT + p-ADL, GAR/rollout/LRP maps.

Model: hila-chefer's ``ViT_LRP`` DeiT (blocks LayerNorm eps 1e-6, final LayerNorm
1e-5, no dropout or stochastic depth) with a linear class-token head and p-ADL
(``wsol_jax.models.padl``) after the MLP residual of every block, on all tokens.
Training: plain cross-entropy; p-ADL draws from the ``'dropout'`` RNG stream (one
Bernoulli draw per layer per step, shared by the batch). No training code was released:
the recipes in ``configs/vitol_*.py`` follow the paper.

Maps (eval mode, p-ADL off), for the ground-truth class in the ViTOL protocol:
``'gar'`` (default; gradient attention rollout), ``'rollout'`` and ``'lrp'``
(Transformer-Explainability ``transformer_attribution``), all (B, h, w), upsampled with
OpenCV's INTER_CUBIC (``'bicubic'``). The ``'vitol'`` protocol scores V2 boxes at the
fixed ``eval.fixed_threshold`` (DeiT-S GAR 0.165, DeiT-S LRP 0.15, DeiT-B GAR 0.208,
DeiT-B LRP 0.185).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn

from wsol_jax import maps as maps_lib
from wsol_jax.methods import base
from wsol_jax.models import padl

FINAL_NORM_EPS = 1e-5  # hila's ViT_LRP final LayerNorm (torch default)


@dataclasses.dataclass(frozen=True)
class PadlConfig:
  """p-ADL settings (``config.padl``); the defaults are the official ``config.py``'s.

  Attributes:
    enabled: insert p-ADL in every block (False: the plain DeiT baseline).
    drop_rate: probability of the drop-mask branch (``adl_drop_rate``).
    gamma: drop threshold ratio to the maximum (``adl_threshold``).
    per_example: one Bernoulli draw per image instead of one per batch (not official).
  """
  enabled: bool = True
  drop_rate: float = 0.75
  gamma: float = 0.9
  per_example: bool = False

  def __post_init__(self):
    if not 0.0 <= self.drop_rate <= 1.0:
      raise ValueError(f"padl.drop_rate must be in [0, 1], got {self.drop_rate}")
    if not 0.0 <= self.gamma <= 1.0:
      raise ValueError(f"padl.gamma must be in [0, 1], got {self.gamma}")


class Vitol(base.Method):
  name = "vitol"
  map_kinds = ("gar", "rollout", "lrp")
  maps_all_classes = False
  upsample = "bicubic"
  eval_protocols = ("vitol",)
  config_section = ("padl", PadlConfig)

  def build_model(self) -> nn.Module:
    cfg = self.section_config
    post = (padl.post_block_factory(drop_rate=float(cfg.drop_rate), gamma=float(cfg.gamma),
                                    per_example=bool(cfg.per_example)) if cfg.enabled else None)
    kwargs = dict(head="linear", final_norm_eps=FINAL_NORM_EPS, img_size=self.image_size,
                  drop_path_rate=self.drop_path, post_block=post)
    return self.build("vit", self.model_kwargs("vit", **kwargs))

  def loss(self, variables, batch, rng):
    logits, _ = self.model.apply(variables, batch["image"], train=True, rngs={"dropout": rng})
    loss, metrics = base.cross_entropy(logits, batch["label"])
    return loss, {"metrics": metrics, "model_state": {}}

  def maps(self, variables, images, targets=None, kind=None):
    kind = self.check_kind(kind)
    out, logits = maps_lib.compute(self.model, variables, images, (kind,), targets)
    return out[kind], logits


__all__ = ["FINAL_NORM_EPS", "PadlConfig", "Vitol"]
