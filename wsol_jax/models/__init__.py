"""Models: ViT/DeiT and ResNet-50 as pure Flax functions returning ``(logits, aux)``."""
from wsol_jax.models.pretrained import load_pretrained, model_from_meta, read_meta, save_pretrained
from wsol_jax.models.registry import MODELS, create_model, get_spec, model_kwargs
from wsol_jax.models.resnet import ResNet
from wsol_jax.models.vit import VisionTransformer

__all__ = [
    "MODELS", "ResNet", "VisionTransformer", "create_model", "get_spec", "load_pretrained",
    "model_from_meta", "model_kwargs", "read_meta", "save_pretrained",
]
