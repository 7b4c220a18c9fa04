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


#: how a segmentation is compared with truth labelled section by section (``evaluate_sections``)
SECTION_RULES = ("segments", "pieces")
DEFAULT_SECTION_RULE = "segments"


def _check_3d(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise InputError(f"Scoring by section needs a (Z, Y, X) stack, not shape {lab.shape}")
    return lab


def section_segments(labels: np.ndarray, *, fill: bool = False) -> np.ndarray:
    """Ids made unique per z section: a 3D segment becomes one segment in each section it
    crosses, however many disconnected parts it has there. ``fill``: background (0) first gets
    the nearest segment's id (``fill_background``); otherwise 0 stays 0."""
    lab = _check_3d(labels)
    if fill and lab.size:
        lab = fill_background(lab)
    lab = lab.astype(np.int64)
    keyed = lab + np.arange(lab.shape[0], dtype=np.int64)[:, None, None] * (int(lab.max(initial=0)) + 1)
    keyed[lab == 0] = 0
    _, inv = np.unique(keyed.ravel(), return_inverse=True)
    out = inv.reshape(lab.shape).astype(np.uint32)
    return out if (lab == 0).any() else out + np.uint32(1)


def section_pieces(labels: np.ndarray, *, fill: bool = False) -> np.ndarray:
    """Each id cut into its 4-connected pieces within every z section, ids unique over the stack;
    how 2D truth is made from membranes (connected regions of one section). ``fill``: background
    (0) first gets the nearest segment's id, so pieces touch across membranes as the scores see
    them; otherwise 0 stays 0."""
    from skimage.measure import label

    lab = _check_3d(labels)
    if fill and lab.size:
        lab = fill_background(lab)
    out = np.zeros(lab.shape, np.uint32)
    offset = 0
    for z in range(lab.shape[0]):
        pieces = label(lab[z], background=0, connectivity=1)  # neighbours with the same id join
        out[z] = np.where(pieces > 0, pieces + offset, 0)
        offset += int(pieces.max())
    return out


def evaluate_sections(
    seg: np.ndarray, gt: np.ndarray, *, rule: str = DEFAULT_SECTION_RULE, ignore_gt: Sequence[int] = (0,),
    background: str = DEFAULT_BACKGROUND,
) -> "Scores":
    """Scores of a (3D) segmentation against truth labelled section by section (2D ids), which
    says nothing about how sections connect. ``rule``:

    - "segments" (default): a segment's voxels in one section are one segment. A segment that
      joins different neurons through other sections is charged a merge in every section where
      they lie apart, and so is a true neuron folding through a section (fib25_b's own 3D bodies
      score VI 0.30 against their 2D pieces).
    - "pieces": a segment's connected pieces in a section against the truth's pieces. Folds cost
      nothing (fib25_b's bodies: 0.08, from filling the membranes), but merges made only through
      other sections are invisible.

    The truth is cut by the same rule (no change for 2D ids with "segments"); ignore and background
    rules as in ``evaluate`` (predicted background is filled before cutting with "fill")."""
    seg, gt = _check_pair(seg, gt)
    return evaluate_cut_sections(seg, section_truth(gt, rule=rule, ignore_gt=ignore_gt), rule=rule,
                                 background=background)


def _section_cut(rule: str):
    if rule not in SECTION_RULES:
        raise InputError(f"rule must be one of {SECTION_RULES}, not {rule!r}")
    return section_pieces if rule == "pieces" else section_segments


def section_truth(gt: np.ndarray, *, rule: str = DEFAULT_SECTION_RULE, ignore_gt: Sequence[int] = (0,)) -> np.ndarray:
    """2D truth cut by ``rule`` as ``evaluate_sections`` scores it (ignored ids become 0): cut once
    and score many segmentations against it with ``evaluate_cut_sections``."""
    gt = np.asarray(gt)
    ignored = np.isin(gt, list(ignore_gt)) if len(ignore_gt) else np.zeros(gt.shape, bool)
    truth = _section_cut(rule)(gt.astype(np.int64) + 1)  # every voxel in a segment first, ignored ones dropped after
    truth[ignored] = 0
    return truth


def evaluate_cut_sections(seg: np.ndarray, truth: np.ndarray, *, rule: str = DEFAULT_SECTION_RULE,
                          background: str = DEFAULT_BACKGROUND) -> "Scores":
    """``evaluate_sections`` against truth already cut by ``section_truth`` with the same ``rule``."""
    seg, truth = _check_pair(seg, truth)
    cut = _section_cut(rule)
    if background not in BACKGROUND_MODES:
        raise InputError(f"background must be one of {BACKGROUND_MODES}, not {background!r}")
    if background == "segment":  # 0 is an ordinary segment: give it an id before cutting
        seg = seg.astype(np.int64) + 1
    return evaluate(cut(seg, fill=background == "fill"), truth, ignore_gt=(0,), background=background)


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


#: ``pair_counts`` counts pairs in a dense (segments x truth) table up to this many cells (or 4 per
#: voxel), else hashes the pair keys
DENSE_PAIR_TABLE = 1 << 20


def pair_counts(s: np.ndarray, g: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (s, g) pairs with their (optionally weighted) counts."""
    if s.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    su, si = _unique_inverse(s)
    gu, gi = _unique_inverse(g)
    key = si.astype(np.int64).ravel() * len(gu) + gi.astype(np.int64).ravel()
    if len(su) * len(gu) <= max(4 * key.size, DENSE_PAIR_TABLE):
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
