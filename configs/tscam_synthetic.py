"""TS-CAM on the synthetic WSOL dataset: a tiny DeiT trained from scratch on a CPU.

  python -m wsol_jax.train --config configs/tscam_synthetic.py --workdir /tmp/wsol-tscam

Generates the dataset on first use (TFDS ArrayRecord under ``data.data_dir``, default
~/tensorflow_datasets), trains ~10 minutes on 2 CPU cores, selects on the val split,
evaluates the test split and prints MaxBoxAccV2 next to the center-Gaussian baseline;
overlays go to WORKDIR/overlays. Model and recipe: ``config_lib.set_synthetic_vit``.
Variant ``smoke``: a few steps (tests).

From scratch TS-CAM classifies (test cls top-1 95.3) but does not localise (MaxBoxAccV2
27.22 vs 28.94 for the baseline): its map weights the semantic map by the class token's
attention, which TS-CAM's patch-token loss does not train. Like the official recipe (an
ImageNet DeiT), start from a DeiT trained with a class-token head, e.g. the
``agcam_synthetic.py`` export:

  python -m wsol_jax.train --config configs/tscam_synthetic.py --workdir /tmp/wsol-tscam \
    --config.model.pretrained=/tmp/wsol-agcam/export        # MaxBoxAccV2 69.17
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/tscam_synthetic.py:a,b``).
VARIANTS = ('smoke',)


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "tscam"
  config_lib.set_synthetic_vit(c)
  if "smoke" in variants:
    config_lib.set_synthetic_smoke(c)
  return c
