"""Segmentation scores against ground truth: variation of information and adapted Rand error.

Conventions (the same as ``skimage.metrics`` with the ground truth as first image there):

- ``split`` = H(seg | gt): information needed to recover the segmentation from the ground
  truth; it grows when a true neuron is cut into several pieces (over-segmentation).
- ``merge`` = H(gt | seg): it grows when one predicted segment covers several true
  neurons (under-segmentation).  VI = split + merge, in bits (log base 2).
- Adapted Rand error = 1 - F-score of the pairwise Rand precision/recall (SNEMI3D / skimage
  definition, pairs counted without a voxel paired with itself).

Background:

- Ground truth: voxels whose ground-truth label is in ``ignore_gt`` (default ``(0,)``,
  membranes / unlabelled) are left out of every score.
- Predicted background (label 0 in ``seg``) is handled by ``background``:
  ``"fill"`` (default) gives each such voxel the label of the nearest non-zero voxel
  (Euclidean distance transform), so a restriction to foreground is not punished for
  leaving membranes empty; ``"ignore"`` drops such voxels from the score as well;
  ``"segment"`` keeps 0 as one ordinary segment (what ``skimage.metrics`` does).

All counts come from a sparse contingency table (unique (gt, seg) pairs), never a dense
N×M matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .io import InputError

BACKGROUND_MODES = ("fill", "ignore", "segment")
DEFAULT_BACKGROUND = "fill"


@dataclass(frozen=True)
class Scores:
    """VI split/merge (bits) and adapted Rand error of one segmentation."""

    vi_split: float
    vi_merge: float
    arand: float
    precision: float
    recall: float
    n_voxels: int

    @property
    def vi(self) -> float:
        return self.vi_split + self.vi_merge

    def __str__(self) -> str:
        return (
            f"VI {self.vi:.4f} (split {self.vi_split:.4f}, merge {self.vi_merge:.4f}), "
            f"ARAND {self.arand:.4f} over {self.n_voxels} voxels"
        )


def _check_pair(seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seg = np.asarray(seg)
    gt = np.asarray(gt)
    if seg.shape != gt.shape:
        raise InputError(
            f"The segmentation {seg.shape} and the ground truth {gt.shape} have different shapes; "
            "crop them to the same region first"
        )
    for name, arr in (("segmentation", seg), ("ground truth", gt)):
        if arr.dtype.kind not in "biu":
            raise InputError(f"The {name} must hold integer labels, not {arr.dtype}")
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            raise InputError(f"The {name} has negative labels")
    return seg, gt


def fill_background(seg: np.ndarray) -> np.ndarray:
    """Give every 0 voxel the label of the nearest non-zero voxel (Euclidean, in voxels)."""
    from scipy import ndimage

    seg = np.asarray(seg)
    zero = seg == 0
    if not zero.any():
        return seg
    if zero.all():
        raise InputError("The segmentation is all background (0): nothing to fill from")
    idx = ndimage.distance_transform_edt(zero, return_distances=False, return_indices=True)
    return seg[tuple(idx)]


def section_pieces(labels: np.ndarray, *, fill: bool = False, keep_zero: bool = False) -> np.ndarray:
    """Each id cut into its 4-connected pieces within every z section, ids unique over the stack.

    For truth labelled section by section (2D ids: connected regions of one section, as
    membrane-derived ids are), compare pieces with pieces: one neuron seen twice in a section (a
    fold, a branch closing outside it) is two pieces of the truth, and a correct 3D segment must
    not be charged a merge for it. ``fill``: background (0) first gets the nearest segment's id
    (``fill_background``), so pieces touch across membranes as the scores see them. 0 stays 0
    unless ``keep_zero`` (then its pieces are ids too)."""
    from skimage.measure import label

    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise InputError(f"Section pieces need a (Z, Y, X) stack, not shape {lab.shape}")
    if fill and lab.size:
        lab = fill_background(lab)
    if keep_zero:
        lab = lab.astype(np.int64) + 1  # 0 becomes an ordinary id
    out = np.zeros(lab.shape, np.uint32)
    offset = 0
    for z in range(lab.shape[0]):
        pieces = label(lab[z], background=0, connectivity=1)  # neighbours with the same id join
        out[z] = np.where(pieces > 0, pieces + offset, 0)
        offset += int(pieces.max())
    return out


def evaluate_sections(
    seg: np.ndarray, gt: np.ndarray, *, ignore_gt: Sequence[int] = (0,), background: str = DEFAULT_BACKGROUND
) -> "Scores":
    """Scores of ``seg`` against truth labelled section by section (2D ids): the pieces of each
    segment in each section against the truth's pieces (``section_pieces``), after the same
    ignore and background rules as ``evaluate``. A 3D segmentation that agrees with a 3D truth
    scores ~0 against that truth's 2D pieces; scoring it in 3D would charge every section."""
    seg, gt = _check_pair(seg, gt)
    if background not in BACKGROUND_MODES:
        raise InputError(f"background must be one of {BACKGROUND_MODES}, not {background!r}")
    ignored = np.isin(gt, list(ignore_gt)) if len(ignore_gt) else np.zeros(gt.shape, bool)
    gt_p = section_pieces(np.where(ignored, 0, gt), keep_zero=0 not in ignore_gt)
    gt_p[ignored] = 0
    seg_p = section_pieces(seg, fill=background == "fill", keep_zero=background == "segment")
    return evaluate(seg_p, gt_p, background=background)


