"""SCM (DeiT-S) on CUB-200-2011 — the official recipe (hbai98/SCM, configs/CUB/deit_scm_small).

  python -m weights_convert.timm --model deit_small_patch16_224 \
      --hf-repo timm/deit_small_patch16_224.fb_in1k --out ckpt/deit_s
  python -m wsol_jax.train --config configs/scm_cub.py --workdir runs/scm_cub \
      --config.model.pretrained=ckpt/deit_s

TS-CAM plus 4 Activation Diffusion Blocks (training only; Newton–Schulz α=0.002 with
16 iterations in the first block and 4 in the others, learnable λ=1 and β=0.5 init).
Variants: ``tfds`` (TFDS caltech_birds2011, 10% of train held out), ``paper`` (select on
test like the official code), ``appendix`` (the paper's CUBV2 protocol: 50 epochs,
batch 32), ``p4`` (the paper's 4 Newton–Schulz iterations in every block).
Official code: AdamW (0.9, 0.999), wd 0.05, lr 5e-5, 30 epochs, ×0.1 at epoch 30, batch 16
(README example 256), drop-path 0.1, seed 26.
Paper (Table 1, DeiT-S, CUB test): Top-1 Loc 76.4, Top-5 Loc 91.6, GT-known 96.6,
Cls 78.5 / 94.5; appendix (selected on CUBV2): MaxBoxAccV1 96.6, MaxBoxAccV2 89.9.
Variant ``bf16``: bfloat16 compute with float32 parameters (GPUs/TPUs; README "GPUs and TPUs").
"""
from wsol_jax import config_lib

# The variants ``get_config(arg)`` accepts (``--config configs/scm_cub.py:a,b``).
VARIANTS = ('tfds', 'paper', 'appendix', 'p4', 'bf16')


def get_config(arg=None):
  variants = config_lib.parse_arg(arg)
  c = config_lib.base_config()
  c.method = "scm"
  c.seed = 26
  c.model.name = "deit_small_patch16_224"
  config_lib.set_cub_data(c, variants)
  c.optimizer.update(dict(name="adamw", lr=5e-5, weight_decay=0.05))
  c.schedule.update(dict(name="step", steps=(30,), factor=0.1))
  c.training.update(dict(batch_size=16, num_epochs=30))
  if "appendix" in variants:
    c.training.update(dict(batch_size=32, num_epochs=50))
  if "p4" in variants:
    c.scm.iterations = (4, 4, 4, 4)
  c.eval.cam_threshold = 0.1
  config_lib.set_precision(c, variants)
  return c
