"""Topology and length metrics between a traced SWC and a ground-truth SWC (Qt-free).

Both trees are (N, 7) SWC arrays in the same physical units. Lengths are measured along
the edges; the skeleton precision / recall / F1 are length-weighted (a piece of traced
centreline is correct when the truth passes within the matching radius). The spatial
distances follow the BigNeuron scores: ESA (entire structure average: the mean of the two
directed mean nearest distances), DSA (different structure average: the same mean over
the points farther than ``substantial``) and PDS (percentage of different structure: the
fraction of such points).
"""
from __future__ import annotations

import numpy as np


def n_trees(nodes: np.ndarray) -> int:
    """Number of roots (parent -1 or missing)."""
    nodes = np.asarray(nodes)
    if len(nodes) == 0:
        return 0
    ids = set(nodes[:, 0].astype(int))
    return int(sum(1 for p in nodes[:, 6].astype(int) if p < 0 or p not in ids))


def _segments(nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nodes = np.asarray(nodes, dtype=np.float64)
    index = {int(i): k for k, i in enumerate(nodes[:, 0])}
    child = [k for k, p in enumerate(nodes[:, 6]) if int(p) in index]
    parent = [index[int(nodes[k, 6])] for k in child]
    return nodes[child][:, 2:5], nodes[parent][:, 2:5]


def total_length(nodes: np.ndarray) -> float:
    """Summed edge length (physical units)."""
    if len(nodes) == 0:
        return 0.0
    a, b = _segments(nodes)
    return float(np.linalg.norm(a - b, axis=1).sum())


def sample(nodes: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points (x, y, z) every ~``step`` along the edges and the length each point stands for."""
    if len(nodes) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    a, b = _segments(nodes)
    pts, weights = [np.asarray(nodes)[:, 2:5].astype(np.float64)], [np.zeros(len(nodes))]
    for p, q in zip(a, b):
        length = float(np.linalg.norm(q - p))
        k = max(int(np.ceil(length / step)), 1)
        t = (np.arange(k) + 0.5) / k
        pts.append(p + t[:, None] * (q - p))
        weights.append(np.full(k, length / k))
    pts, w = np.concatenate(pts), np.concatenate(weights)
    if w.sum() == 0:  # lone nodes only: count points
        w = np.ones(len(w))
    return pts, w


def compare(traced: np.ndarray, truth: np.ndarray, radius: float, substantial: float | None = None,
            step: float | None = None) -> dict:
    """Trees, length error, length-based precision / recall / F1 (within ``radius``) and
    ESA / DSA / PDS of ``traced`` against ``truth`` (same physical units)."""
    from scipy.spatial import cKDTree

    substantial = radius if substantial is None else substantial
    step = step or radius / 4
    out = {"trees": n_trees(traced), "truth_trees": n_trees(truth), "length": total_length(traced),
           "truth_length": total_length(truth)}
    out["length_error"] = (out["length"] - out["truth_length"]) / max(out["truth_length"], 1e-12)
    pt, wt = sample(traced, step)
    pg, wg = sample(truth, step)
    if len(pt) == 0 or len(pg) == 0:
        return {**out, "precision": 0.0, "recall": 0.0, "f1": 0.0, "esa": float("inf"), "dsa": float("inf"),
                "pds": 1.0}
    d_t, _ = cKDTree(pg).query(pt)
    d_g, _ = cKDTree(pt).query(pg)
    precision = float(wt[d_t <= radius].sum() / wt.sum())
    recall = float(wg[d_g <= radius].sum() / wg.sum())
    out.update(precision=precision, recall=recall,
               f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    out["esa"] = float((np.average(d_t, weights=wt) + np.average(d_g, weights=wg)) / 2)
    far_t, far_g = d_t > substantial, d_g > substantial
    dsa = [np.average(d[f], weights=w[f]) for d, f, w in ((d_t, far_t, wt), (d_g, far_g, wg)) if f.any()]
    out["dsa"] = float(np.mean(dsa)) if dsa else 0.0
    out["pds"] = float((wt[far_t].sum() + wg[far_g].sum()) / (wt.sum() + wg.sum()))
    return out
