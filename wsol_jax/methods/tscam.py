"""TS-CAM (Gao et al., ICCV'21; vasgaowei/TS-CAM): DeiT + 3×3 conv semantic head.

Training: cross-entropy on the spatial mean of the semantic maps (drop-path 0.1).
Maps (eval): ``(Σ_l mean_h A_l[cls, patches]) ⊙ S`` for every class, (B, C, h, w).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from wsol_jax import maps as maps_lib
from wsol_jax.methods import base


class TsCam(base.Method):
  name = "tscam"
  map_kinds = ("tscam",)
  maps_all_classes = True
  upsample = "bilinear"
  eval_protocols = ("tscam", "scm")
  drop_path_rate = 0.1  # TS-CAM/SCM argparse default

  def build_model(self) -> nn.Module:
    return self._build("vit")

  def _build(self, family: str, **kwargs: Any) -> nn.Module:
    kwargs = dict(head="conv3x3", drop_path_rate=self.drop_path, img_size=self.image_size,
                  **kwargs)
    return self.build(family, self.model_kwargs(family, **kwargs))

  def loss(self, variables, batch, rng):
    logits, _ = self.model.apply(variables, batch["image"], train=True, rngs={"dropout": rng})
    loss, metrics = base.cross_entropy(logits, batch["label"])
    return loss, {"metrics": metrics, "model_state": {}}

  def maps(self, variables, images, targets=None, kind=None):
    self.check_kind(kind)
    logits, attn_cls, semantic = self.semantic_and_attention(variables, images)
    return maps_lib.tscam_maps(attn_cls, semantic), logits

  def semantic_and_attention(self, variables: base.Variables, images: jax.Array,
                             train: bool = False, rng: jax.Array | None = None):
    """``(logits, attn_cls (L,B,H,N), semantic (B,h,w,C))`` — shared by TS-CAM and SCM."""
    rngs = {"dropout": rng} if train else None
    logits, aux = self.model.apply(variables, images, train=train, rngs=rngs,
                                   capture=("attn_cls", "semantic"))
    return logits, aux["attn_cls"], aux["semantic"]
