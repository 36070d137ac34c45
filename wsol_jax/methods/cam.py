"""CAM baseline of wsolevaluation (Choe et al., CVPR'20; clovaai/wsolevaluation ``ResNetCam``).

Network: ResNet-50 with the first block of layer4 at stride 1 (output stride 16: 224 →
14×14; ``model.kwargs.output_stride=8`` = ``large_feature_map``, layer3 too), GAP + fc,
cross-entropy. CAM for the target t (``wsol_jax.maps.cam``)::

    cam[h, w] = (1/K) Σ_k fc.weight[t, k] · F[h, w, k]      (no bias, no ReLU)

upsampled bicubically (OpenCV INTER_CUBIC) and min-max normalised by the evaluator.
Training follows ``main.py``: SGD (Nesterov, momentum 0.9, weight decay 1e-4 on every
parameter), lr × ``optimizer.lr_multipliers.new_decay`` (``lr_classifier_ratio`` 10) on
layer4 and fc (labelled ``'new_decay'``), ×0.1 every ``lr_decay_frequency`` epochs. A fc
not loaded from the checkpoint starts as ``initialize_weights``: N(0, 0.01) weight, zero bias.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsol_jax import maps as maps_lib
from wsol_jax.methods import base

FC_STD = 0.01  # wsolevaluation initialize_weights: nn.init.normal_(fc.weight, 0, 0.01), bias 0


def classifier_roots(params: Any) -> tuple[str, ...]:
  """wsolevaluation's ``lr_classifier_ratio`` group: names containing 'layer4.' or 'fc.'."""
  return tuple(k for k in params if k == "fc" or k.startswith("layer4_"))


class Cam(base.Method):
  """wsolevaluation ResNet-50 CAM (output stride 16 unless ``model.kwargs.output_stride``)."""
  name = "cam"
  map_kinds = ("cam",)
  maps_all_classes = False
  upsample = "bicubic"
  eval_protocols = ()
  jit_init = True

  def build_model(self) -> nn.Module:
    kwargs = self.model_kwargs("resnet", output_stride=16)
    if kwargs.get("head", "fc") != "fc":
      raise ValueError("cam needs the ResNet 'fc' head (model.kwargs.head)")
    kwargs["head"] = "fc"
    return self.build("resnet", kwargs)

  def init_fresh(self, rng: jax.Array) -> base.Variables:
    variables = super().init_fresh(rng)
    params = dict(variables["params"])
    fc = params["fc"]
    key = jax.random.fold_in(rng, 7)
    params["fc"] = {"kernel": FC_STD * jax.random.normal(key, fc["kernel"].shape, fc["kernel"].dtype),
                    "bias": jnp.zeros_like(fc["bias"])}
    return {**variables, "params": params}

  def loss(self, variables, batch, rng):
    del rng
    return base.train_loss(self.model, variables, batch)

  def maps(self, variables, images, targets=None, kind=None):
    self.check_kind(kind)
    return maps_lib.cam(self.model, variables, images, targets)

  def param_labels(self, params):
    return base.new_layer_labels(params, classifier_roots(params))


__all__ = ["Cam", "FC_STD", "classifier_roots"]
