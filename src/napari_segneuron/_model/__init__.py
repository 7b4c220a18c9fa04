"""MNet and its weights."""
from .mnet import MNet
from .registry import REGISTRY, fetch_weights, list_weights, load_named
from .weights import WeightsError, load_model, resolve_device, save_checkpoint
from .vit3d import ViT3DSeg, build_vit3d, inflate_patch_embedding, inflate_vit_state_dict, load_vit3d, save_vit3d

__all__ = [
    "MNet",
    "REGISTRY",
    "WeightsError",
    "fetch_weights",
    "list_weights",
    "load_model",
    "load_named",
    "resolve_device",
    "save_checkpoint",
    "ViT3DSeg",
    "build_vit3d",
    "inflate_patch_embedding",
    "inflate_vit_state_dict",
    "load_vit3d",
    "save_vit3d",
]
