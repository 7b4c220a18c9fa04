"""Write a label volume as an OME-Zarr (NGFF 0.4) multiscale group, downsampled by striding."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..atomic import atomic_output
from ..io import InputError
from . import checked_labels

CHUNKS = (32, 256, 256)


def pyramid(volume: np.ndarray, levels: int, factor: tuple[int, int, int]) -> list[np.ndarray]:
    """Levels by striding (keeps label ids exact: no averaging). Stops when an axis would vanish."""
    out = [volume]
    while len(out) < levels:
        prev = out[-1]
        nxt = prev[:: factor[0], :: factor[1], :: factor[2]]
        if nxt.shape == prev.shape:
            break
        out.append(np.ascontiguousarray(nxt))
    return out


def _multiscales(name: str, voxel_nm: Sequence[float], factor: tuple[int, int, int], n: int) -> list[dict]:
    datasets = []
    for level in range(n):
        scale = [float(v) * (f ** level) for v, f in zip(voxel_nm, factor)]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    return [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets, "type": "stride"}]


def _write_levels(group, levels: list[np.ndarray]) -> None:
    for i, arr in enumerate(levels):
        chunks = tuple(min(s, c) for s, c in zip(arr.shape, CHUNKS))
        z = group.create_array(str(i), shape=arr.shape, dtype=arr.dtype, chunks=chunks, fill_value=0,
                               chunk_key_encoding={"name": "v2", "separator": "/"})
        z[...] = arr


def write_ome_zarr(
    path: Union[str, Path],
    labels: np.ndarray,
    voxel_nm: Sequence[float] = (1.0, 1.0, 1.0),
    image: Optional[np.ndarray] = None,
    levels: int = 3,
    factor: tuple[int, int, int] = (1, 2, 2),
    overwrite: bool = False,
) -> Path:
    """Write ``labels`` (z, y, x) as NGFF: at the root alone, or under ``labels/segmentation`` beside ``image``."""
    import zarr

    path, labels = checked_labels(path, labels, overwrite)
    if image is not None and np.shape(image) != labels.shape:
        raise InputError(f"image {np.shape(image)} and labels {labels.shape} differ in shape")
    levels = max(2, levels)
    with atomic_output(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        lab_levels = pyramid(labels, levels, factor)
        if image is None:
            group = root
        else:
            img_levels = pyramid(np.asarray(image), levels, factor)
            _write_levels(root, img_levels)
            root.attrs["multiscales"] = _multiscales("image", voxel_nm, factor, len(img_levels))
            lab_root = root.create_group("labels")
            lab_root.attrs["labels"] = ["segmentation"]
            group = lab_root.create_group("segmentation")
        _write_levels(group, lab_levels)
        group.attrs["multiscales"] = _multiscales("segmentation", voxel_nm, factor, len(lab_levels))
        group.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"} if image is not None else {}}
        group.attrs["voxel_size_nm"] = [float(v) for v in voxel_nm]
    return path
