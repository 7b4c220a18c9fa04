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
    skeleton: np.ndarray, radius: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    roots: Optional[np.ndarray] = None,
) -> np.ndarray:
    """SWC rows for a skeleton image: one tree per 26-connected component, rooted at its
    thickest voxel, or at the skeleton voxel nearest a given root ((K, 3) z, y, x voxels);
    ``radius`` (Z,Y,X) gives each node's radius (physical units)."""
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
    chosen: dict[int, int] = {}
    if roots is not None and len(roots):
        from scipy.spatial import cKDTree

        sp = np.array([vz, vy, vx])
        _, nearest = cKDTree(coords * sp).query(np.asarray(roots, dtype=np.float64).reshape(-1, 3) * sp)
        for j in np.atleast_1d(nearest):
            chosen.setdefault(int(comp[j]), int(j))
    out = np.zeros((len(coords), 7))
    new_id = np.zeros(len(coords), dtype=np.int64)
    counter = 0
    for k in range(n_comp):
        members = np.nonzero(comp == k)[0]
        root = chosen.get(k, members[np.argmax(rad[members])])
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


def _endpoints(skeleton: np.ndarray) -> np.ndarray:
    """Skeleton voxels with at most one 26-neighbour (tips and lone voxels)."""
    counts = ndi.convolve(skeleton.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant") - 1
    return skeleton & (counts <= 1)


def gap_cost(foreground: np.ndarray, image: Optional[np.ndarray] = None, background: float = 0.05,
             eps: float = 0.05) -> np.ndarray:
    """Per-voxel cost of a gap-crossing path: ``1 / (evidence + eps)`` where the evidence is the
    foreground probability (or the larger of it and the 1-99.5 % normalised ``image``);
    voxels with evidence below ``background`` are impassable (``inf``)."""
    evidence = np.clip(np.asarray(foreground, dtype=np.float32), 0.0, 1.0)
    if image is not None:
        img = np.asarray(image, dtype=np.float32)
        lo, hi = np.percentile(img, (1.0, 99.5))
        evidence = np.maximum(evidence, np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0))
    cost = 1.0 / (evidence + eps)
    cost[evidence < background] = np.inf
    return cost


def join_fragments(
    skeleton: np.ndarray,
    cost: np.ndarray,
    max_gap: float,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    somata: Optional[np.ndarray] = None,
    cancel: Optional[CancelToken] = None,
) -> tuple[np.ndarray, int]:
    """Join skeleton fragments along geodesic paths of least ``cost``.

    From every tip of every fragment, the nearest voxel of each other fragment within
    ``max_gap`` (physical units) is a candidate; the cheapest path between them inside a
    box around the pair (``skimage.graph.MCP_Geometric``) is a candidate bridge unless it
    crosses an impassable voxel. Bridges are accepted cheapest first when they join two
    different trees (Kruskal), never two trees that each hold a soma (``somata``: fragment
    labels, 1-based, that are somata). Returns (skeleton with the bridges, number of joins).
    """
    from scipy.spatial import cKDTree
    from skimage.graph import MCP_Geometric

    skeleton = skeleton.astype(bool).copy()
    labels, n = ndi.label(skeleton, structure=np.ones((3, 3, 3), bool))
    if n < 2 or max_gap <= 0:
        return skeleton, 0
    sp = np.asarray(spacing, dtype=np.float64)
    coords = np.argwhere(skeleton)
    lab = labels[tuple(coords.T)]
    tree = cKDTree(coords * sp)
    tips = np.argwhere(_endpoints(skeleton))
    reach = np.ceil(max_gap / sp).astype(int) + 1
    shape = np.array(skeleton.shape)
    candidates = []
    for tip in tips:
        check(cancel)
        a = labels[tuple(tip)]
        near = tree.query_ball_point(tip * sp, max_gap)
        best: dict[int, tuple[float, int]] = {}
        for j in near:
            b = int(lab[j])
            if b == a:
                continue
            d = float(np.linalg.norm((coords[j] - tip) * sp))
            if b not in best or d < best[b][0]:
                best[b] = (d, j)
        for b, (_, j) in best.items():
            target = coords[j]
            lo = np.maximum(np.minimum(tip, target) - reach // 2, 0)
            hi = np.minimum(np.maximum(tip, target) + reach // 2 + 1, shape)
            box = tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))
            local = cost[box].copy()
            # the fragments' own voxels are free to walk on
            local[np.isin(labels[box], (a, b))] = 0.0
            mcp = MCP_Geometric(local, sampling=tuple(sp))
            start, end = tuple(tip - lo), tuple(target - lo)
            cum, _ = mcp.find_costs([start], [end])
            c = float(cum[end])
            if not np.isfinite(c):
                continue
            path = np.asarray(mcp.traceback(end)) + lo
            if len(path) and np.linalg.norm(np.ptp(path, axis=0) * sp) > 2 * max_gap:
                continue
            candidates.append((c, int(a), int(b), path))
    parent = list(range(n + 1))
    has_soma = np.zeros(n + 1, bool)
    if somata is not None:
        has_soma[np.asarray(somata, dtype=int)] = True

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    joins = 0
    for c, a, b, path in sorted(candidates, key=lambda t: t[0]):
        ra, rb = find(a), find(b)
        if ra == rb or (has_soma[ra] and has_soma[rb]):
            continue
        parent[rb] = ra
        has_soma[ra] |= has_soma[rb]
        skeleton[tuple(path.T)] = True
        joins += 1
    return skeleton, joins


