"""Calibration: fit the segmentation settings to one annotated block, without training.

A biologist paints every neuron in one small block of their stack. Calibration predicts the
block (with some context around it) at a few magnifications, agglomerates it at a few
foreground thresholds with each edge score (median, median-all), replays every merge threshold,
scores each against the painted ids and keeps the best: the magnification, foreground
threshold, edge score and merge threshold for the rest of the stack. It takes minutes on a CPU (3.8 for a 40×118×120-voxel block on an idle 2-core machine),
against 15 for finetuning, and the two combine
(calibrate, then finetune at the chosen magnification).

Magnification shows the stack to the model larger than its true scale (1.5: neurites look 1.5x
larger than they are at the model's voxel size, in z, y and x). Tissue whose neurites and
membranes are finer than the training data's (larval ssTEM) is segmented better magnified.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .cancel import CancelToken, check
from .io import InputError
from .resample import Voxel, parse_voxel_size

#: magnifications tried by default (prediction time grows with the cube of the magnification)
DEFAULT_MAGNIFICATIONS = (0.75, 1.0, 1.25, 1.5, 2.0)
#: merge thresholds replayed at each magnification and foreground threshold
DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.02, 0.82, 0.04), 2))
#: context around the block, in model voxels, so the block's border is predicted as inside a stack
CONTEXT_MODEL_VOXELS = 16
#: edge scores tried by default: "median" keeps thin necks whole, "median-all" resists leaks through
#: a few bright boundary voxels (segmentation/defaults.py: what "auto" picks for serial sections)
DEFAULT_SCORINGS = ("median", "median-all")
#: a setting must beat the plugin defaults by this much VI to replace them (the block is small)
MIN_GAIN = 0.02

ProgressFn = Optional[Callable[[int, int, str], None]]


def painted_box(labels: np.ndarray) -> Optional[tuple[tuple[int, int], ...]]:
    """Per axis (start, stop) of the bounding box of the non-zero voxels; None if nothing is painted."""
    labels = np.asarray(labels)
    box = []
    for axis in range(labels.ndim):
        other = tuple(a for a in range(labels.ndim) if a != axis)
        hit = np.flatnonzero(np.any(labels != 0, axis=other) if other else labels != 0)
        if hit.size == 0:
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def magnified_voxel_size(voxel: Optional[Sequence[float]], model_voxel: Optional[Sequence[float]],
                         magnify: float) -> Optional[Voxel]:
    """The voxel size to predict with so the model sees the stack ``magnify`` times larger: the
    stack's own (the model's when unknown) times ``magnify``. ``magnify`` 1 returns ``voxel``
    unchanged; without a model voxel size there is no grid to magnify onto."""
    magnify = float(magnify)
    if not math.isfinite(magnify) or magnify <= 0:
        raise InputError(f"The magnification must be a positive number, got {magnify!r}")
    v = parse_voxel_size(voxel)
    if magnify == 1.0:
        return v
    model_voxel = parse_voxel_size(model_voxel, "model voxel size")
    if model_voxel is None:
        raise InputError("Magnifying needs weights that declare their voxel size (the grid to magnify onto)")
    base = v or model_voxel
    return (base[0] * magnify, base[1] * magnify, base[2] * magnify)


def sections_only(labels: np.ndarray) -> bool:
    """True when no id spans two z sections (ids painted or derived section by section): such
    labels are scored per section (``metrics.evaluate_sections``, rule "segments"), so a
    neuron's sections are not counted as splits."""
    lab = np.asarray(labels)
    if lab.ndim != 3 or lab.shape[0] < 2:
        return False
    seen: set = set()
    for z in range(lab.shape[0]):
        ids = set(np.unique(lab[z]).tolist()) - {0}
        if ids & seen:
            return False
        seen |= ids
    return True


@dataclass
class Calibration:
    """What calibration found: the settings to use and every setting it scored."""

    magnify: float
    fg_threshold: float
    threshold: float
    vi: float
    default_vi: float
    default: dict
    box: tuple
    per_section: bool
    table: list = field(default_factory=list)
    scoring: str = "median"

    @property
    def improved(self) -> bool:
        return self.vi < self.default_vi

    def summary(self) -> str:
        d = self.default
        return (f"magnification {self.magnify:g}, foreground ≥ {self.fg_threshold:g}, edge score {self.scoring}, "
                f"merge threshold {self.threshold:g}: "
                f"VI {self.vi:.3f} on the painted block, against {self.default_vi:.3f} with the defaults "
                f"(magnification {d['magnify']:g}, foreground ≥ {d['fg_threshold']:g}, edge score "
                f"{d.get('scoring', 'median')}, merge {d['threshold']:g})"
                + (" (scored section by section: the ids are 2D)" if self.per_section else ""))


