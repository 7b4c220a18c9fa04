"""npe2 writer hooks: a labels layer as tif or zarr through ``io.write_labels``; a Shapes layer of paths as SWC.

The file keeps the layer's provenance (``layer.metadata['segneuron']``), scale and
translate. napari's save dialog already asked before replacing an existing file, so
this hook replaces; the SegNeuron dock's Export button asks on its own before calling it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..swc import paths_to_swc


def layer_file_metadata(meta: dict) -> dict:
    """The metadata to store next to the labels: provenance plus geometry."""
    out: dict[str, Any] = {}
    layer_md = meta.get("metadata") or {}
    prov = layer_md.get("segneuron")
    if prov:
        out["segneuron"] = prov
    for key in ("name", "scale", "translate"):
        if meta.get(key) is not None:
            value = meta[key]
            out[key] = [float(v) for v in value] if key != "name" else str(value)
    return out


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    from .. import io

    io.write_labels(path, data, metadata=layer_file_metadata(meta), overwrite=True)
    return [str(path)]


def write_swc_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Shapes layer's paths (world units = data * scale) as SWC."""
    from ..io import write_swc

    scale = tuple(float(s) for s in (meta.get("scale") or (1.0, 1.0, 1.0))[-3:])
    paths = [np.asarray(p)[:, -3:] for p in data]
    radius = (meta.get("metadata") or {}).get("swc_radius") or {}
    nodes = paths_to_swc(paths, scale, radius)
    write_swc(path, nodes, header=f"written by napari-segneuron from layer {meta.get('name', '')}")
    return [str(path)]
