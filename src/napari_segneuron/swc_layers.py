"""SWC trees as napari Shapes "path" layers, the npe2 SWC reader/writer, and the LM sample stack.

Qt-free. A tree is split into unbranched paths (root or branch point -> next branch point
or tip); each becomes one path shape with (z, y, x) vertices. Radii travel in the
layer's metadata (``metadata['swc_radius']``: vertex coordinate -> radius) so a written
file keeps them.

Sample data: ``rivuletpy_lm_test.tif``, the test stack of github RivuletStudio/rivuletpy
(BSD-3 licence, Copyright (c) 2016, The University of Sydney; background zeroed by its
authors), 119 x 415 x 409 uint8, a 3D light-microscopy image of one neuron.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

DATA_DIR = Path(__file__).parent / "data"
LM_SAMPLE_PATH = DATA_DIR / "rivuletpy_lm_test.tif"
LM_CREDIT = ("rivuletpy test stack (github RivuletStudio/rivuletpy, BSD-3; "
             "Copyright (c) 2016, The University of Sydney)")


def swc_to_paths(nodes: np.ndarray, scale: Sequence[float] = (1.0, 1.0, 1.0)) -> list[np.ndarray]:
    """Unbranched (k, 3) paths of (z, y, x) = SWC (z, y, x) divided by ``scale``."""
    nodes = np.asarray(nodes, dtype=np.float64)
    if len(nodes) == 0:
        return []
    index = {int(i): k for k, i in enumerate(nodes[:, 0])}
    children: dict[int, list[int]] = {k: [] for k in range(len(nodes))}
    roots = []
    for k, p in enumerate(nodes[:, 6]):
        if p >= 0 and int(p) in index:
            children[index[int(p)]].append(k)
        else:
            roots.append(k)
    zyx = nodes[:, [4, 3, 2]] / np.asarray(scale, dtype=np.float64)
    paths = []
    starts = deque(roots)
    while starts:
        s = starts.popleft()
        if not children[s] and s in roots:  # a lone node
            paths.append(zyx[[s, s]])
        for c in children[s]:
            chain = [s, c]
            while len(children[chain[-1]]) == 1:
                chain.append(children[chain[-1]][0])
            if len(children[chain[-1]]) > 1:
                starts.append(chain[-1])
            paths.append(zyx[chain])
    return paths


def paths_to_swc(paths: Sequence[np.ndarray], scale: Sequence[float] = (1.0, 1.0, 1.0),
                 radius: Optional[dict] = None) -> np.ndarray:
    """SWC rows from (k, 3) (z, y, x) paths; vertices shared by paths (same coordinates) are
    merged, each connected set becomes one tree rooted at its first vertex."""
    radius = radius or {}
    key_of: dict[tuple, int] = {}
    coords: list[np.ndarray] = []
    adjacency: dict[int, set] = {}
    for path in paths:
        prev = None
        for v in np.asarray(path, dtype=np.float64):
            key = tuple(np.round(v, 4))
            if key not in key_of:
                key_of[key] = len(coords)
                coords.append(v)
                adjacency[key_of[key]] = set()
            k = key_of[key]
            if prev is not None and prev != k:
                adjacency[k].add(prev)
                adjacency[prev].add(k)
            prev = k
    sz, sy, sx = (float(s) for s in scale)
    rows, new_id = [], {}
    for start in range(len(coords)):
        if start in new_id:
            continue
        queue, parent = deque([start]), {start: -1}
        while queue:
            u = queue.popleft()
            new_id[u] = len(rows) + 1
            z, y, x = coords[u]
            r = float(radius.get(_radius_key(coords[u]), 1.0))
            rows.append([new_id[u], 1 if parent[u] < 0 else 3, x * sx, y * sy, z * sz, r,
                         -1 if parent[u] < 0 else new_id[parent[u]]])
            for v in sorted(adjacency[u]):
                if v not in parent:
                    parent[v] = u
                    queue.append(v)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


def _radius_key(zyx) -> str:
    return ",".join(f"{c:.4f}" for c in zyx)


def swc_layer_data(nodes: np.ndarray, scale: Sequence[float] = (1.0, 1.0, 1.0), name: str = "SWC") -> tuple:
    """A napari layer-data tuple (paths, kwargs, "shapes") for SWC ``nodes`` (physical units),
    drawn in voxel units with ``scale`` = the image's (z, y, x) voxel size."""
    paths = swc_to_paths(nodes, scale)
    zyx = np.asarray(nodes, dtype=np.float64)[:, [4, 3, 2]] / np.asarray(scale, dtype=np.float64) if len(nodes) else []
    radius = {_radius_key(v): float(r) for v, r in zip(zyx, np.asarray(nodes)[:, 5])} if len(nodes) else {}
    kwargs = {"name": name, "shape_type": "path", "edge_color": "yellow", "edge_width": 1.0,
              "scale": tuple(float(s) for s in scale), "metadata": {"swc_radius": radius}}
    return paths, kwargs, "shapes"


# -- npe2 hooks ---------------------------------------------------------------------------
def get_swc_reader(path: Any) -> Optional[Callable]:
    if isinstance(path, (list, tuple)) or not str(path).lower().endswith(".swc"):
        return None
    return read_swc_layer


def read_swc_layer(path: Any) -> list[tuple]:
    from .io import read_swc

    nodes = read_swc(path)
    return [swc_layer_data(nodes, name=Path(str(path)).stem)]


def write_swc_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Shapes layer's paths (world units = data * scale) as SWC."""
    from .io import write_swc

    scale = tuple(float(s) for s in (meta.get("scale") or (1.0, 1.0, 1.0))[-3:])
    paths = [np.asarray(p)[:, -3:] for p in data]
    radius = (meta.get("metadata") or {}).get("swc_radius") or {}
    nodes = paths_to_swc(paths, scale, radius)
    write_swc(path, nodes, header=f"written by napari-segneuron from layer {meta.get('name', '')}")
    return [str(path)]


def lm_sample() -> list[tuple]:
    """The rivuletpy LM test stack as napari sample data."""
    import tifffile

    return [(tifffile.imread(LM_SAMPLE_PATH), {"name": "rivuletpy LM neuron", "metadata": {"source": LM_CREDIT}},
             "image")]
