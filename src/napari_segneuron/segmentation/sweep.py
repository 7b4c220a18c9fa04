"""Scoring agglomerations against ground truth: threshold sweeps and one-call benchmarks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..cancel import CancelToken, check
from ..io import InputError
from ..metrics import BACKGROUND_MODES, DEFAULT_BACKGROUND, evaluate, pair_counts, scores_from_table
from .agglomeration import Agglomeration, agglomerate
from .defaults import DEFAULT_FG_THRESHOLD, DEFAULT_MIN_SIZE, DEFAULT_SCORING, DEFAULT_THRESHOLD, ProgressFn


@dataclass
class SweepResult:
    """Scores for each threshold of one agglomeration against a ground-truth crop."""

    thresholds: np.ndarray
    vi_split: np.ndarray
    vi_merge: np.ndarray
    arand: np.ndarray
    n_segments: np.ndarray
    background: str
    scored: np.ndarray  # fraction of the non-ignored ground-truth voxels that were scored


    @property
    def vi(self) -> np.ndarray:
        return self.vi_split + self.vi_merge

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.vi))

    @property
    def best_threshold(self) -> float:
        """The suggested threshold: lowest VI (split + merge)."""
        return float(self.thresholds[self.best_index])

    def rows(self) -> list[dict]:
        return [
            dict(threshold=float(t), vi_split=float(s), vi_merge=float(m), vi=float(s + m), arand=float(a),
                 n_segments=int(n), scored=float(c))
            for t, s, m, a, n, c in zip(self.thresholds, self.vi_split, self.vi_merge, self.arand, self.n_segments,
                                        self.scored)
        ]

    def table(self) -> str:
        lines = [f"{'threshold':>9} {'VI split':>9} {'VI merge':>9} {'VI':>8} {'ARAND':>7} {'segments':>8} "
                 f"{'scored':>7}"]
        best = self.best_index
        for i, r in enumerate(self.rows()):
            mark = "  <- lowest VI" if i == best else ""
            lines.append(
                f"{r['threshold']:9.3f} {r['vi_split']:9.4f} {r['vi_merge']:9.4f} {r['vi']:8.4f} "
                f"{r['arand']:7.4f} {r['n_segments']:8d} {100 * r['scored']:6.1f}%{mark}"
            )
        return "\n".join(lines)


def _region_slices(region: Any, shape: tuple[int, ...], gt_shape: tuple[int, ...]) -> tuple[slice, ...]:
    if region is None:
        if tuple(gt_shape) != tuple(shape):
            raise InputError(
                f"The ground truth {tuple(gt_shape)} is smaller than the volume {tuple(shape)}: "
                "say where it lies (region=(slice, slice, slice) or offset)"
            )
        return (slice(None),) * 3
    if all(isinstance(r, (int, np.integer)) for r in region):  # an offset
        region = tuple(slice(int(o), int(o) + s) for o, s in zip(region, gt_shape))
    region = tuple(region)
    sizes = tuple(len(range(*r.indices(n))) for r, n in zip(region, shape))
    if sizes != tuple(gt_shape):
        raise InputError(f"The region {region} covers {sizes} voxels, the ground truth is {tuple(gt_shape)}")
    return region


def threshold_sweep(
    agglomeration: Agglomeration,
    gt: np.ndarray,
    thresholds: Optional[Sequence[float]] = None,
    *,
    region: Any = None,
    background: str = DEFAULT_BACKGROUND,
    ignore_gt: Sequence[int] = (0,),
    progress: ProgressFn = None,
    cancel: Optional[CancelToken] = None,
) -> SweepResult:
    """VI split/merge and ARAND at every threshold from one agglomeration.

    gt: ground-truth labels of the whole volume or of a crop; for a crop give ``region``
    (tuple of slices, or the crop's (z, y, x) offset).  Default thresholds: 0.02 to
    ``max_threshold`` in steps of 0.02.  Background handling as in ``metrics``; with
    ``background="ignore"`` watch ``scored``: dropping voxels can flatter a segmentation.

    The (fragment, gt) contingency table is built once; every threshold only relabels its
    rows, so a sweep costs about one evaluation plus a little per threshold.
    """
    gt = np.asarray(gt)
    if gt.ndim != 3:
        raise InputError(f"The ground truth must be 3-D (z, y, x), not {gt.shape}")
    if gt.dtype.kind not in "biu":
        raise InputError(f"The ground truth must hold integer labels, not {gt.dtype}")
    if background not in BACKGROUND_MODES:
        raise InputError(f"background must be one of {BACKGROUND_MODES}, not {background!r}")
    region = _region_slices(region, agglomeration.shape, gt.shape)
    if thresholds is None:
        top = agglomeration.max_threshold
        thresholds = np.round(np.arange(0.02, top + 1e-9, 0.02), 4)
    thresholds = np.asarray([agglomeration._threshold(t) for t in thresholds], dtype=np.float64)
    if thresholds.size == 0:
        raise InputError("No thresholds to sweep")

    frag = agglomeration.fragments[region]
    g = gt.reshape(-1)
    keep = ~np.isin(g, np.asarray(list(ignore_gt), dtype=g.dtype)) if len(ignore_gt) else None
    fill_idx = None
    if background == "fill" and (frag == 0).any():
        if not (frag != 0).any():
            raise InputError("The ground-truth region holds no fragment (all background)")
        from scipy import ndimage

        fill_idx = ndimage.distance_transform_edt(frag == 0, return_distances=False, return_indices=True)
        frag_filled = frag[tuple(fill_idx)]
    else:
        frag_filled = frag
    f = frag_filled.reshape(-1)
    if keep is not None:
        f, g = f[keep], g[keep]
    f_ids, g_ids, counts = pair_counts(f, g)
    total = float(counts.sum())

    present = f_ids[f_ids != 0] if background != "fill" else np.unique(frag[frag != 0])
    vs, vm, ar, ns, cov = [], [], [], [], []
    for i, t in enumerate(thresholds):
        check(cancel)
        lut, n_seg = agglomeration._lookup(float(t))
        removed = agglomeration.min_size > 1 and bool((lut[present] == 0).any())
        if removed and background == "fill":
            # min_size removed segments here: fill them too (voxel-level, rare)
            sc = evaluate(lut[frag], gt, ignore_gt=ignore_gt, background=background)
        else:
            s_ids = lut[f_ids]
            if background == "ignore":
                nz = s_ids != 0
                sc = scores_from_table(*pair_counts(s_ids[nz], g_ids[nz], counts[nz].astype(np.float64)))
            else:
                sc = scores_from_table(*pair_counts(s_ids, g_ids, counts.astype(np.float64)))
        cov.append(sc.n_voxels / total if total else 0.0)
        vs.append(sc.vi_split)
        vm.append(sc.vi_merge)
        ar.append(sc.arand)
        ns.append(int(n_seg))
        if progress is not None:
            progress(i + 1, len(thresholds), f"threshold {t:.3f}")
    return SweepResult(thresholds, np.array(vs), np.array(vm), np.array(ar), np.array(ns), background, np.array(cov))


def segment_and_score(
    affinities: np.ndarray,
    foreground: Optional[np.ndarray],
    gt: np.ndarray,
    *,
    threshold: Optional[float] = None,
    fg_threshold: float = DEFAULT_FG_THRESHOLD,
    min_size: int = DEFAULT_MIN_SIZE,
    scoring: str = DEFAULT_SCORING,
    background: str = DEFAULT_BACKGROUND,
    worker: bool = False,
    output_shape: Optional[Sequence[int]] = None,
) -> dict:
    """Agglomerate and score in one call (for benchmarks comparing predictors).

    ``output_shape``: the prediction is on another grid (the model's) than ``gt``;
    agglomerate there and score the labels carried to ``output_shape`` (see ``agglomerate``).

    Returns a dict: ``threshold`` (default ``DEFAULT_THRESHOLD``) with ``vi_split``,
    ``vi_merge``, ``vi``, ``arand`` and ``labels`` there; ``best_threshold`` (lowest VI of
    the default sweep) with ``best_vi``, ``best_arand``; the ``sweep`` and the
    ``agglomeration`` themselves.
    """
    agg = agglomerate(affinities, foreground, fg_threshold=fg_threshold, min_size=min_size, scoring=scoring,
                      worker=worker, output_shape=output_shape)
    sweep = threshold_sweep(agg, gt, background=background)
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    labels = agg.labels(t)
    at = evaluate(labels, gt, background=background)
    b = sweep.best_index
    return dict(
        threshold=t, vi_split=at.vi_split, vi_merge=at.vi_merge, vi=at.vi, arand=at.arand, labels=labels,
        best_threshold=sweep.best_threshold, best_vi=float(sweep.vi[b]), best_arand=float(sweep.arand[b]),
        sweep=sweep, agglomeration=agg,
    )


def compare_predictions(
    prediction_a: tuple[np.ndarray, Optional[np.ndarray]],
    prediction_b: tuple[np.ndarray, Optional[np.ndarray]],
    gt: Optional[np.ndarray] = None,
    *,
    threshold: Optional[float] = None,
    **kwargs: Any,
) -> dict:
    """How much two predictions (``(affinities, foreground)`` each) differ after segmentation.

    ``vi_between``: VI of segmentation A against B as reference (nothing ignored,
    background as a segment) at ``threshold``; with ``gt`` also ``vi_a``, ``vi_b`` and
    ``vi_difference`` = |VI_a - VI_b| against the ground truth.  ``kwargs`` go to
    ``agglomerate`` (fg_threshold, min_size, scoring, ...).
    """
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    kwargs.setdefault("worker", False)
    la = agglomerate(*prediction_a, **kwargs).labels(t)
    lb = agglomerate(*prediction_b, **kwargs).labels(t)
    between = evaluate(la, lb, ignore_gt=(), background="segment")
    out: dict = dict(threshold=t, vi_between=between.vi, vi_between_split=between.vi_split,
                     vi_between_merge=between.vi_merge, arand_between=between.arand)
    if gt is not None:
        sa, sb = evaluate(la, gt), evaluate(lb, gt)
        out.update(vi_a=sa.vi, vi_b=sb.vi, arand_a=sa.arand, arand_b=sb.arand, vi_difference=abs(sa.vi - sb.vi))
    return out
