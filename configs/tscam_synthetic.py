"""TS-CAM on the synthetic WSOL dataset: a tiny DeiT trained from scratch on a CPU.

  python -m wsol_jax.train --config configs/tscam_synthetic.py --workdir /tmp/wsol-tscam

Generates the dataset on first use (TFDS ArrayRecord under ``data.data_dir``,
default ~/tensorflow_datasets), trains ~10 minutes on 2 CPU cores, selects on the val
split, evaluates the test split and prints MaxBoxAccV2 next to the center-Gaussian
baseline; overlays go to WORKDIR/overlays. Variant ``smoke``: a few steps (tests).
"""
from wsol_jax import config_lib


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "tscam"
  c.seed = 0
  config_lib.set_synthetic_data(c, image_size=64)
  c.model.name = "deit_tiny_patch16_224"
  c.model.kwargs = dict(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4)
  c.model.drop_path_rate = 0.1
  c.optimizer.update(dict(name="adamw", lr=1e-3, weight_decay=0.05))
  c.schedule.update(dict(name="cosine", warmup_epochs=2))
  c.training.update(dict(batch_size=64, num_epochs=30, log_every_steps=10))
  c.eval.update(dict(every_epochs=5, batch_size=64, num_overlays=6))
  c.checkpoint.every_steps = 200
  if "smoke" in variants:
    smoke(c)
  return c


def smoke(c):
  """A few steps on a tiny generated dataset (end-to-end tests)."""
  c.data.synthetic.update(dict(num_train=64, num_val=16, num_test=16, min_size=64, max_size=80))
  c.data.image_size, c.data.resize_size = 32, 36
  c.model.kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
  c.training.update(dict(batch_size=16, num_epochs=2, log_every_steps=2))
  c.eval.update(dict(every_epochs=1, batch_size=16, num_overlays=2))
  c.checkpoint.every_steps = 2
