"""MNet and its weights."""
from .mnet import MNet
from .registry import REGISTRY, fetch_weights, list_weights, load_named
from .weights import WeightsError, load_model, resolve_device, save_checkpoint

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
]
