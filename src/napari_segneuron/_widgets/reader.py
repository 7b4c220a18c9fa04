"""npe2 reader hooks. zarr: SegNeuron's outputs (labels and predictions), any zarr array and
OME-Zarr multiscale groups, all opened lazily (dask arrays: nothing is read until displayed).
SWC: a tracing as a Shapes layer of unbranched paths, radii kept in ``metadata['swc_radius']``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..swc import radius_key, swc_to_paths


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


def _multiscale_paths(node) -> Optional[list[str]]:
    """The dataset paths of an OME-Zarr ``multiscales`` group (finest first), else None."""
    attrs = dict(node.attrs)
    ms = attrs.get("multiscales") or dict(attrs.get("ome") or {}).get("multiscales")
    if not ms:
        return None
    paths = [str(d.get("path")) for d in (ms[0].get("datasets") or []) if isinstance(d, dict) and "path" in d]
    return paths or None


def _is_plain_zarr(path: Path) -> bool:
    """A zarr array, or an OME-Zarr multiscale group."""
    if not path.is_dir():
        return False
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:
        return False
    if hasattr(node, "shape") and hasattr(node, "dtype"):
        return True
    return _multiscale_paths(node) is not None


def get_reader(path: Any) -> Optional[Callable]:
    if isinstance(path, (list, tuple)):
        return None
    p = Path(str(path).rstrip("/"))
    if not (_is_segneuron_zarr(p) or _is_plain_zarr(p)):
        return None
    return read_zarr


def _lazy(arr):
    """A zarr array as a dask array chunked like it (nothing read)."""
    import dask.array as da

    return da.from_zarr(arr) if hasattr(arr, "store") else da.asarray(arr)


def _read_multiscale(p: Path, node, paths: list[str], md: dict) -> list:
    levels = [_lazy(node[k]) for k in paths]
    kind = _kind(levels[0].dtype, False)
    kwargs: dict[str, Any] = {"name": p.stem, "metadata": md, "multiscale": len(levels) > 1}
    ms = (dict(node.attrs).get("multiscales") or dict(node.attrs.get("ome") or {}).get("multiscales"))[0]
    for transform in (ms["datasets"][0].get("coordinateTransformations") or []):
        if transform.get("type") == "scale" and len(transform.get("scale", [])) == levels[0].ndim:
            kwargs["scale"] = tuple(float(v) for v in transform["scale"])
    return [(levels if len(levels) > 1 else levels[0], kwargs, kind)]


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
    """Layers of a zarr path, backed by dask arrays (lazy: large volumes are never read whole)."""
    from .. import io

    p = Path(str(path).rstrip("/"))
    attrs = _attrs(p)
    attrs = dict(attrs.get("napari_segneuron", attrs))
    md = {"segneuron": attrs.get("segneuron", attrs), "source_path": str(p)}
    import zarr

    node = zarr.open(str(p), mode="r")
    keys = set(node.keys()) if hasattr(node, "keys") else set()
    paths = None if hasattr(node, "shape") else _multiscale_paths(node)
    if paths and not ({"affinities", "foreground"} <= keys):
        return _read_multiscale(p, node, paths, md)
    if {"affinities", "foreground"} <= keys:
        aff, fg = _lazy(node["affinities"]), _lazy(node["foreground"])
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
    data = _lazy(data)
    geo = _geometry(attrs, data.ndim)
    if "scale" not in geo and voxel_size is not None and len(voxel_size) == data.ndim:
        geo["scale"] = tuple(float(v) for v in voxel_size)
    name = attrs.get("name") or p.stem
    return [(data, {"name": str(name), "metadata": md, **geo}, _kind(data.dtype, _is_segneuron_zarr(p)))]


def _kind(dtype, ours: bool) -> str:
    """Our integer arrays are labels; a foreign array is labels only when its integers are 32
    bits or wider (uint8/uint16 is an EM image)."""
    if dtype.kind == "b" or (dtype.kind in "iu" and (ours or dtype.itemsize >= 4)):
        return "labels"
    return "image"


# -- SWC tracings as Shapes path layers ------------------------------------------------
def swc_layer_data(nodes: np.ndarray, scale: Sequence[float] = (1.0, 1.0, 1.0), name: str = "SWC") -> tuple:
    """A napari layer-data tuple (paths, kwargs, "shapes") for SWC ``nodes`` (physical units),
    drawn in voxel units with ``scale`` = the image's (z, y, x) voxel size."""
    paths = swc_to_paths(nodes, scale)
    zyx = np.asarray(nodes, dtype=np.float64)[:, [4, 3, 2]] / np.asarray(scale, dtype=np.float64) if len(nodes) else []
    radius = {radius_key(v): float(r) for v, r in zip(zyx, np.asarray(nodes)[:, 5])} if len(nodes) else {}
    kwargs = {"name": name, "shape_type": "path", "edge_color": "yellow", "edge_width": 1.0,
              "scale": tuple(float(s) for s in scale), "metadata": {"swc_radius": radius}}
    return paths, kwargs, "shapes"


def get_swc_reader(path: Any) -> Optional[Callable]:
    if isinstance(path, (list, tuple)) or not str(path).lower().endswith(".swc"):
        return None
    return read_swc_layer


def read_swc_layer(path: Any) -> list[tuple]:
    from ..io import read_swc

    nodes = read_swc(path)
    return [swc_layer_data(nodes, name=Path(str(path)).stem)]