def trace(
    foreground: np.ndarray,
    threshold: float = 0.5,
    voxel_size: Optional[Sequence[float]] = None,
    min_size: int = 50,
    spur_length: float = 4.0,
    cancel: Optional[CancelToken] = None,
    max_gap: float = 15.0,
    max_gap_um: Optional[float] = None,
    background: float = 0.05,
    image: Optional[np.ndarray] = None,
    root: Optional[Sequence[Sequence[float]]] = None,
    soma_ratio: float = 0.6,
) -> tuple[np.ndarray, np.ndarray]:
    """Trace a (Z,Y,X) foreground probability (or mask): returns (SWC nodes (N,7), mask).

    ``spur_length`` and ``max_gap`` are in voxels of the finest axis (``max_gap_um``, when
    given, replaces ``max_gap`` in the voxel-size units); ``min_size`` in voxels. Fragments
    of the skeleton are joined across gaps up to that length along the cheapest path through
    the foreground probability (and ``image``, when given; see :func:`gap_cost`), never
    through voxels whose evidence is below ``background``; ``max_gap=0`` turns joining off.
    Each tree is rooted at its soma (the thickest point) or at the ``root`` points
    ((z, y, x) voxels, one per neuron). Fragments whose thickest point reaches ``soma_ratio``
    of the thickest radius overall (and twice the median skeleton radius) count as somata:
    two somata are never joined, so several somata give several trees.
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
    gap = float(max_gap_um) if max_gap_um is not None else float(max_gap) * min(spacing)
    if gap > 0 and skel.any():
        labels, n = ndi.label(skel, structure=np.ones((3, 3, 3), bool))
        somata = soma_fragments(labels, n, radius, soma_ratio, root)
        skel, _ = join_fragments(skel, gap_cost(foreground, image, background), gap, spacing, somata, cancel)
    return skeleton_to_swc(skel, radius, spacing, roots=root), mask


def soma_fragments(labels: np.ndarray, n: int, radius: np.ndarray, soma_ratio: float = 0.6,
                   root: Optional[Sequence[Sequence[float]]] = None) -> np.ndarray:
    """Labels (1-based) of the skeleton fragments that hold a soma: those holding a given
    root point, else those whose thickest point reaches ``soma_ratio`` of the thickest overall
    and twice the median skeleton radius (the thickest fragment always counts)."""
    if n == 0:
        return np.zeros(0, int)
    index = np.arange(1, n + 1)
    if root is not None and len(root):
        from scipy.spatial import cKDTree

        coords = np.argwhere(labels > 0)
        _, j = cKDTree(coords).query(np.asarray(root, dtype=np.float64).reshape(-1, 3))
        return np.unique(labels[tuple(coords[np.atleast_1d(j)].T)])
    peak = np.asarray(ndi.maximum(radius, labels, index))
    median = float(np.median(radius[labels > 0]))
    big = (peak >= soma_ratio * peak.max()) & (peak >= 2 * median)
    big[np.argmax(peak)] = True
    return index[big]


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