def plateau_centre(table: Sequence[dict], best: dict, tolerance: float = MIN_GAIN) -> dict:
    """The row in the middle of the run of merge thresholds around ``best`` (same magnification
    foreground threshold and edge score) that score within ``tolerance`` of it. A small block's VI curve is
    noisy and often flat; its minimum can sit at the edge of a cliff, the middle of the plateau
    does not (the rule the package's default threshold was picked by)."""
    curve = sorted((r for r in table if r["magnify"] == best["magnify"] and r["fg_threshold"] == best["fg_threshold"]
                    and r.get("scoring") == best.get("scoring")),
                   key=lambda r: r["threshold"])
    i = next(k for k, r in enumerate(curve) if r is best)
    lo = hi = i
    while lo > 0 and curve[lo - 1]["vi"] <= best["vi"] + tolerance:
        lo -= 1
    while hi < len(curve) - 1 and curve[hi + 1]["vi"] <= best["vi"] + tolerance:
        hi += 1
    middle = 0.5 * (curve[lo]["threshold"] + curve[hi]["threshold"])
    return min(curve[lo:hi + 1], key=lambda r: (abs(r["threshold"] - middle), r["vi"]))


def _context_box(box, shape, voxel: Optional[Voxel], model_voxel: Optional[Voxel]) -> tuple[slice, ...]:
    """The block grown by ``CONTEXT_MODEL_VOXELS`` model voxels on every side, inside the stack."""
    out = []
    for axis, (a, b) in enumerate(box):
        ratio = (model_voxel[axis] / voxel[axis]) if (voxel and model_voxel) else 1.0
        m = int(math.ceil(CONTEXT_MODEL_VOXELS * ratio))
        out.append(slice(max(0, a - m), min(shape[axis], b + m)))
    return tuple(out)


