"""Checkpoint writing/reading for training: official layout, atomic, optimizer state beside it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..atomic import atomic_output
from .._model.weights import WeightsError, _read_checkpoint, extract_state_dict
from .data import TrainingInputError


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def load_weights_only(path) -> object:
    """``torch.load`` restricted to tensors and plain containers (never runs pickled code)."""
    return torch.load(str(path), map_location="cpu", weights_only=True)


def state_dict_of(model) -> dict:
    sd = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    return {k.replace("module.", "", 1) if k.startswith("module.") else k: v.detach().cpu().clone()
            for k, v in sd.items()}


def write_checkpoint(model, path, iters: int = 0, metadata: Optional[dict] = None,
                     optimizer_state: Optional[dict] = None, half: bool = False) -> Path:
    """Write ``{'model_weights', 'iters', 'metadata'}`` atomically; optimizer state goes to ``<path>.optim``.

    Uses the package's ``save_checkpoint`` when it exists so that every
    checkpoint in the project has the same layout.
    """
    path = Path(path)
    sd = state_dict_of(model)
    meta = dict(metadata or {})
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
        meta["dtype"] = "float16"
    saved = False
    try:
        from .._model import save_checkpoint  # type: ignore
        save_checkpoint(sd, path, iters=int(iters), metadata=meta)
        saved = True
    except ImportError:
        pass
    if not saved:
        _atomic_torch_save({"model_weights": sd, "iters": int(iters), "metadata": meta}, path)
    if optimizer_state is not None:
        _atomic_torch_save(optimizer_state, Path(str(path) + ".optim"))
    return path


def read_checkpoint(path) -> dict:
    """Read a checkpoint written here or by the official code; clear error if unusable."""
    path = Path(path)
    if not path.is_file():
        raise TrainingInputError(f"checkpoint {path} does not exist")
    try:
        ck = _read_checkpoint(path)
        sd, metadata = extract_state_dict(ck)
    except WeightsError as exc:
        raise TrainingInputError(f"cannot read checkpoint {path}: {exc}") from None
    iters = ck.get("iters", ck.get("current_iter", 0)) or 0
    return {"model_weights": sd, "iters": int(iters) if isinstance(iters, int) else 0, "metadata": metadata}


def read_optimizer_state(path) -> Optional[dict]:
    p = Path(str(path) + ".optim")
    if not p.is_file():
        return None
    try:
        return load_weights_only(p)
    except Exception:
        return None