def contingency(
    seg: np.ndarray, gt: np.ndarray, *, ignore_gt: Sequence[int] = (0,), background: str = DEFAULT_BACKGROUND
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table as three 1-D arrays ``(seg_id, gt_id, count)`` of the pairs
    that occur, after ground-truth ignore labels and predicted-background handling."""
    seg, gt = _check_pair(seg, gt)
    if background not in BACKGROUND_MODES:
        raise InputError(f"background must be one of {BACKGROUND_MODES}, not {background!r}")
    if background == "fill":
        seg = fill_background(seg)
    s = seg.reshape(-1)
    g = gt.reshape(-1)
    keep = None
    if len(ignore_gt):
        keep = ~np.isin(g, np.asarray(list(ignore_gt), dtype=g.dtype))
    if background == "ignore":
        nz = s != 0
        keep = nz if keep is None else keep & nz
    if keep is not None:
        s = s[keep]
        g = g[keep]
    return pair_counts(s, g)


def pair_counts(s: np.ndarray, g: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (s, g) pairs with their (optionally weighted) counts."""
    if s.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    su, si = _unique_inverse(s)
    gu, gi = _unique_inverse(g)
    key = si.astype(np.int64).ravel() * len(gu) + gi.astype(np.int64).ravel()
    if len(su) * len(gu) <= max(4 * key.size, 1 << 20):
        counts = np.bincount(key, weights=weights, minlength=len(su) * len(gu))
        pairs = np.flatnonzero(counts)
        counts = counts[pairs]
    else:
        pairs, inv = _unique_inverse(key)
        counts = np.bincount(inv.ravel(), weights=weights)
    counts = np.rint(counts).astype(np.int64) if weights is not None else counts.astype(np.int64)
    return su[pairs // len(gu)], gu[pairs % len(gu)], counts


def _unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values and the inverse index (fastremap's hash-based version is ~30x
    faster than ``np.unique`` here)."""
    x = np.ascontiguousarray(x).reshape(-1)
    try:
        import fastremap

        u, inv = fastremap.unique(x, return_inverse=True)
        return np.asarray(u), np.asarray(inv).reshape(-1)
    except (ImportError, TypeError, ValueError):  # pragma: no cover - unusual dtypes
        u, inv = np.unique(x, return_inverse=True)
        return u, inv.reshape(-1)


def scores_from_table(seg_ids: np.ndarray, gt_ids: np.ndarray, counts: np.ndarray) -> Scores:
    """VI and ARAND from a sparse contingency table (see ``contingency``)."""
    n = float(counts.sum())
    if n == 0:
        raise InputError("No voxel is left to score: the ground truth is all ignored labels (0?)")
    _, s_inv = _unique_inverse(seg_ids)
    _, g_inv = _unique_inverse(gt_ids)
    c = counts.astype(np.float64)
    a = np.bincount(s_inv.ravel(), weights=c)  # segment sizes
    b = np.bincount(g_inv.ravel(), weights=c)  # ground-truth object sizes
    p = c / n
    # H(seg|gt) = -sum p_ij log(p_ij / p_gt_j); H(gt|seg) = -sum p_ij log(p_ij / p_seg_i)
    split = float(-(p * np.log2(c / b[g_inv.ravel()])).sum())
    merge = float(-(p * np.log2(c / a[s_inv.ravel()])).sum())
    sum_ij = float(c @ c) - n
    sum_a = float(a @ a) - n
    sum_b = float(b @ b) - n
    precision = sum_ij / sum_a if sum_a > 0 else 1.0
    recall = sum_ij / sum_b if sum_b > 0 else 1.0
    denom = sum_a + sum_b
    arand = 1.0 - 2.0 * sum_ij / denom if denom > 0 else 0.0
    # clamp rounding noise (and -0.0) of perfect agreement to 0
    split = split if split > 1e-12 else 0.0
    merge = merge if merge > 1e-12 else 0.0
    return Scores(split, merge, arand, precision, recall, int(n))


def evaluate(
    seg: np.ndarray, gt: np.ndarray, *, ignore_gt: Sequence[int] = (0,), background: str = DEFAULT_BACKGROUND
) -> Scores:
    """All scores of ``seg`` against ``gt`` from one contingency table."""
    return scores_from_table(*contingency(seg, gt, ignore_gt=ignore_gt, background=background))


def variation_of_information(
    seg: np.ndarray, gt: np.ndarray, *, ignore_gt: Sequence[int] = (0,), background: str = DEFAULT_BACKGROUND
) -> tuple[float, float]:
    """``(split, merge)`` = (H(seg|gt), H(gt|seg)) in bits; note the order seg, gt."""
    s = evaluate(seg, gt, ignore_gt=ignore_gt, background=background)
    return s.vi_split, s.vi_merge


def adapted_rand_error(
    seg: np.ndarray, gt: np.ndarray, *, ignore_gt: Sequence[int] = (0,), background: str = DEFAULT_BACKGROUND
) -> float:
    """Adapted Rand error (0 = perfect) of ``seg`` against ``gt``."""
    return evaluate(seg, gt, ignore_gt=ignore_gt, background=background).arand
