"""SAT (DeiT-S) on ILSVRC-2012 — the official recipe (wpy1999/SAT ``train_ImageNet.py``).

  python -m weights_convert.timm --model deit_small_patch16_224 \
      --hf-repo timm/deit_small_patch16_224.fb_in1k --out ckpt/deit_s
  python -m wsol_jax.train --config configs/sat_ilsvrc.py --workdir runs/sat_ilsvrc \
      --config.model.pretrained=ckpt/deit_s

Data: the wsolevaluation layout (train = ILSVRC train, val = ImageNetV2 for selection,
test = ILSVRC val with its boxes). Variant ``paper`` selects on the test split.
Official code: every parameter trained; AdamW, wd 0.05 (no decay on 1-D parameters,
pos_embed, cls/loc tokens, loc_embed), lr 1.5e-5 CONSTANT (the computed cosine schedule is
never applied), ONE epoch (``epochs=5`` but the loop breaks after the first: "1 epoch is
enough"), batch 512 (4 GPUs × 128, DDP), drop-path 0.1, seed 6 (+ rank), area_thr 0.35;
train transforms as CUB. Test: resize 256 → center crop 224 (here: resize 224), threshold
0.3 (evaluator_ImageNet.py), no ten-crop.
Paper / official README (DeiT-S, ILSVRC val): Top-1 Loc 60.15, Top-5 Loc 70.52,
GT-known 73.13.
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/sat_ilsvrc.py:a,b``).
VARIANTS = ('paper', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "sat"
  c.seed = 6
  c.model.name = "deit_small_patch16_224"
  config_lib.set_ilsvrc_data(c, variants)
  c.data.image_size, c.data.resize_size = 224, 256
  c.optimizer.update(dict(name="adamw", lr=1.5e-5, weight_decay=0.05))
  c.schedule.update(dict(name="constant"))
  c.training.update(dict(batch_size=512, num_epochs=1))
  c.sat.area_thr = 0.35
  c.checkpoint.every_steps = 2000
  config_lib.set_precision(c, variants)
  return c
