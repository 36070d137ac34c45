"""Models: every Flax module and numeric block, as pure functions returning ``(logits, aux)``.

ViT/DeiT (``vit``), ResNet-50 (``resnet``), SCM's Activation Diffusion Blocks and the ViT
that runs them (``scm_adb``), SAT's spatial-token ViT (``sat``), RFGA's module and network
(``rfga``), ViTOL's p-ADL (``padl``). Backend-neutral: plain XLA ops unless an implementation is injected through
a model field (``registry.INJECTED``).
"""
from wsol_jax.models.pretrained import load_pretrained, model_from_meta, read_meta, save_pretrained
from wsol_jax.models.registry import MODELS, create_model, get_spec, model_kwargs
from wsol_jax.models.resnet import ResNet
from wsol_jax.models.rfga import RfgaResNet
from wsol_jax.models.scm_adb import ScmVisionTransformer
from wsol_jax.models.vit import VisionTransformer

__all__ = [
    "MODELS", "ResNet", "RfgaResNet", "ScmVisionTransformer", "VisionTransformer", "create_model",
    "get_spec", "load_pretrained", "model_from_meta", "model_kwargs", "read_meta",
    "save_pretrained",
]
