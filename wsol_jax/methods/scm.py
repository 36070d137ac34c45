"""SCM (Bai et al., ECCV'22; hbai98/SCM): TS-CAM + Activation Diffusion Blocks (training only).

The network is ``wsol_jax.models.scm_adb.ScmVisionTransformer`` (the TS-CAM ViT with the
ADBs and their λ, β under ``params['scm']``); the blocks' math and its two implementations
are documented there. Training: cross-entropy on GAP(S^K) of the diffused semantic maps.
Inference drops the ADBs: maps are F⁰ ⊙ S⁰ for every class (``maps.scm_maps``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from wsol_jax import maps as maps_lib
from wsol_jax.methods import base
from wsol_jax.methods.tscam import TsCam
from wsol_jax.models import scm_adb


@dataclasses.dataclass(frozen=True)
class ScmConfig:
  """ADB settings (``config.scm``); the defaults are the official code's.

  Attributes:
    num_blocks: number of ADBs (``num_layers=4``).
    iterations: Newton–Schulz iterations per block (official 16, 4, 4, 4; the
      paper's option is 4 everywhere). An int means the same for every block.
    alpha: Newton–Schulz initial scale (X₀ = α·Mᵀ).
    lambda_init, beta_init: initial λ (``fuse._loss_rate``) and β (``thred``).
    impl: ``'stencil'`` (fast, same numbers) or ``'dense'`` (the literal official
      dense matrices, reference).
    precision: matmul precision of the ADBs (``'highest'`` = float32 everywhere, as the
      official float32 code; ``'default'`` allows TF32 on GPUs).
  """
  num_blocks: int = 4
  iterations: tuple[int, ...] = (16, 4, 4, 4)
  alpha: float = 0.002
  lambda_init: float = 1.0
  beta_init: float = 0.5
  impl: str = "stencil"
  precision: str = "highest"

  def __post_init__(self):
    iters = self.iterations
    iters = (int(iters),) * self.num_blocks if np.ndim(iters) == 0 else tuple(int(k) for k in iters)
    object.__setattr__(self, "iterations", iters)
    if self.num_blocks < 1 or len(iters) != self.num_blocks or min(iters) < 1:
      raise ValueError(f"scm: need num_blocks >= 1 and one iteration count >= 1 per block, got "
                       f"num_blocks={self.num_blocks}, iterations={iters}")
    if self.impl not in scm_adb.IMPLS:
      raise ValueError(f"scm.impl must be one of {scm_adb.IMPLS}, got {self.impl!r}")
    if self.precision not in scm_adb.PRECISIONS:
      raise ValueError(f"scm.precision must be one of {sorted(scm_adb.PRECISIONS)}, "
                       f"got {self.precision!r}")


class Scm(TsCam):
  """SCM: the TS-CAM model plus ADB parameters ``params['scm']['adb_i']['lambda'|'beta']`` (1,)."""
  name = "scm"
  map_kinds = ("scm",)
  maps_all_classes = True
  upsample = "bilinear"
  config_section = ("scm", ScmConfig)

  def build_model(self) -> nn.Module:
    cfg = self.section_config
    return self._build("scm", adb_iterations=cfg.iterations, adb_alpha=cfg.alpha,
                       adb_lambda_init=cfg.lambda_init, adb_beta_init=cfg.beta_init,
                       adb_impl=cfg.impl, adb_precision=cfg.precision)

  def train_forward(self, variables: base.Variables, images: jax.Array, rng: jax.Array | None,
                    *, train: bool = True, ties: str = "first", trace: bool = False
                    ) -> tuple[jax.Array, dict[str, Any]]:
    """Training-graph logits GAP(S^K) (B, C) and ``{'S0', 'F0'}`` (+ every block's S, F,
    F̂, P with ``trace``)."""
    if "scm" not in variables["params"]:
      raise ValueError("SCM training needs params['scm'] (the ADBs' lambda/beta): build the "
                       "variables with Scm.init, or convert the checkpoint with --method scm")
    rngs = {"dropout": rng} if train else None
    logits, aux = self.model.apply(variables, images, train=train, rngs=rngs, diffuse=True,
                                   ties=ties, trace=trace)
    return logits, aux["adb"]

  def loss(self, variables, batch, rng):
    logits, _ = self.train_forward(variables, batch["image"], rng)
    loss, metrics = base.cross_entropy(logits, batch["label"])
    for name, block in variables["params"]["scm"].items():
      metrics[f"{name}/lambda"] = block["lambda"][0]
      metrics[f"{name}/beta"] = block["beta"][0]
    return loss, {"metrics": metrics, "model_state": {}}

  def maps(self, variables, images, targets=None, kind=None):
    self.check_kind(kind)
    logits, attn_cls, semantic = self.semantic_and_attention(variables, images)
    return maps_lib.scm_maps(attn_cls, semantic), logits

  def param_labels(self, params):
    return base.timm_decay_labels(params)  # λ, β are 1-D: 'no_decay' (timm rule, as official)


__all__ = ["Scm", "ScmConfig"]
