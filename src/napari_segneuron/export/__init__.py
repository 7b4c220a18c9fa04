"""Export label volumes for sharing: OME-Zarr (NGFF) and Neuroglancer precomputed."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np

from ..io import InputError


def checked_labels(path: Union[str, Path], labels: Any, overwrite: bool) -> tuple[Path, np.ndarray]:
    """The output path and ``labels`` as a 3D non-negative integer array; refuses to replace
    an existing output unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite to replace it")
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "iu":
        raise InputError(f"labels must be a 3D integer volume, got {labels.shape} {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputError("labels must be non-negative")
    return path, labels
