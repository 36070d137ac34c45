"""ViTOL on the synthetic WSOL dataset: a tiny DeiT + p-ADL trained from scratch on a CPU.

  python -m wsol_jax.train --config configs/vitol_synthetic.py --workdir /tmp/wsol-vitol

Generates the dataset on first use, trains ~10 minutes on 2 CPU cores, selects on the val
split, evaluates the test split with GAR maps and prints MaxBoxAccV2 next to the
center-Gaussian baseline (plus the ViTOL fixed-threshold protocol); overlays go to
WORKDIR/overlays. Model and recipe: ``config_lib.set_synthetic_vit``; p-ADL with the
paper's drop rate 0.75 and γ 0.9. Variant ``smoke``: a few steps (tests).

Expected test MaxBoxAccV2: 67.72 (center-Gaussian 28.94; 8.5 min on 2 cores).
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/vitol_synthetic.py:a,b``).
VARIANTS = ('smoke',)


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "vitol"
  config_lib.set_synthetic_vit(c)
  c.padl.update(dict(enabled=True, drop_rate=0.75, gamma=0.9))
  c.eval.fixed_threshold = 0.2
  if "smoke" in variants:
    config_lib.set_synthetic_smoke(c)
  return c
