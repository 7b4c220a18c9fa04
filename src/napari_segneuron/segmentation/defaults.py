"""Segmentation defaults (chosen on fib25_b, see the notes) and the waterz scoring functions."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

from ..io import InputError

# Defaults chosen on the validation crop fib25_b with affinities and foreground predicted
# by a checkpoint of the default model's training run (iteration ~300), scored with VI
# (predicted background filled; benchmarks/bench_quality.py).  VI by threshold:
#   t      0.46 0.48 0.50 0.52 0.54 0.56 0.58 0.60 0.62 0.64
#   cut    1.45 1.32 1.21 1.13 1.11 1.08 1.08 1.13 1.12 1.25
#   mask   1.04 1.02 1.02 1.14 1.26 1.61 1.91 2.47 3.35 3.92
#   plain waterz (no foreground): best 1.61 at 0.42; "exclude": best 1.32 at 0.34.
# - background_mode "cut": nearly the best VI of "mask" (1.08 vs 1.02) on a plateau
#   three times as wide (0.52-0.62 within 0.05 of the best), and on the 100x512x512
#   benchmark volume 120k instead of 657k fragments, 18 s instead of 93 s for the first
#   agglomeration, 1.4 instead of 1.9 GiB.  "exclude" moves the useful thresholds down
#   once the foreground head marks background (membrane contacts leave the graph).
# - threshold 0.56: the middle of that plateau.
# - fg_threshold 0.5 (the bundled weights use 0.75, see the re-check at the end): the probability cut (this checkpoint's foreground is >= 0.49
#   everywhere, so lower values change nothing yet).
# - scoring: see the re-check with the shipped model below (median since then).
# Checked on the iteration-600 checkpoint (14% of voxels background): "cut" best 1.105
# at 0.52, every threshold 0.46-0.68 within 0.08 of it (1.13 at 0.56); "mask" best 0.98
# at 0.46 but only 0.42-0.50 within 0.1; plain waterz best 1.31; "exclude" >= 1.94.
# On the SNEMI3D boundary map (foreground = 1 - boundary adds no information) the best
# settings differ (t 0.3, fg 0.45, "exclude").
# Re-checked with the shipped default model (iteration 2646, balanced loss, mirror padding):
#   t    0.56  0.60  0.62  0.64  0.66  0.68  0.70  0.72  0.74  0.76  0.78
#   VI   0.788 0.735 0.691 0.692 0.724 0.715 0.707 0.723 0.701 0.695 0.833
# - mean scoring: 0.68, the middle of the 0.62-0.76 plateau (held out: picked on z < 25, the
#   z >= 25 half scores 0.764 vs its own best 0.741).
# Median scoring (SegNeuron's choice), same prediction, fib25_b (benchmarks/bench_default_model.py):
#   mean:   best VI 0.691 (t 0.62), within 0.1 of it for t 0.56-0.76
#   median: best VI 0.520 (t 0.58), under 0.63 for every t 0.40-0.80; the classical baseline
#           gains less (1.085 -> 0.996, 0.02 threshold steps), so the model's ratio to it
#           drops from 0.64 to 0.52.
# Cost: a 256-bin histogram per region-graph edge. benchmarks/bench_threshold.py, 100x512x512,
#   mean vs median: first agglomeration 5.6 vs 7.2 s, peak PSS 1394 vs 1609 MiB; the slider's
#   replay is as fast (15 ms).  "mean" stays available (--scoring, the dock's "Edge score").
# Small segments: with median scoring most of the remaining VI is split (0.39 of 0.52), much of it
# in pieces of a few dozen voxels; merging segments < 100 voxels into their best-touching
# neighbour gives 0.446 (300 voxels: 0.441).  100 voxels at 10 nm is 1e-4 um^3 (a cube of
# ~46 nm side), smaller than a thin neurite's cross-section, so real objects are kept.
# With both (the shipped defaults), VI by threshold:
#   t    0.48  0.50  0.52  0.54  0.56  0.58  0.60  0.62  0.64  0.68  0.70
#   VI   0.479 0.481 0.451 0.450 0.447 0.446 0.491 0.520 0.507 0.507 0.535
# - threshold 0.56: the middle of the 0.52-0.58 plateau (held out: picked on z < 25 the
#   z >= 25 half scores 0.534 vs its own best 0.507; picked on z >= 25, z < 25 scores 0.352
#   vs 0.341).
# Distance fragments (issue 16; ``fragments.py``, the default since then) instead of waterz's
# own seeds, same prediction and defaults (median, min size 100, "cut"; bench_fragments.py):
# 11.3 k instead of 120 k fragments on fib25_b, VI by threshold:
#   t    0.30  0.32-0.40  0.42  0.44-0.54  0.56  0.60  0.64  0.70  0.76
#   VI   0.463 0.446-0.448 0.477 0.457-0.458 0.490 0.496 0.537 0.587 0.716
# (waterz's seeds: 0.480 at 0.56, best 0.449 at 0.58).  The plateau moved down:
# - threshold 0.48: the middle of the 0.44-0.54 run (every t 0.32-0.54 within 0.03 of the
#   best, ARAND 0.033-0.045).  Held out: picked on z < 25 (best 0.319 at 0.40, plateau
#   0.32-0.40) the z >= 25 half scores 0.415 at 0.36 vs its own best 0.415; picked on z >= 25
#   (0.32-0.40 and 0.44-0.54 within 0.01), z < 25 scores 0.343 at 0.48 vs its best 0.319.
# Foreground threshold re-checked with the bundled weights of 2026-12-01 (the average of three GPU
# checkpoints, whose foreground is sharper than the model the 0.5 was picked with: 10 % of fib25_b's
# voxels below 0.475, 20 % below 0.869; ground truth 8.8 % boundary), same prediction, other
# defaults unchanged (runs of benchmarks/bench_heldout.py's pieces), VI / ARAND on fib25_b:
#   fg     0.50  0.60  0.65  0.70  0.75  0.80  0.85  0.90
#   t 0.48 0.407 0.384 0.372 0.366 0.365 0.362 0.362 0.382   (ARAND 0.030 -> 0.026 at 0.75)
#   t 0.40 0.428 0.405 0.394 0.384 0.383 0.380 0.381 0.404
#   t 0.56 0.429 0.407 0.395 0.389 0.388 0.421 0.362 0.442
# Both halves agree (z < 25: 0.338 -> 0.305 at t 0.48; z >= 25: 0.461 -> 0.414).  More voxels next
# to membranes become background, which "cut" takes out of the agglomeration, so fewer merges
# run through thick membranes (split and merge both fall).
# - fg_threshold 0.75 for the bundled weights (the registry's ``default`` entry, which
#   ``foreground_threshold_for`` reads): the middle of the 0.65-0.85 plateau.  The unseen VNC stack, scored after
#   the choice, moved the other way by less: y 0:512 0.583 -> 0.609, y 512:1024 0.773 -> 0.805
#   (per-section VI at t 0.48).  Other settings re-checked at the same time and kept (fib25_b at
#   t 0.48, fg 0.5): mean scoring 0.589, 75 % quantile 0.428, 25 % quantile 0.569; boundary
#   threshold 0.98 / 0.99 / 0.999: 0.453 / 0.420 / 0.453; seed window 2: 0.392 (VNC 0.767 / 0.934);
#   distance smoothing 0.5 / 1.0: 0.414 / 0.530; background_mode "mask" 0.399; waterz's own
#   fragments 0.515 (VNC 0.492 / 0.575: better there, worse on the validation crop).
# The package default stays 0.5: a threshold belongs to the weights (a small or freshly
# finetuned model's foreground may never reach 0.75, and the released SegNeuron weights were not
# checked), so each model may declare its own (checkpoint metadata ``fg_threshold`` or a registry
# entry) and the CLI, the dock and the demo use it unless told otherwise.
DEFAULT_THRESHOLD = 0.48
DEFAULT_FG_THRESHOLD = 0.5
DEFAULT_MIN_SIZE = 100
SMALL_SEGMENTS = ("merge", "remove")
DEFAULT_SMALL = "merge"
DEFAULT_MAX_THRESHOLD = 1.0
DEFAULT_SCORING = "median"
# agglomerate(fragments="waterz") without a scoring is plain waterz: waterz.agglomerate's own default
PLAIN_WATERZ_SCORING = "mean"
# Serial-section stacks (z voxel at least ANISOTROPY times the xy voxel) are scored with
# "median-all" by the "auto" rule; isotropic ones (FIB-SEM) and stacks of unknown voxel size with
# DEFAULT_SCORING. "median" starts each fragment pair at the highest affinity along its contact, so
# one bright voxel joins two pieces: right for the thin necks of isotropic FIB-SEM neurites,
# wrong where z is interpolated between thick sections and a membrane that moves from one
# section to the next leaves bright voxels between two neurons. "median-all" takes the median over
# every voxel of the contact from the start. Picked on ISBI 2012 (development data, 4x4x50 nm),
# VI per section against its 2D-connected truth, mean of 3 tile plans, declared foreground 0.75,
# flips "min", magnification auto (2.1):
#   t           0.36  0.40  0.44  0.48  0.52  0.56  0.60
#   median            1.087 1.106 1.120 1.133 1.172
#   median-all  0.742 0.731 0.727 0.726 0.723 0.719 0.732
#   mean              0.820 0.838 0.821 0.870
# so "median-all" at the package threshold 0.48 (every t 0.40-0.56 within 0.01 of its best). Then
# tested on the unseen larval VNC stack (MODEL_CARD.md). On isotropic fib25_b it would split thin
# necks (0.355 -> 0.571 at 0.48, 3 plans), hence a rule by voxel size, not a new default for every
# stack. The SNEMI3D membrane map (6x6x30 nm, classical boundaries): 2.98 -> 2.34 at 0.48.
# Where to switch (benchmarks/bench_anisotropy.py): fib25_b with every k-th section kept (a
# serial-section stack of known 3D truth, z spacing 20k nm), plugin path, t 0.48, 3D VI, mean of
# 3 section offsets x 3 tile plans (k 1: one run):
#   k (z / xy)   1      2      3      4      5      6
#   median       0.349  0.505  0.729  1.191  1.857  2.482
#   median-all   0.564  0.673  0.922  1.226  1.823  2.171
# median wins clearly up to 3, the two tie at 4-5 (0.035), median-all wins from 6 (and on SNEMI3D
# at 5, ISBI 2012 at 12.5, the VNC at 10.9), so the switch sits at 4 (it was 3 before measuring).
# Re-measured with membranes filled (DEFAULT_MEMBRANE_FILL): median 0.346 0.470 0.504 1.087 1.728
# 2.402, median-all 0.546 0.642 0.707 1.122 1.688 2.077: the same switch.
ANISOTROPY = 4.0
ANISOTROPIC_SCORING = "median-all"
AUTO_SCORING = "auto"
DEFAULT_BACKGROUND_MODE = "cut"
BACKGROUND_MODES_AGG = ("cut", "mask", "exclude")
# Background voxels within this many voxels (6-connected steps on the agglomeration's grid: 60 nm
# on the default model's 20 nm grid) of a fragment are given to the fragment on their side of the
# membrane (``membranes.fill_membranes``); 0 keeps every background voxel 0.
DEFAULT_MEMBRANE_FILL = 3

SCORING_FUNCTIONS = {
    # waterz's default: 1 - mean affinity along the boundary of two regions
    "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    # 1 - median (256-bin histogram) affinity, the function SegNeuron's waterz script uses; each
    # fragment pair starts from the highest affinity along its contact (waterz's InitWithMax)
    "median": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256>>",
    # the same median over every affinity along the contact from the start (InitWithMax false)
    "median-all": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>",
}

ProgressFn = Optional[Callable[..., None]]


def check_scoring(scoring: Any, *, custom: bool = True, allowed: Optional[Sequence[str]] = None) -> str:
    """``scoring`` if it names an edge score (one of ``allowed``, default every key of
    ``SCORING_FUNCTIONS``; with ``custom`` also a waterz C++ scoring type), else a clear
    InputError.  The one place edge-score names are checked."""
    names = tuple(SCORING_FUNCTIONS if allowed is None else allowed)
    if isinstance(scoring, str) and (scoring in names or (custom and "<" in scoring)):
        return scoring
    extra = " or a waterz scoring type" if custom else ""
    raise InputError(f"Edge score must be one of {', '.join(sorted(names))}{extra}, not {scoring!r}")


def _check_threshold(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, 1], not {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise InputError(f"{name} must lie in [0, 1], not {v}")
    return v


def _check_membrane_fill(value: int) -> int:
    """``membrane_fill`` as a non-negative int (voxels), or InputError."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise InputError(f"membrane_fill must be a whole number of voxels, not {value!r}") from None
    if v != value or v < 0:
        raise InputError(f"membrane_fill must be a whole number of voxels >= 0, not {value!r}")
    return v


