"""TS-CAM (DeiT-S) on CUB-200-2011 — the official recipe (vasgaowei/TS-CAM train_val_cub.sh).

  python -m weights_convert.timm --model deit_small_patch16_224 \
      --hf-repo timm/deit_small_patch16_224.fb_in1k --out ckpt/deit_s
  python -m wsol_jax.train --config configs/tscam_cub.py --workdir runs/tscam_cub \
      --config.model.pretrained=ckpt/deit_s

Variants (``--config configs/tscam_cub.py:tfds,paper``): ``tfds`` reads TFDS
``caltech_birds2011`` and holds out 10% of train for selection; the default reads the
wsolevaluation layout (metadata + images; val = CUBV2); ``paper`` selects on the test
set like the official code.

Official code: AdamW (0.9, 0.999), eps 1e-8, wd 0.05 (timm no-decay rule), lr 5e-5,
×0.1 at epochs 30 and 60, 60 epochs, batch 128, drop-path 0.1, resize 256 → crop 224 →
flip, test resize 224, seed 26.
Paper (Table 1, DeiT-S, CUB test): Top-1 Loc 71.3, Top-5 Loc 83.8, GT-known 87.7,
Cls 80.3 / 94.8. SCM's appendix (selected on CUBV2): MaxBoxAccV1 88.9, MaxBoxAccV2 79.6.
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/tscam_cub.py:a,b``).
VARIANTS = ('tfds', 'paper', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "tscam"
  c.seed = 26
  c.model.name = "deit_small_patch16_224"
  config_lib.set_cub_data(c, variants)
  c.data.image_size, c.data.resize_size = 224, 256
  c.optimizer.update(dict(name="adamw", lr=5e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05))
  c.schedule.update(dict(name="step", steps=(30,), factor=0.1))
  c.training.update(dict(batch_size=128, num_epochs=60))
  c.eval.cam_threshold = 0.1
  config_lib.set_precision(c, variants)
  return c
