"""SCM on the synthetic WSOL dataset: a tiny DeiT trained from scratch on a CPU (the README demo).

  python -m wsol_jax.train --config configs/scm_synthetic.py --workdir /tmp/wsol-demo

Generates the dataset on first use, trains ~5 minutes on 2 CPU cores, selects on the
val split, evaluates the test split and prints MaxBoxAccV2 next to the center-Gaussian
baseline; overlays go to WORKDIR/overlays. Model and recipe: ``config_lib.set_synthetic_vit``
(the SCM blocks use the official defaults of ``config.scm``). Variant ``smoke``: a few
steps (tests).

Expected test MaxBoxAccV2: 66.06 with the CPU wing on (center-Gaussian 28.94; 5 min on 2
cores, 2026-12-06). Implementations that differ by float32 rounding (another CPU, another
release, ``cpu_tuning=off``) train along other trajectories: 66–81 so far
(``benchmarks/README.md``).
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/scm_synthetic.py:a,b``).
VARIANTS = ('smoke',)


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "scm"
  config_lib.set_synthetic_vit(c)
  if "smoke" in variants:
    config_lib.set_synthetic_smoke(c)
  return c
