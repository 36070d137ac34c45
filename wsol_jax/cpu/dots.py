"""Which XLA:CPU runtime multiplies the train step's matrices.

XLA:CPU (jaxlib 0.10) hands each dot either to a YNNPACK fusion or to its own dot thunk
(Eigen's contraction with oneDNN's JIT sgemm kernels). By default it picks YNNPACK for
the forward and input-gradient products of a ViT. On this project's CPU the thunk is
better (``benchmarks/README.md``): the train step is compiled with
``xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE`` (YNNPACK keeps the
reductions, the dots go to the thunk). The option is experimental in XLA: where the
installed jaxlib does not accept it, the wing leaves the placement to XLA.
"""
from __future__ import annotations

import functools

_OPTION = "xla_cpu_experimental_ynn_fusion_type"
COMPILER_OPTIONS = {_OPTION: "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def option_accepted() -> bool:
  """Whether this jaxlib compiles with the option (tried once on a tiny function)."""
  import jax
  import jax.numpy as jnp
  try:
    jax.jit(lambda x: x @ x).lower(jnp.ones((8, 8), jnp.float32)).compile(
        compiler_options=COMPILER_OPTIONS)
  except Exception:  # noqa: BLE001 (XLA raises its own error types)
    return False
  return True
