"""Which XLA:CPU runtime multiplies the train step's matrices (``config.xla.cpu_dots``).

XLA:CPU (jaxlib 0.10) hands each dot either to a YNNPACK fusion or to its own dot thunk
(Eigen's contraction with oneDNN's JIT sgemm kernels). By default it picks YNNPACK for
the forward and input-gradient products of a ViT. On this project's CPU the thunk is
better: the DeiT-S train step at batch 32 ran 7–8 % faster with every dot on it
(interleaved A/B; ``benchmarks/train_step.py --cpu-dots xla`` measures the other):

* ``"eigen"`` (default): the step is compiled with
  ``xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE`` (YNNPACK keeps
  the reductions, the dots go to the thunk);
* ``"xla"``: XLA's own choice.

Only the CPU backend is affected. The option is experimental in XLA: where the installed
jaxlib does not accept it, ``"eigen"`` warns once and compiles with XLA's choice.
"""
from __future__ import annotations

import functools
import warnings

from wsol_jax.config_lib import ConfigError

CHOICES = ("eigen", "xla")
_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_REDUCE_ONLY = "LIBRARY_FUSION_TYPE_REDUCE"


@functools.cache
def _option_accepted() -> bool:
  """Whether this jaxlib compiles with the option (tried once on a tiny function)."""
  import jax
  import jax.numpy as jnp
  try:
    jax.jit(lambda x: x @ x).lower(jnp.ones((8, 8), jnp.float32)).compile(
        compiler_options={_OPTION: _REDUCE_ONLY})
  except Exception as e:  # noqa: BLE001 (XLA raises its own error types)
    warnings.warn(f"config.xla.cpu_dots='eigen' is not available with this jaxlib ({e}); "
                  "using XLA's default dot placement", stacklevel=3)
    return False
  return True


def check(choice: str) -> None:
  """Raises ``ConfigError`` for a value outside ``CHOICES``."""
  if choice not in CHOICES:
    raise ConfigError(f"config.xla.cpu_dots must be one of {CHOICES}, got {choice!r}")


def compiler_options(choice: str) -> dict[str, str]:
  """``jax.jit(..., compiler_options=...)`` for a train step under ``choice``."""
  import jax  # not at import: the CLI checks the choice before JAX starts
  check(choice)
  if choice == "xla" or jax.default_backend() != "cpu" or not _option_accepted():
    return {}
  return {_OPTION: _REDUCE_ONLY}
