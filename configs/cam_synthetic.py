"""CAM (wsolevaluation ResNet) on the synthetic WSOL dataset: a narrow ResNet from scratch on a CPU.

  python -m wsol_jax.train --config configs/cam_synthetic.py --workdir /tmp/wsol-cam

Generates the dataset on first use, trains ~10 minutes on 2 CPU cores, selects on the val
split, evaluates the test split and prints MaxBoxAccV2 next to the center-Gaussian
baseline; overlays go to WORKDIR/overlays. Model and recipe (not the paper's, see
``cam_cub.py``): ``config_lib.set_synthetic_resnet`` — ResNet-50 layout with one Bottleneck
per stage at width 16, output stride 8 (wsolevaluation's ``large_feature_map``), SGD.
Variant ``smoke``: a few steps (tests).

Expected test MaxBoxAccV2: 46.28 (center-Gaussian 28.94).
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/cam_synthetic.py:a,b``).
VARIANTS = ('smoke',)


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "cam"
  config_lib.set_synthetic_resnet(c)
  if "smoke" in variants:
    config_lib.set_synthetic_smoke(c)
  return c
