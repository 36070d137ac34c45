"""ViTOL (Gupta et al., CVPRW'22; Saurav-31/ViTOL): DeiT + p-ADL, GAR/rollout/LRP maps.

Model: hila-chefer's ``ViT_LRP`` DeiT (blocks LayerNorm eps 1e-6, final LayerNorm
1e-5, no dropout or stochastic depth) with a linear class-token head and p-ADL
(``wsol_jax.methods.padl``) after the MLP residual of every block, on all tokens.
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

import flax.linen as nn
import ml_collections

from wsol_jax import maps as maps_lib
from wsol_jax.methods import base
from wsol_jax.methods import padl as padl_lib
from wsol_jax.models import registry

FINAL_NORM_EPS = 1e-5  # hila's ViT_LRP final LayerNorm (torch default)


class Vitol(base.Method):
  name = "vitol"
  map_kinds = ("gar", "rollout", "lrp")
  maps_all_classes = False
  upsample = "bicubic"
  eval_protocols = ("vitol",)

  def __init__(self, config: ml_collections.ConfigDict):
    self.padl_config = padl_lib.PadlConfig.from_config(config)
    super().__init__(config)

  def build_model(self) -> nn.Module:
    kwargs = dict(head="linear", final_norm_eps=FINAL_NORM_EPS, img_size=self.image_size,
                  drop_path_rate=float(self.config.model.get("drop_path_rate", 0.0)),
                  post_block=padl_lib.post_block_factory(self.padl_config))
    return registry.build_from_kwargs("vit", self.model_kwargs(**kwargs))

  def loss(self, variables, batch, rng):
    logits, _ = self.model.apply(variables, batch["image"], train=True, rngs={"dropout": rng})
    loss, metrics = base.cross_entropy(logits, batch["label"])
    return loss, {"metrics": metrics, "model_state": {}}

  def maps(self, variables, images, targets=None, kind=None):
    kind = kind or self.map_kinds[0]
    if kind not in self.map_kinds:
      raise ValueError(f"ViTOL map kind must be one of {self.map_kinds}, got {kind!r}")
    out, logits = maps_lib.compute(self.model, variables, images, (kind,), targets)
    return out[kind], logits


__all__ = ["FINAL_NORM_EPS", "Vitol"]
