"""Loading and saving MNet weights: official checkpoints, user checkpoints, our bundled model.

``load_model`` accepts what people actually have on disk: the released SegNeuron
checkpoint (state dict under ``model_weights``, keys prefixed ``module.``), a bare
state dict, or a dict holding it under ``model_state_dict``, ``state_dict`` or
``model``. The architecture (``kn``, ``in_channels``, and ``cat`` vs ``sub``/``sum``
merging) is read off the tensor shapes, so no config file is needed. ``sub`` and
``sum`` have identical shapes: they are told apart only by ``metadata['fmu']``
when present, otherwise ``sub`` (the released model) is assumed.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..atomic import atomic_output
from .info import ModelInfo
from .mnet import MNet

STATE_DICT_KEYS = ("model_weights", "model_state_dict", "state_dict", "model")
_FIRST_CONV = "down11.CB2d.conv1.conv.weight"
_LEVEL_CONVS = (
    "down11.CB2d.conv1.conv.weight",
    "down12.CB2d.conv1.conv.weight",
    "down13.CB2d.conv1.conv.weight",
    "down14.CB2d.conv1.conv.weight",
    "bottleneck1.CB2d.conv1.conv.weight",
)
PathLike = Union[str, os.PathLike]


class WeightsError(ValueError):
    """A weights file that cannot be used; the message says why and what to do."""


def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _read_checkpoint(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` and clear errors.  ``mmap=True`` maps the tensors
    instead of reading them (for metadata-only reads of large checkpoints; zip archives only)."""
    if not path.exists():
        raise WeightsError(f"Weights file not found: {path}")
    if path.is_dir():
        raise WeightsError(f"Expected a weights file but {path} is a folder")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic not in (b"PK", b"\x80\x02") and not magic.startswith(b"\x80"):
        # torch.save writes a zip archive; very old files are raw pickles (protocol >= 2)
        raise WeightsError(f"{path.name} is not a readable PyTorch checkpoint (no zip or pickle header)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=bool(mmap) and magic == b"PK")
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path.name} contains Python objects that would need code execution to load; "
            "for safety only plain weights are accepted. Re-save it as a state dict "
            "(torch.save(model.state_dict(), path))."
            f" Details: {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:  # torch raises many types for garbage input
        raise WeightsError(
            f"{path.name} is not a readable PyTorch checkpoint (truncated or not a checkpoint): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from None


def extract_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], dict]:
    """Return ``(state_dict without 'module.' prefixes, metadata)`` from a loaded checkpoint."""
    if not isinstance(obj, Mapping):
        raise WeightsError(f"Checkpoint holds a {type(obj).__name__}, not a dictionary of weights")
    metadata = dict(obj.get("metadata") or {}) if isinstance(obj.get("metadata"), Mapping) else {}
    sd = obj
    for key in STATE_DICT_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            sd = obj[key]
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(
            "No weight tensors found; expected a state dict or a dict with one of the keys "
            + ", ".join(STATE_DICT_KEYS)
        )
    cleaned = {}
    for k, v in tensors.items():
        name = k[len("module."):] if k.startswith("module.") else k
        cleaned[name] = v.float() if v.is_floating_point() else v
    return cleaned, metadata


def infer_architecture(sd: Mapping[str, torch.Tensor], metadata: Optional[Mapping] = None) -> dict:
    """Read ``in_channels``, ``kn`` and ``fmu`` off the tensor shapes."""
    missing = [k for k in _LEVEL_CONVS if k not in sd]
    if missing:
        raise WeightsError(
            "These weights are not an MNet (SegNeuron) model: missing "
            + ", ".join(missing[:3])
            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        )
    kn = tuple(int(sd[k].shape[0]) for k in _LEVEL_CONVS)
    in_channels = int(sd[_FIRST_CONV].shape[1])
    merged = sd.get("down22.CB2d.conv1.conv.weight")
    if merged is not None and int(merged.shape[1]) == 2 * kn[1]:
        fmu = "cat"
    else:
        fmu = str((metadata or {}).get("fmu", "sub"))
        if fmu == "cat":
            fmu = "sub"
    return {"in_channels": in_channels, "kn": kn, "fmu": fmu}


def _describe_mismatch(model: MNet, sd: Mapping[str, torch.Tensor]) -> str:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = [
        f"{k} {tuple(sd[k].shape)} vs expected {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(sd))
        if tuple(own[k].shape) != tuple(sd[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        if items:
            shown = ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    return "; ".join(parts)


def model_from_state_dict(sd: Mapping[str, torch.Tensor], metadata: Optional[Mapping] = None) -> MNet:
    """Build an MNet matching ``sd`` and load it strictly."""
    arch = infer_architecture(sd, metadata)
    model = MNet(**arch)
    problem = _describe_mismatch(model, sd)
    if problem:
        raise WeightsError(f"Weights do not match MNet{arch['kn']}: {problem}")
    model.load_state_dict(sd, strict=True)
    return model


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``None``/"auto" picks cuda, then mps, then cpu; an unavailable choice is an error."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WeightsError("CUDA was requested but no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise WeightsError("MPS was requested but is not available on this machine; use --device cpu")
    return dev


def load_model(path: PathLike, device: Optional[Union[str, torch.device]] = None, name: Optional[str] = None) -> MNet:
    """Load an MNet checkpoint in eval mode; ``model.info`` says what was loaded."""
    path = Path(path).expanduser()
    obj = _read_checkpoint(path)
    sd, metadata = extract_state_dict(obj)
    model = model_from_state_dict(sd, metadata)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    model.info = ModelInfo(
        name=name or metadata.get("name") or path.stem,
        path=str(path),
        sha256=sha256_of(path),
        kn=model.kn,
        fmu=model.fmu,
        in_channels=model.in_channels,
        n_parameters=sum(p.numel() for p in model.parameters()),
        device=str(dev),
        voxel_size_nm=metadata.get("voxel_size_nm"),
        fg_threshold=metadata.get("fg_threshold"),
        neurite_halfwidth=metadata.get("neurite_halfwidth"),
        iters=int(obj.get("iters", 0)) if isinstance(obj, Mapping) and isinstance(obj.get("iters", 0), int) else 0,
        metadata=metadata,
    )
    return model


def save_checkpoint(
    model_or_state_dict: Union[torch.nn.Module, Mapping[str, torch.Tensor]],
    path: PathLike,
    iters: int = 0,
    metadata: Optional[Mapping] = None,
    half: bool = False,
) -> Path:
    """Write ``{'model_weights': sd, 'iters': n, 'metadata': {...}}`` atomically.

    The official code reads ``checkpoint['model_weights']`` and ignores the rest.
    ``half=True`` stores floating tensors as fp16 (``load_model`` casts back).
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        sd = model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, MNet):
            metadata = {"kn": list(model_or_state_dict.kn), "fmu": model_or_state_dict.fmu, **(metadata or {})}
    else:
        sd = dict(model_or_state_dict)
    sd = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu()).clone()
        for k, v in sd.items()
    }
    payload = {"model_weights": sd, "iters": int(iters), "metadata": dict(metadata or {})}
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path
