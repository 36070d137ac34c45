"""AG-CAM on the synthetic WSOL dataset: a tiny DeiT classifier trained from scratch on a CPU.

  python -m wsol_jax.train --config configs/agcam_synthetic.py --workdir /tmp/wsol-agcam

Generates the dataset on first use, trains the linear-head classifier ~10 minutes on
2 CPU cores, selects on the val split, evaluates the test split with AG-CAM maps (official
stop-gradient) and prints MaxBoxAccV2 next to the center-Gaussian baseline, plus the AG-CAM
protocol (pixel metrics at 0.5 over correctly classified images, ABPC); overlays go to
WORKDIR/overlays. Model and recipe: ``config_lib.set_synthetic_vit``. Variant ``smoke``:
a few steps (tests).

Expected test MaxBoxAccV2: 64.33 (center-Gaussian 28.94; 12.1 min on 2 cores).
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/agcam_synthetic.py:a,b``).
VARIANTS = ('smoke',)


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "agcam"
  config_lib.set_synthetic_vit(c)
  c.agcam.stop_gradient = True
  c.eval.pixel_threshold = 0.5
  c.eval.abpc = True
  if "smoke" in variants:
    config_lib.set_synthetic_smoke(c)
  return c
