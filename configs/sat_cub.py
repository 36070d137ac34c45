"""SAT (DeiT-S) on CUB-200-2011 — the official recipe (wpy1999/SAT ``train.py`` defaults).

  python -m weights_convert.timm --model deit_small_patch16_224 \
      --hf-repo timm/deit_small_patch16_224.fb_in1k --out ckpt/deit_s
  python -m wsol_jax.train --config configs/sat_cub.py --workdir runs/sat_cub \
      --config.model.pretrained=ckpt/deit_s

Variants (``--config configs/sat_cub.py:tfds,paper``): ``tfds`` reads TFDS
``caltech_birds2011`` and holds out 10% of train for selection; the default reads the
wsolevaluation layout (metadata + images; val = CUBV2); ``paper`` selects on the test
set like the official code (best of the epochs after 25).

Official code: every parameter trained; AdamW (0.9, 0.999), eps 1e-8, wd 0.05 (no decay
on 1-D parameters, pos_embed, cls_token, loc_token, loc_embed), lr 1e-4 CONSTANT (its
cosine schedule is computed but never applied), 30 epochs, batch 256, drop-path 0.1, seed
6; train: resize 256×256 → random crop 224 → flip; loss CE + |mean area − 0.25| + norm
loss. Test: resize 256 → center crop 224 (here: the project's eval resize to 224), box of
the largest connected component at thresholds 0.3–0.45 (evaluator.py: 0.4, ten-crop
classification).
Paper / official README (DeiT-S, CUB test): Top-1 Loc 80.96, Top-5 Loc 94.13,
GT-known 98.45.
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/sat_cub.py:a,b``).
VARIANTS = ('tfds', 'paper', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "sat"
  c.seed = 6
  c.model.name = "deit_small_patch16_224"
  config_lib.set_cub_data(c, variants)
  c.data.image_size, c.data.resize_size = 224, 256
  c.optimizer.update(dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05))
  c.schedule.update(dict(name="constant"))
  c.training.update(dict(batch_size=256, num_epochs=30))
  c.sat.area_thr = 0.25
  config_lib.set_precision(c, variants)
  return c
