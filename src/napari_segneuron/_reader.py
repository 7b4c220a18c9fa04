"""npe2 reader hook for the zarr outputs SegNeuron writes (labels and predictions)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional


def _attrs(path: Path) -> dict:
    import zarr

    try:
        return dict(zarr.open(str(path), mode="r").attrs)
    except Exception:
        return {}


def _is_segneuron_zarr(path: Path) -> bool:
    if not (path.is_dir() and path.suffix == ".zarr"):
        return False
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:
        return False
    attrs = dict(node.attrs)
    if any("segneuron" in str(k).lower() for k in attrs) or "segneuron" in str(attrs).lower():
        return True
    keys = set(node.keys()) if hasattr(node, "keys") else set()
    return {"affinities", "foreground"} <= keys


def get_reader(path: Any) -> Optional[Callable]:
    if isinstance(path, (list, tuple)):
        return None
    p = Path(str(path).rstrip("/"))
    if not _is_segneuron_zarr(p):
        return None
    return read_zarr


def _geometry(attrs: dict, ndim: int) -> dict:
    kwargs: dict[str, Any] = {}
    for key in ("scale", "translate"):
        value = attrs.get(key)
        if value is not None and len(value) == ndim:
            kwargs[key] = tuple(float(v) for v in value)
    if "scale" not in kwargs:
        vs = attrs.get("voxel_size_nm")
        if vs is not None and len(vs) == ndim:
            kwargs["scale"] = tuple(float(v) for v in vs)
    return kwargs


def read_zarr(path: Any) -> list:
    from . import io

    p = Path(str(path).rstrip("/"))
    attrs = _attrs(p)
    attrs = dict(attrs.get("napari_segneuron", attrs))
    md = {"segneuron": attrs.get("segneuron", attrs), "source_path": str(p)}
    import zarr

    node = zarr.open(str(p), mode="r")
    keys = set(node.keys()) if hasattr(node, "keys") else set()
    if {"affinities", "foreground"} <= keys:
        aff, fg = io.read_prediction(p)
        geo = _geometry(attrs, fg.ndim)
        return [
            (fg, {"name": f"{p.stem} foreground", "metadata": md, "colormap": "magma", **geo}, "image"),
            (
                aff,
                {
                    "name": f"{p.stem} affinities",
                    "metadata": md,
                    "channel_axis": 0,
                    "visible": False,
                    **geo,
                },
                "image",
            ),
        ]
    data, voxel_size = io.read_volume(p)
    geo = _geometry(attrs, data.ndim)
    if "scale" not in geo and voxel_size is not None and len(voxel_size) == data.ndim:
        geo["scale"] = tuple(float(v) for v in voxel_size)
    name = attrs.get("name") or p.stem
    kind = "labels" if data.dtype.kind in "iub" else "image"
    return [(data, {"name": str(name), "metadata": md, **geo}, kind)]
