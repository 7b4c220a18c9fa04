"""The dock's path for large, lazy volumes: blockwise Predict and Segment, lazy results.

An image layer whose data is a dask or zarr array larger than ``LARGE_VOXELS`` is predicted
with ``distributed.predict_blockwise`` and segmented with ``segmentation.segment_blockwise``
in this process (blocks one after the other: progress "predict: block 3/12", Cancel between
blocks). Both write zarr groups under ``work_dir()``; the layers show dask arrays over them,
and the merge slider installs a new lazy dask array per threshold (``lazy_labels``): napari
computes only the chunks on screen, so an update costs the same at any volume size.
No Qt here: the dock (``segment.py``) calls these from its worker thread.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

#: a lazy (dask/zarr) image above this many voxels goes through the blockwise path
LARGE_VOXELS = 256 * 2**20
#: blocks of the blockwise prediction and segmentation (None: the core's defaults,
#: 64x256x256 for both); tests lower them to get several blocks on a tiny volume
PREDICT_BLOCK: Optional[tuple[int, int, int]] = None
SEGMENT_BLOCK: Optional[tuple[int, int, int]] = None
#: where the prediction and fragment zarr groups go (None: a new temporary folder per dock;
#: the environment variable SEGNEURON_LARGE_DIR overrides it)
WORK_DIR: Optional[str] = None


def is_lazy(data: Any) -> bool:
    """A dask or zarr array (not held in memory)."""
    if isinstance(data, np.ndarray):
        return False
    module = type(data).__module__
    return module.startswith("dask") or module.startswith("zarr")


def is_large(data: Any) -> bool:
    """Lazy and larger than ``LARGE_VOXELS``: the dock goes blockwise."""
    return is_lazy(data) and int(np.prod([int(s) for s in data.shape])) > LARGE_VOXELS


def work_dir() -> Path:
    """A fresh folder for one run's zarr groups."""
    base = os.environ.get("SEGNEURON_LARGE_DIR") or WORK_DIR
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="segneuron-large-", dir=base))


def _lazy(arr: Any):
    import dask.array as da

    return da.from_zarr(arr) if hasattr(arr, "store") else da.asarray(arr)


def predict_large(predictor: Any, settings: dict, volume: Any, output: Path, progress=None, cancel=None):
    """Predict ``volume`` (Z,Y,X, lazy) block by block with the dock's ``predictor`` and its
    ``settings`` (tile, overlap, batch_size, device, half, tta) into the zarr group ``output``;
    returns (affinities, foreground) as dask arrays over it. The predictor is handed to the
    core's per-process model cache, so no weights are loaded from disk."""
    from .. import distributed
    from ..tta import tta_mode

    tile = tuple(int(t) for t in settings["tile"])
    overlap = tuple(int(o) for o in settings["overlap"])
    device = None if settings.get("device") in (None, "auto") else str(settings["device"])
    weights = f"napari-dock-model-{id(predictor.model)}"
    # the cache key predict_blockwise computes for these settings
    cached = dict(weights=weights, tile=tile, overlap=overlap, batch_size=settings.get("batch_size"), device=device,
                  half=bool(settings.get("half")), tta=tta_mode(settings.get("tta")), threads=None, blend=None,
                  model_voxel_size=None)
    key = tuple(sorted((k, repr(v)) for k, v in cached.items()))
    distributed._PREDICTORS.clear()
    distributed._PREDICTORS[key] = predictor
    try:
        distributed.predict_blockwise(
            volume, str(output), weights=weights, block=PREDICT_BLOCK or distributed.DEFAULT_BLOCK, tile=tile,
            overlap=overlap, batch_size=cached["batch_size"], device=device, half=cached["half"], tta=cached["tta"],
            overwrite=True, progress=progress, cancel=cancel)
    finally:
        distributed._PREDICTORS.clear()
    import zarr

    root = zarr.open_group(str(output), mode="r")
    return _lazy(root["affinities"]), _lazy(root["foreground"])


def segment_large(affinities: Any, foreground: Any, output: Path, settings: dict, max_threshold: float,
                  progress=None, cancel=None):
    """Blockwise segmentation with one global merge graph into the zarr group ``output``;
    returns the ``Agglomeration`` (its fragments stay on disk)."""
    from ..segmentation.blockwise import DEFAULT_SEG_BLOCK, segment_blockwise

    return segment_blockwise(
        affinities, foreground, str(output), block=SEGMENT_BLOCK or DEFAULT_SEG_BLOCK,
        fg_threshold=settings["fg_threshold"], min_size=settings["min_size"], scoring=settings["scoring"],
        membrane_fill=settings["membrane_fill"],
        max_threshold=max_threshold, overwrite=True, progress=progress, cancel=cancel)


def lazy_labels(agglomeration: Any, threshold: float, min_size: Optional[int] = None):
    """``agglomeration.labels(threshold)`` as a dask array: one lookup table (global, small)
    applied chunk by chunk when napari reads a chunk."""
    import dask.array as da

    frag = agglomeration.fragments
    arr = da.from_zarr(frag) if hasattr(frag, "store") else da.asarray(frag)
    lut = agglomeration.lookup_table(threshold, min_size=min_size)
    return arr.map_blocks(lambda f: lut[f], dtype=np.uint32)


def open_prediction(path: str):
    """A prediction zarr group's (affinities, foreground) as dask arrays (nothing read)."""
    import zarr

    from ..io import InputError

    root = zarr.open_group(str(path), mode="r")
    if "affinities" not in root or "foreground" not in root:
        raise InputError(f"{path} has no 'affinities' and 'foreground' arrays; is it a prediction?")
    return _lazy(root["affinities"]), _lazy(root["foreground"])
