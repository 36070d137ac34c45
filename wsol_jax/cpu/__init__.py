"""The XLA:CPU wing: what makes a run fast on XLA:CPU, kept out of the backend-neutral models.

One switch, ``config.cpu_tuning``, and one call, ``install(config)``, made by the entry
points (train, evaluate, explain, launch) before JAX starts its backend. It returns the
run's ``wsol_jax.runtime.Runtime``; the methods pass its implementations to the models.

================= ======================================================= ==================
part              what it does                                            where
================= ======================================================= ==================
host_malloc       freed host memory stays in the process, so XLA:CPU's    ``malloc.py``
                  per-step temporary buffer costs no page faults
dots              the train step's dots on XLA:CPU's dot thunk            ``dots.py``
                  (Eigen + oneDNN) instead of YNNPACK
weight_gradients  the ViT's matmuls get a VJP with the weight gradient    ``vjp.py``
                  as xᵀ·g (no transposing copy of g)
block_boundary    a gradient barrier on the ViT's residual stream (stops  ``vjp.py``
                  an O(depth²) fusion pathology of XLA:CPU)
attention         the ViT attention core as an FFI kernel                 ``attention.py``
newton_schulz     SCM's dense Newton–Schulz steps as an FFI kernel        ``newton_schulz.py``
================= ======================================================= ==================

``config.cpu_tuning``:

* ``'auto'`` (default): on the CPU backend every part, the FFI kernels only on a single
  device (an FFI call has no sharding rule: a batch-sharded step would gather around it)
  and where they build (else XLA's ops, with a one-line notice); on GPU/TPU nothing.
* ``'on'``: every part, the kernels on any number of CPU devices; an error where the
  backend is not the CPU or a kernel does not build.
* ``'off'``: plain XLA (what a GPU/TPU runs), e.g. to compare.

The FFI kernels need a C++ compiler and ``scipy-openblas32`` (``pip install 'wsol_jax[cpu]'``).
What ran is ``Runtime.describe()``, written to the run's ``config.json`` and ``results.json``.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
from typing import Any

from wsol_jax.config_lib import ConfigError
from wsol_jax.runtime import PLAIN_CHOICES, Runtime

SETTINGS = ("auto", "on", "off")
log = logging.getLogger("wsol_jax.cpu")


@dataclasses.dataclass(frozen=True)
class Plan:
  """Which parts of the wing a run uses (``plan``); benchmarks may switch single parts."""
  setting: str = "off"
  host_malloc: bool = False
  dots: bool = False
  weight_gradients: bool = False
  block_boundary: bool = False
  attention: bool = False
  newton_schulz: bool = False
  notes: tuple[str, ...] = ()


def check(setting: str) -> None:
  """Raises ``ConfigError`` for a value outside ``SETTINGS``."""
  if setting not in SETTINGS:
    raise ConfigError(f"config.cpu_tuning must be one of {SETTINGS}, got {setting!r}")


def _cpu_only_process() -> bool:
  """Whether JAX will run on the CPU, decided without starting a backend (the malloc
  setting must precede it): the platforms are pinned to the CPU, or no accelerator
  plugin (CUDA/ROCm/TPU) is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  if importlib.metadata.entry_points(group="jax_plugins"):
    return False
  return importlib.util.find_spec("libtpu") is None


def _kernels_unavailable() -> str | None:
  """None where both FFI kernels build and load here, else the first reason."""
  from wsol_jax.cpu import attention, newton_schulz
  return attention.unavailable() or newton_schulz.unavailable()


def plan(setting: str) -> Plan:
  """The parts ``setting`` turns on for this process's backend (starts JAX's backend).

  Raises:
    ConfigError: ``setting='on'`` where the backend is not the CPU or a kernel does not build.
  """
  check(setting)
  import jax
  if setting == "off":
    return Plan(setting)
  if jax.default_backend() != "cpu":
    if setting == "on":
      raise ConfigError(f"config.cpu_tuning='on' needs the CPU backend, not "
                        f"{jax.default_backend()!r}")
    return Plan(setting)
  from wsol_jax.cpu import dots, malloc
  notes = []
  kernels = setting == "on" or jax.device_count() == 1
  if setting == "on":
    reason = _kernels_unavailable()
    if reason is not None:
      raise ConfigError(f"config.cpu_tuning='on': the CPU kernels do not build here: {reason}")
  elif kernels:
    reason = _kernels_unavailable()
    if reason is not None:
      kernels = False
      notes.append(f"CPU kernels off, using XLA's attention and Newton-Schulz steps: "
                   f"{reason.splitlines()[0]}")
  dot_option = dots.option_accepted()
  if not dot_option:
    notes.append("this jaxlib does not accept the dot-placement option; XLA places the dots")
  return Plan(setting, host_malloc=malloc.applied(), dots=dot_option, weight_gradients=True,
              block_boundary=True, attention=kernels, newton_schulz=kernels, notes=tuple(notes))


def runtime(p: Plan) -> Runtime:
  """The ``Runtime`` of a plan: injected implementations, compiler options, choices."""
  impls: dict[str, Any] = {}
  choices = dict(PLAIN_CHOICES, cpu_tuning=p.setting)
  options: dict[str, str] = {}
  if p.attention:
    from wsol_jax.cpu import attention
    impls["attention_fn"] = attention.attention_fn
    choices["attention"] = "cpu_kernel"
  if p.newton_schulz:
    from wsol_jax.cpu import newton_schulz
    impls["newton_schulz_steps"] = newton_schulz
    choices["newton_schulz"] = "cpu_kernel"
  if p.weight_gradients or p.block_boundary:
    from wsol_jax.cpu import vjp
    if p.weight_gradients:
      impls["dot_general"] = vjp.dot_general
      choices["weight_gradients"] = "x^T.g"
    if p.block_boundary:
      impls["block_boundary"] = vjp.gradient_barrier
      choices["block_boundary"] = "gradient_barrier"
  if p.dots:
    from wsol_jax.cpu import dots
    options.update(dots.COMPILER_OPTIONS)
    choices["dots"] = "dot_thunk"
  if p.host_malloc:
    choices["host_malloc"] = "keep_freed"
  return Runtime(model_impls=impls, compiler_options=options, choices=choices)


def install(config: Any) -> Runtime:
  """Sets the wing up for a run of ``config`` (``config.cpu_tuning``) and returns its runtime.

  Call it before anything starts JAX's backend (first ``jax.devices()`` or computation):
  the malloc setting only reaches threads that allocate afterwards. Logs one line per
  notice (e.g. a kernel that does not build under ``'auto'``).
  """
  setting = str(config.cpu_tuning)
  check(setting)
  if setting == "on" or (setting == "auto" and _cpu_only_process()):
    from wsol_jax.cpu import malloc
    malloc.keep_freed_host_memory()
  p = plan(setting)
  for note in p.notes:
    log.warning("cpu_tuning=%s: %s", setting, note)
  return runtime(p)


__all__ = ["Plan", "SETTINGS", "check", "install", "plan", "runtime"]
