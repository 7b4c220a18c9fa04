"""Neuron tracing: foreground probability -> skeleton -> SWC trees.

The thresholded foreground is cleaned of small specks, skeletonised (scikit-image,
Lee's 3D thinning), short terminal spurs are pruned with skan, and every connected
component becomes one tree rooted at its thickest point. Radii come from the distance
transform of the mask. Coordinates follow SWC: x = column, y = row, z = slice, times the
voxel size (z, y, x; 1 when unknown).
"""
from __future__ import annotations

from collections import deque
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse

from .cancel import CancelToken, check

SOMA, NEURITE = 1, 3


def clean_mask(mask: np.ndarray, min_size: int = 50) -> np.ndarray:
    """Binary mask without components smaller than ``min_size`` voxels (26-connectivity)."""
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def prune_spurs(skeleton: np.ndarray, min_length: float, spacing: Sequence[float], rounds: int = 3) -> np.ndarray:
    """Remove terminal branches (junction-to-endpoint paths) shorter than ``min_length``
    (physical units), repeatedly, keeping the junctions. Isolated paths are kept."""
    from skan import Skeleton

    skeleton = skeleton.astype(bool)
    for _ in range(rounds):
        if skeleton.sum() < 3:
            break
        skel = Skeleton(skeleton, spacing=tuple(float(s) for s in spacing))
        degrees = skel.degrees
        lengths = skel.path_lengths()
        spurs = []
        for i in np.nonzero(lengths < min_length)[0]:
            nodes = skel.path(int(i))
            ends = degrees[nodes[[0, -1]]]
            if (ends == 1).sum() == 1 and (ends >= 3).any():  # junction-to-endpoint
                spurs.append(int(i))
        if not spurs:
            break
        skeleton = skel.prune_paths(spurs).skeleton_image.astype(bool)
    return skeleton


def skeleton_to_swc(
    skeleton: np.ndarray, radius: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """SWC rows for a skeleton image: one tree per 26-connected component, rooted at its
    thickest voxel; ``radius`` (Z,Y,X) gives each node's radius (physical units)."""
    coords = np.argwhere(skeleton)
    if len(coords) == 0:
        return np.zeros((0, 7))
    index = -np.ones(skeleton.shape, dtype=np.int64)
    index[tuple(coords.T)] = np.arange(len(coords))
    rows, cols = [], []
    offsets = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) > (0, 0, 0)]
    shape = np.array(skeleton.shape)
    for off in offsets:
        nb = coords + off
        ok = np.all((nb >= 0) & (nb < shape), axis=1)
        j = np.full(len(coords), -1)
        j[ok] = index[tuple(nb[ok].T)]
        hit = j >= 0
        rows.append(np.nonzero(hit)[0])
        cols.append(j[hit])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = sparse.coo_matrix((np.ones(len(r)), (r, c)), shape=(len(coords),) * 2).tocsr()
    graph = graph + graph.T
    n_comp, comp = sparse.csgraph.connected_components(graph, directed=False)
    rad = radius[tuple(coords.T)]
    vz, vy, vx = (float(v) for v in voxel_size)
    out = np.zeros((len(coords), 7))
    new_id = np.zeros(len(coords), dtype=np.int64)
    counter = 0
    for k in range(n_comp):
        members = np.nonzero(comp == k)[0]
        root = members[np.argmax(rad[members])]
        # breadth-first from the root over the skeleton graph: parents come before children
        parent = {root: -1}
        queue = deque([root])
        while queue:
            u = queue.popleft()
            counter += 1
            new_id[u] = counter
            z, y, x = coords[u]
            p = parent[u]
            out[counter - 1] = (counter, SOMA if p < 0 else NEURITE, x * vx, y * vy, z * vz, rad[u],
                                -1 if p < 0 else new_id[p])
            for v in graph.indices[graph.indptr[u]:graph.indptr[u + 1]]:
                if v not in parent:
                    parent[v] = u
                    queue.append(v)
    return out[:counter]


def trace(
    foreground: np.ndarray,
    threshold: float = 0.5,
    voxel_size: Optional[Sequence[float]] = None,
    min_size: int = 50,
    spur_length: float = 4.0,
    cancel: Optional[CancelToken] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Trace a (Z,Y,X) foreground probability (or mask): returns (SWC nodes (N,7), mask).

    ``spur_length`` is in voxels of the finest axis; ``min_size`` in voxels.
    """
    from skimage.morphology import skeletonize

    foreground = np.asarray(foreground)
    if foreground.ndim != 3:
        raise ValueError(f"tracing needs a (Z,Y,X) volume, got shape {foreground.shape}")
    spacing = tuple(float(v) for v in (voxel_size or (1.0, 1.0, 1.0)))
    mask = clean_mask(foreground > threshold, min_size)
    check(cancel)
    if not mask.any():
        return np.zeros((0, 7)), mask
    skel = skeletonize(mask).astype(bool)
    check(cancel)
    skel = prune_spurs(skel, spur_length * min(spacing), spacing)
    check(cancel)
    # distance to the nearest background voxel centre, less half a voxel (the boundary lies between)
    half = 0.5 * min(spacing)
    radius = np.maximum(ndi.distance_transform_edt(mask, sampling=spacing) - half, half)
    return skeleton_to_swc(skel, radius, spacing), mask


def swc_match_f1(traced_zyx: np.ndarray, truth_zyx: np.ndarray, tolerance: float = 3.0) -> dict:
    """Point-wise precision / recall / F1 between two centrelines given as dense (z,y,x)
    point sets in voxels: a point matches when the other set has a point within ``tolerance``."""
    from scipy.spatial import cKDTree

    if len(traced_zyx) == 0 or len(truth_zyx) == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    d_pred, _ = cKDTree(truth_zyx).query(traced_zyx)
    d_true, _ = cKDTree(traced_zyx).query(truth_zyx)
    precision = float(np.mean(d_pred <= tolerance))
    recall = float(np.mean(d_true <= tolerance))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": float(f1)}


def swc_points_voxels(nodes: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                      spacing: float = 0.5) -> np.ndarray:
    """Dense (z,y,x) voxel points along an SWC's edges (physical coordinates divided by the voxel size)."""
    from .lm_render import centreline_points

    vox = np.asarray(nodes, dtype=np.float64).copy()
    vz, vy, vx = (float(v) for v in voxel_size)
    vox[:, 2:5] = vox[:, 2:5] / np.array([vx, vy, vz])
    return centreline_points(vox, spacing)


DEFAULT_TILE = (40, 168, 168)
DEFAULT_OVERLAP = (10, 28, 28)


def predict_foreground(
    model, volume: np.ndarray, tile: Optional[Sequence[int]] = None, overlap: Optional[Sequence[int]] = None,
    device=None, progress=None, cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """Foreground probability (Z,Y,X) float32 of an LM stack with a ViT3D model, tiled and
    blended by the EM predictor (``Predictor.predict_raw``); the stack is percentile-normalised first."""
    from .inference import Predictor
    from .io import as_volume
    from .training.lm import normalise_lm

    volume = normalise_lm(np.asarray(as_volume(volume)))
    mult = getattr(model, "tile_multiple", (1, 1, 1))
    tile = tuple(tile or DEFAULT_TILE)
    tile = tuple(max(m, -(-t // m) * m) for t, m in zip(tile, mult))
    overlap = tuple(overlap or tuple(min(o, t // 4) for o, t in zip(DEFAULT_OVERLAP, tile)))
    predictor = Predictor(model, tile=tile, overlap=overlap, device=device)
    return predictor.predict_raw(volume, progress=progress, cancel=cancel)[0]
