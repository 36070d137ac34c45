"""Optimizers and learning-rate schedules from a config, reproducing the official rules.

Schedules (``config.schedule.name``), with epochs counted from 1 as the official code does:

* ``step``: TS-CAM/SCM ``adjust_learning_rate_normal``: at the start of epoch e, if e is
  divisible by any entry of ``steps``, multiply the lr by ``factor`` (once). CUB
  (steps [30], 60 epochs) decays at epochs 30 and 60; ILSVRC ([10, 12], 20) at 10, 12, 20.
  "×0.1 every k epochs" (ViTOL, RFGA, wsolevaluation) is ``steps=(k,)``.
* ``multistep``: PyTorch ``MultiStepLR``: ×factor after each milestone epoch in ``steps``.
* ``constant`` and ``cosine`` (with optional linear warm-up).

Optimizers: ``adamw`` (PyTorch/timm AdamW: decoupled decay scaled by the lr) and ``sgd``
(PyTorch SGD: L2 added to the gradient before momentum). Weight decay applies to
parameters labelled ``decay``/``new_decay`` by the method (timm rule: not to 1-D params,
``pos_embed``, ``cls_token``); ``lr_multipliers`` scales the lr of labelled groups
(e.g. RFGA/wsolevaluation 10× on new layers).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def decay_epochs(rule: str, steps: tuple[int, ...], num_epochs: int) -> list[int]:
  """1-based epochs at whose start the lr is multiplied by the factor."""
  steps = tuple(int(s) for s in steps)
  if rule == "step":
    return [e for e in range(1, num_epochs + 1) if any(s > 0 and e % s == 0 for s in steps)]
  if rule == "multistep":  # MultiStepLR: after `m` epochs, i.e. at the start of epoch m + 1
    return sorted(m + 1 for m in steps if 0 < m < num_epochs)
  raise ValueError(f"not an epoch-step rule: {rule}")


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int
                  ) -> optax.Schedule:
  """The learning rate as a function of the (0-based) optimizer step."""
  base = float(cfg.optimizer.lr)
  sched = cfg.schedule
  total = steps_per_epoch * num_epochs
  warmup = int(round(float(sched.warmup_epochs) * steps_per_epoch))
  if sched.name in ("step", "multistep"):
    boundaries = {(e - 1) * steps_per_epoch: float(sched.factor)
                  for e in decay_epochs(sched.name, tuple(sched.steps), num_epochs)}
    main = optax.piecewise_constant_schedule(base, boundaries)
  elif sched.name == "constant":
    main = optax.constant_schedule(base)
  elif sched.name == "cosine":
    main = optax.cosine_decay_schedule(base, max(total - warmup, 1))
  else:
    raise ValueError(f"unknown schedule {sched.name!r}; valid: step, multistep, constant, cosine")
  if warmup > 0:
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), main], [warmup])
  return main


def _label_mask(labels: Any, predicate: Callable[[str], bool]) -> Any:
  return jax.tree_util.tree_map(predicate, labels)


def make_optimizer(cfg: ml_collections.ConfigDict, schedule: optax.Schedule, labels: Any
                   ) -> optax.GradientTransformation:
  """Builds the optimizer; ``labels`` is the method's per-parameter label tree."""
  opt = cfg.optimizer
  decay_mask = _label_mask(labels, lambda l: l.endswith("decay") and not l.startswith("no_"))
  parts = []
  if float(opt.grad_clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
  wd = float(opt.weight_decay)
  if opt.name == "adamw":
    parts.append(optax.scale_by_adam(b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps)))
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd, decay_mask))
  elif opt.name == "sgd":
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd, decay_mask))
    if float(opt.momentum) > 0:
      parts.append(optax.trace(decay=float(opt.momentum), nesterov=bool(opt.nesterov)))
  else:
    raise ValueError(f"unknown optimizer {opt.name!r}; valid: adamw, sgd")
  multipliers = {str(k): float(v) for k, v in dict(opt.lr_multipliers).items()}
  unknown = sorted(set(multipliers) - set(np.unique(jax.tree_util.tree_leaves(labels))))
  if unknown:
    raise ValueError(f"optimizer.lr_multipliers names labels no parameter has: {unknown}; "
                     f"labels: {sorted(set(jax.tree_util.tree_leaves(labels)))}")
  if multipliers:
    factors = jax.tree_util.tree_map(lambda l: multipliers.get(l, 1.0), labels)
    parts.append(_scale_by_tree(factors))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


def _scale_by_tree(factors: Any) -> optax.GradientTransformation:
  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
