"""AG-CAM (Leem & Seo, AAAI'24; LeemSaebom/Attention-Guided-CAM-…): a ViT-B/16 classifier
explained by attention-guided CAM.

Model: timm ``vit_base_patch16_224`` (LayerNorm eps 1e-6, mean = std = 0.5) with a
linear class-token head, fine-tuned with plain cross-entropy (the paper's fine-tuning
details are in a supplementary we do not have; ``configs/agcam_*.py`` document our
choices). ILSVRC uses the public ViT-B/16 as is.

Maps (eval mode), for the ground-truth class in the evaluator (AG-CAM's localization
protocol explains the predicted class and keeps only correctly classified images, so
the two agree), all (B, h, w), upsampled bilinearly (torch ``align_corners=False``):

* ``'agcam'`` (default): Σ_l Σ_h sigmoid(S_l[h, 0]) ⊙ ReLU(∂y/∂A_l[h, 0]) with the
  official stop-gradient at every attention input (``config.agcam.stop_gradient``;
  False = plain autograd);
* ``'rollout'``: the paper's Attention Rollout baseline (jacobgil: (Ā + I)/2, row
  normalised), kind ``rollout_half``;
* ``'lrp'``: the Transformer-Explainability baseline (``transformer_attribution``).

The ``'agcam'`` protocol reports pixel accuracy / IoU / dice / precision / recall at
``eval.pixel_threshold`` over correctly classified images and ABPC.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn

from wsol_jax import maps as maps_lib
from wsol_jax.methods import base


@dataclasses.dataclass(frozen=True)
class AgCamConfig:
  """``config.agcam``. stop_gradient: the official stop-gradient at every attention input
  (False: plain autograd, ``agcam_nostopgrad``)."""
  stop_gradient: bool = True


class AgCam(base.Method):
  name = "agcam"
  map_kinds = ("agcam", "rollout", "lrp")
  maps_all_classes = False
  upsample = "bilinear"
  eval_protocols = ("agcam",)
  config_section = ("agcam", AgCamConfig)

  def build_model(self) -> nn.Module:
    kwargs = dict(head="linear", img_size=self.image_size, drop_path_rate=self.drop_path)
    return self.build("vit", self.model_kwargs("vit", **kwargs))

  def compute_kind(self, kind: str | None) -> str:
    """The ``wsol_jax.maps`` kind behind one of ``map_kinds`` (None: the default)."""
    kind = self.check_kind(kind)
    if kind == "agcam":
      return "agcam" if self.section_config.stop_gradient else "agcam_nostopgrad"
    return "rollout_half" if kind == "rollout" else kind

  def loss(self, variables, batch, rng):
    logits, _ = self.model.apply(variables, batch["image"], train=True, rngs={"dropout": rng})
    loss, metrics = base.cross_entropy(logits, batch["label"])
    return loss, {"metrics": metrics, "model_state": {}}

  def maps(self, variables, images, targets=None, kind=None):
    name = self.compute_kind(kind)
    out, logits = maps_lib.compute(self.model, variables, images, (name,), targets)
    return out[name], logits


__all__ = ["AgCam", "AgCamConfig"]
