"""Segmentation defaults (chosen on fib25_b, see docs/benchmarks.md) and the waterz scoring functions."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

from ..io import InputError

# Defaults picked on the validation crop fib25_b; the measurements are in docs/benchmarks.md.
# Merge threshold: the middle of fib25_b's VI plateau with distance fragments and median scoring.
DEFAULT_THRESHOLD = 0.48
# Foreground threshold for weights that declare none (the bundled ``default`` declares 0.75).
DEFAULT_FG_THRESHOLD = 0.5
# Segments below this many voxels are merged into the segment they touch most ("merge") or removed.
DEFAULT_MIN_SIZE = 100
SMALL_SEGMENTS = ("merge", "remove")
DEFAULT_SMALL = "merge"
DEFAULT_MAX_THRESHOLD = 1.0
DEFAULT_SCORING = "median"
# agglomerate(fragments="waterz") without a scoring is plain waterz: waterz.agglomerate's own default
PLAIN_WATERZ_SCORING = "mean"
# Stacks whose z voxel is at least ANISOTROPY times the xy voxel (serial sections) are scored
# with ANISOTROPIC_SCORING by the "auto" rule; isotropic ones and unknown voxel sizes with
# DEFAULT_SCORING. "median" starts each fragment pair at the contact's highest affinity (right for
# thin FIB-SEM necks); "median-all" takes the median over the whole contact (right where z is
# interpolated between thick sections). Measurements: docs/benchmarks.md.
ANISOTROPY = 4.0
ANISOTROPIC_SCORING = "median-all"
AUTO_SCORING = "auto"
# Background below the foreground threshold is cut out of the region graph ("cut").
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