def calibrate(
    predictor: Any,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    voxel_size: Optional[Sequence[float]] = None,
    mask: Optional[np.ndarray] = None,
    magnifications: Sequence[float] = DEFAULT_MAGNIFICATIONS,
    fg_thresholds: Optional[Sequence[float]] = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    default_threshold: Optional[float] = None,
    default_fg_threshold: Optional[float] = None,
    default_magnify: float = 1.0,
    scorings: Optional[Sequence[str]] = None,
    default_scoring: Optional[str] = None,
    per_section: Optional[bool] = None,
    worker: bool = False,
    progress: ProgressFn = None,
    cancel: Optional[CancelToken] = None,
) -> Calibration:
    """Pick magnification, foreground threshold, edge score and merge threshold on the painted block of ``labels``.

    ``image`` may be lazy (dask, zarr): only the block and its context are read. ``labels``: the
    image's shape, neuron ids in one block (0 = membrane / unpainted); the
    block is the bounding box of the painted voxels, or of ``mask`` when given. Only voxels with
    an id are scored (as ``metrics.evaluate`` does). ``per_section`` None: decided by
    ``sections_only``. The defaults (``default_magnify``: 1, or the label-free estimate the plugin
    predicts with, ``scale_estimate``; the weights' foreground threshold; ``default_scoring``, where
    "auto" or None is the edge score for ``voxel_size`` (``segmentation.resolve_scoring``); the
    package merge threshold) are always scored too and are kept unless another setting beats them by
    ``MIN_GAIN``; otherwise the merge threshold is the middle of the best setting's plateau
    (``plateau_centre``).
    """
    from .metrics import evaluate, evaluate_cut_sections, section_truth
    from .segmentation import DEFAULT_THRESHOLD, agglomerate, foreground_threshold_for, resolve_scoring
    from .segmentation.defaults import check_scoring

    labels = np.asarray(labels)
    shape = tuple(int(n) for n in getattr(image, "shape", np.shape(image)))
    if len(shape) != 3 or labels.shape != shape:
        raise InputError(f"Calibration needs a 3D image and labels of its shape, got {shape} and {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise InputError("The labels must hold integer neuron ids")
    box = painted_box(labels if mask is None else np.asarray(mask) != 0)
    if box is None or not np.any(labels):
        raise InputError("Nothing is painted: paint every neuron (ids 1, 2, …) in one block of the stack first")
    inner = tuple(slice(a, b) for a, b in box)
    truth = labels[inner]
    if mask is not None:
        truth = np.where(np.asarray(mask)[inner] != 0, truth, 0)
    if len(np.unique(truth)) < 3:
        raise InputError("Paint at least two neurons in the block: one id alone cannot tell splits from merges")
    if per_section is None:
        per_section = sections_only(truth)
    cut_truth = section_truth(truth) if per_section else None  # cut once, scored ~200 times
    model_voxel = predictor.model_voxel_size
    voxel = parse_voxel_size(voxel_size)
    default_magnify = float(default_magnify)
    if not (math.isfinite(default_magnify) and default_magnify > 0):
        raise InputError(f"The default magnification must be a positive number, got {default_magnify!r}")
    magnifications = sorted({float(z) for z in magnifications} | {1.0, default_magnify})
    if model_voxel is None and magnifications != [1.0]:
        magnifications, default_magnify = [1.0], 1.0  # nothing to magnify on: the weights declare no voxel size
    default_fg = float(default_fg_threshold if default_fg_threshold is not None
                       else foreground_threshold_for(predictor.model))
    fgs = sorted({float(f) for f in (fg_thresholds or (0.5,))} | {default_fg})
    default_t = float(default_threshold if default_threshold is not None else DEFAULT_THRESHOLD)
    default_s = resolve_scoring(default_scoring, voxel)
    scores_tried = list(dict.fromkeys([default_s, *(DEFAULT_SCORINGS if scorings is None else scorings)]))
    for s in scores_tried:
        check_scoring(s, custom=False)
    ts = sorted({float(t) for t in thresholds} | {default_t})
    region = _context_box(box, shape, voxel or model_voxel, model_voxel)
    offset = tuple(a - r.start for (a, _), r in zip(box, region))
    crop_back = tuple(slice(o, o + (b - a)) for o, (a, b) in zip(offset, box))
    sub = np.ascontiguousarray(np.asarray(image[region]))  # only the block and its context is read
    if sub.dtype.kind == "f":  # normalised with the whole stack's range, as predicting the stack does
        from .io import intensity_scale

        lo, span = intensity_scale(image)
        sub = np.nan_to_num(np.clip((sub.astype(np.float32) - lo) / span, 0.0, 1.0), nan=0.0)

    # progress in thousandths of the whole run; a magnification costs about its cube (voxels to
    # predict and segment), 70 % of it the prediction
    cost = np.array([m ** 3 for m in magnifications], float)
    starts = np.concatenate([[0.0], np.cumsum(cost / cost.sum())])

    def report(i: int, frac: float, message: str) -> None:
        if progress is not None:
            share = starts[i] + (starts[i + 1] - starts[i]) * min(max(frac, 0.0), 1.0)
            progress(int(round(1000 * share)), 1000, message)

    table = []
    for i, magnify in enumerate(magnifications):
        check(cancel)
        v = magnified_voxel_size(voxel, model_voxel, magnify)
        grid: dict = {}
        label = f"magnification {magnify:g}"
        aff, fg = predictor.predict(sub, voxel_size=v, model_grid=grid, cancel=cancel,
                                    progress=lambda d, t, msg="", i=i, label=label: report(
                                        i, 0.7 * d / max(t, 1), f"predicting at {label}"))
        if grid.get("affinities") is not None:
            aff, fg = grid["affinities"], grid["foreground"]
        runs = [(fg_t, scoring) for fg_t in fgs for scoring in scores_tried]
        for j, (fg_t, scoring) in enumerate(runs):
            check(cancel)
            ag = agglomerate(np.ascontiguousarray(aff, np.float32),
                             None if fg is None else np.ascontiguousarray(fg, np.float32),
                             fg_threshold=fg_t, scoring=scoring, worker=worker, cancel=cancel)
            if ag.shape != sub.shape:
                ag = ag.on_grid(sub.shape)
            for t in ts:
                seg = ag.labels(t, region=crop_back)  # the block only, not its context
                s = evaluate_cut_sections(seg, cut_truth) if per_section else evaluate(seg, truth)
                table.append({"magnify": magnify, "fg_threshold": fg_t, "scoring": scoring, "threshold": t,
                              "vi": round(s.vi, 4), "vi_split": round(s.vi_split, 4),
                              "vi_merge": round(s.vi_merge, 4), "arand": round(s.arand, 4)})
            report(i, 0.7 + 0.3 * (j + 1) / len(runs), f"scored {label}, foreground ≥ {fg_t:g}, {scoring} edge score")
    default = next(r for r in table if r["magnify"] == default_magnify and r["fg_threshold"] == default_fg
                   and r["scoring"] == default_s and r["threshold"] == default_t)
    # ties: the default edge score, the magnification nearest the default, then the threshold nearest the default
    best = min(table, key=lambda r: (r["vi"], r["scoring"] != default_s, abs(math.log(r["magnify"] / default_magnify)),
                                     abs(r["threshold"] - default_t)))
    chosen = plateau_centre(table, best) if best["vi"] < default["vi"] - MIN_GAIN else default
    return Calibration(magnify=chosen["magnify"], fg_threshold=chosen["fg_threshold"], threshold=chosen["threshold"],
                       vi=chosen["vi"], default_vi=default["vi"], default=default, box=box,
                       per_section=bool(per_section), table=table, scoring=chosen["scoring"])
