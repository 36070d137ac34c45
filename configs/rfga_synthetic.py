"""RFGA on the synthetic WSOL dataset: a narrow ResNet + the RFGA module from scratch on a CPU.

  python -m wsol_jax.train --config configs/rfga_synthetic.py --workdir /tmp/wsol-rfga

Generates the dataset on first use, trains ~10 minutes on 2 CPU cores, selects on the val
split, evaluates the test split and prints MaxBoxAccV2 next to the center-Gaussian
baseline (and the RFGA protocol: MaxBoxAcc V1 at IoU 50…90, mIoU); overlays go to
WORKDIR/overlays. Model and recipe (not the paper's, see ``rfga_cub.py``):
``config_lib.set_synthetic_resnet`` plus the paper's module (second sigmoid, residual,
full C → C h/w convs, k = 3), one lr for all layers. Variants: ``moana`` (MoANA module
reading: no second sigmoid), ``smoke`` (a few steps, tests).

Expected test MaxBoxAccV2: 52.00 (center-Gaussian 28.94; 12.2 min on 2 cores).
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/rfga_synthetic.py:a,b``).
VARIANTS = ('moana', 'smoke')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "rfga"
  config_lib.set_synthetic_resnet(c)
  c.optimizer.weight_decay = 5e-4
  c.rfga.update(dict(second_sigmoid=True, calibration="residual", hw_conv="full", kernel_size=3))
  if "moana" in variants:
    c.rfga.second_sigmoid = False
  if "smoke" in variants:
    config_lib.set_synthetic_smoke(c)
    c.rfga.hw_conv = "depthwise"
  return c
