"""RFGA (Sohn et al., arXiv 2104.04952): ResNet-50 + residual fine-grained attention, CAM.

The network is ``wsol_jax.models.rfga.RfgaResNet`` (output stride 8 unless
``model.kwargs.output_stride``); training is cross-entropy on the GAP of its class maps;
the map is the class map of the target (``(B, h, w)``, raw), upsampled bicubically like
wsolevaluation. Two readings of the module (``config.rfga``, ``RfgaConfig``): the paper's
(default: second sigmoid; the h/w conv structure, not stated, defaults to the code's
'full' C → C conv) and the ``moana`` preset of ku-milab/MoANA (``second_sigmoid=False``).
"""
from __future__ import annotations

import dataclasses
import flax.linen as nn

from wsol_jax import maps as maps_lib
from wsol_jax.methods import base
from wsol_jax.models import rfga as rfga_model

NEW_ROOTS = ("rfga", "head")  # parameters created by the method (10× lr in the MoANA recipe)


@dataclasses.dataclass(frozen=True)
class RfgaConfig:
  """Module options (``config.rfga``); defaults are the paper's reading.

  Attributes:
    second_sigmoid: M = σ(a_c ⊕ a_h ⊕ a_w) (paper Eq. 7) instead of the plain sum (MoANA).
    calibration: 'residual' X + X⊙M (both), 'multiplicative' X⊙M (paper "w/o R"),
      'affine_0.35_0.65' X⊙(0.35 + 0.65·M) (MoANA's segmentation copy).
    hw_conv: structure of the h/w convs: 'full' C → C (MoANA, (k, C, C) weights),
      'shared' one 1 → 1 conv for every channel (k weights), 'depthwise' one per channel.
    kernel_size: k, odd (3 in both).
  """
  second_sigmoid: bool = True
  calibration: str = "residual"
  hw_conv: str = "full"
  kernel_size: int = 3

  def __post_init__(self):
    rfga_model.validate(self.second_sigmoid, self.calibration, self.hw_conv, self.kernel_size)


class Rfga(base.Method):
  """RFGA: ``RfgaResNet``, CE loss, the target's class map.

  Parameter labels: ``rfga`` and ``head`` are ``'new_decay'``
  (``optimizer.lr_multipliers.new_decay`` = 10 is the MoANA recipe), the backbone ``'decay'``.
  """
  name = "rfga"
  map_kinds = ("cam",)
  maps_all_classes = False
  upsample = "bicubic"
  eval_protocols = ("rfga",)
  config_section = ("rfga", RfgaConfig)
  jit_init = True

  def build_model(self) -> nn.Module:
    kwargs = self.model_kwargs("rfga", output_stride=8,
                               **dataclasses.asdict(self.section_config))
    if kwargs.pop("head", "none") not in ("none", "fc"):
      raise ValueError("rfga: model.kwargs.head is not used (the head is the 1×1-conv class map)")
    return self.build("rfga", kwargs)

  def loss(self, variables, batch, rng):
    del rng
    return base.train_loss(self.model, variables, batch)

  def maps(self, variables, images, targets=None, kind=None):
    self.check_kind(kind)
    return maps_lib.cam(self.model, variables, images, targets)

  def param_labels(self, params):
    return base.new_layer_labels(params, NEW_ROOTS)


__all__ = ["NEW_ROOTS", "Rfga", "RfgaConfig"]