def serial_sections(voxel_size: Optional[Sequence[float]]) -> bool:
    """Whether a stack of this (z, y, x) voxel size is cut in sections much thicker than its pixels
    (z at least ``ANISOTROPY`` times y and x); False when the voxel size is unknown."""
    if voxel_size is None or len(voxel_size) != 3:
        return False
    z, y, x = (float(v) for v in voxel_size)
    return min(y, x) > 0 and z >= ANISOTROPY * max(y, x)


def resolve_scoring(scoring: Optional[str], voxel_size: Optional[Sequence[float]] = None) -> str:
    """The edge score to agglomerate with: ``scoring`` itself, or for "auto" (and None)
    ``ANISOTROPIC_SCORING`` on serial-section stacks and ``DEFAULT_SCORING`` otherwise."""
    if scoring in (None, AUTO_SCORING):
        return ANISOTROPIC_SCORING if serial_sections(voxel_size) else DEFAULT_SCORING
    return check_scoring(scoring)


def foreground_threshold_for(source: Any = None) -> float:
    """The foreground threshold to segment a model's prediction with: the value the weights
    declare (``model.info["fg_threshold"]``, or a prediction's provenance ``model_fg_threshold``),
    else ``DEFAULT_FG_THRESHOLD``.  ``source``: a model, its ``info`` dict, a provenance dict or None."""
    info = getattr(source, "info", source)
    if isinstance(info, Mapping):
        for key in ("fg_threshold", "model_fg_threshold"):
            value = info.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= float(value) <= 1.0:
                return float(value)
    return DEFAULT_FG_THRESHOLD
