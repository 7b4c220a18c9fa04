"""SWC trees as unbranched paths and back (Qt-free).

A tree is split into unbranched paths (root or branch point -> next branch point or tip);
each path is a ``(K, 3)`` array of (z, y, x) vertices in voxel units. Radii travel beside
the paths as a mapping from ``radius_key(vertex)`` to the radius, so a written file keeps them.
"""
from __future__ import annotations

from collections import deque
from typing import Optional, Sequence

import numpy as np


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
            r = float(radius.get(radius_key(coords[u]), 1.0))
            rows.append([new_id[u], 1 if parent[u] < 0 else 3, x * sx, y * sy, z * sz, r,
                         -1 if parent[u] < 0 else new_id[parent[u]]])
            for v in sorted(adjacency[u]):
                if v not in parent:
                    parent[v] = u
                    queue.append(v)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


def radius_key(zyx) -> str:
    """The key under which a vertex's radius is kept in a layer's ``swc_radius`` metadata."""
    return ",".join(f"{c:.4f}" for c in zyx)
