"""SCM (DeiT-S) on ILSVRC-2012 — the official recipe (hbai98/SCM, configs/ILSVRC/deit_scm_small).

  python -m weights_convert.timm --model deit_small_patch16_224 \
      --hf-repo timm/deit_small_patch16_224.fb_in1k --out ckpt/deit_s
  python -m wsol_jax.train --config configs/scm_ilsvrc.py --workdir runs/scm_ilsvrc \
      --config.model.pretrained=ckpt/deit_s

Data: wsolevaluation layout (val = ImageNetV2 for selection). Variant ``paper`` selects
on the test split. Official code: lr 1e-6 (README, paper), batch 512, 20 epochs,
steps [10, 12], CAM_THR 0.12.
Paper (Table 1, DeiT-S, ILSVRC val): Top-1 Loc 56.1, Top-5 Loc 66.4, GT-known 68.8,
Cls 76.7 / 93.0.
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/scm_ilsvrc.py:a,b``).
VARIANTS = ('paper', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "scm"
  c.seed = 26
  c.model.name = "deit_small_patch16_224"
  config_lib.set_ilsvrc_data(c, variants)
  c.optimizer.update(dict(name="adamw", lr=1e-6, weight_decay=0.05))
  c.schedule.update(dict(name="step", steps=(10, 12), factor=0.1))
  c.training.update(dict(batch_size=512, num_epochs=20))
  c.eval.cam_threshold = 0.12
  c.checkpoint.every_steps = 2000
  config_lib.set_precision(c, variants)
  return c
