"""SAT on the synthetic WSOL dataset: a tiny DeiT trained from scratch on a CPU.

  python -m wsol_jax.train --config configs/sat_synthetic.py --workdir /tmp/wsol-sat

Generates the dataset on first use, trains on 2 CPU cores, selects on the val split,
evaluates the test split and prints MaxBoxAccV2 next to the center-Gaussian baseline;
overlays go to WORKDIR/overlays. Model and recipe: ``config_lib.set_synthetic_vit``
(depth 4: the last 3 blocks are spatial-aware, as the official 3 of 12), with SAT's
official loss settings (``config.sat``: area_thr 0.25, both spatial losses weight 1).
Variant ``smoke``: a few steps (tests; depth 2, one spatial-aware block).

Expected test MaxBoxAccV2: 80.83 with the CPU wing on (center-Gaussian 28.94, +51.9; cls
top-1 93.5; selected step 1,000 of 1,500; 10.2 min on 2 cores including the dataset's
generation, 2026-12-07, project VM shared with other agents). Unlike TS-CAM from scratch,
SAT localises without a pretrained DeiT: its map is the spatial token's own attention query,
trained by the batch area and normalization losses. Implementations that differ by float32
rounding train along other trajectories, so the number moves by a few points.
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/sat_synthetic.py:a,b``).
VARIANTS = ('smoke',)


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "sat"
  config_lib.set_synthetic_vit(c)
  if "smoke" in variants:
    config_lib.set_synthetic_smoke(c)
    c.sat.layers = 1
  return c
