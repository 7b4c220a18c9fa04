"""MNet and its weights."""
from .mnet import MNet
from .registry import REGISTRY, download, fetch_weights, list_weights
from .weights import WeightsError, load_model, resolve_device, save_checkpoint

__all__ = [
    "MNet",
    "REGISTRY",
    "WeightsError",
    "download",
    "fetch_weights",
    "list_weights",
    "load_model",
    "resolve_device",
    "save_checkpoint",
]
