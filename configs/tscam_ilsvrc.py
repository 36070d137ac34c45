"""TS-CAM (DeiT-S) on ILSVRC-2012 — the official recipe (vasgaowei/TS-CAM train_val_ilsvrc.sh).

  python -m weights_convert.timm --model deit_small_patch16_224 \
      --hf-repo timm/deit_small_patch16_224.fb_in1k --out ckpt/deit_s
  python -m wsol_jax.train --config configs/tscam_ilsvrc.py --workdir runs/tscam_ilsvrc \
      --config.model.pretrained=ckpt/deit_s

Data: the wsolevaluation layout (train = ILSVRC train, val = ImageNetV2 for selection,
test = ILSVRC val with its boxes). Variant ``paper`` selects on the test split.
Official code: AdamW, wd 0.05, lr 5e-4, steps [10, 12] (×0.1 at epochs 10, 12, 20),
20 epochs, batch 256 (the paper says 12 epochs), CAM_THR 0.12.
Paper (Table 2, DeiT-S, ILSVRC val): Top-1 Loc 53.4, Top-5 Loc 64.3, GT-known 67.6,
Cls 74.3 / 92.1.
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/tscam_ilsvrc.py:a,b``).
VARIANTS = ('paper', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "tscam"
  c.seed = 26
  c.model.name = "deit_small_patch16_224"
  config_lib.set_ilsvrc_data(c, variants)
  c.optimizer.update(dict(name="adamw", lr=5e-4, weight_decay=0.05))
  c.schedule.update(dict(name="step", steps=(10, 12), factor=0.1))
  c.training.update(dict(batch_size=256, num_epochs=20))
  c.eval.cam_threshold = 0.12
  c.checkpoint.every_steps = 2000
  config_lib.set_precision(c, variants)
  return c
