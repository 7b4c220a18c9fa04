"""Neuron segmentation from predicted affinities: fragments, waterz agglomeration with an
instant threshold, small-segment merging and scoring against ground truth.

Modules: ``defaults`` (chosen defaults and scoring functions), ``inputs`` (checking and
foreground restriction), ``fragments`` (initial regions), ``memory`` (estimate before a run), ``worker`` (the waterz run, in
this process or a worker process of its own, ``_waterz_main``), ``history`` (merge history -> replay tables),
``agglomeration`` (``agglomerate``, ``Agglomeration``), ``membranes`` (membrane voxels given to the
neurite on their side), ``small`` (small-segment merging),
``sweep`` (threshold sweeps and benchmarks).  Every public name is re-exported here.
"""
from __future__ import annotations

from ..metrics import Scores, adapted_rand_error, evaluate, variation_of_information
from .agglomeration import Agglomeration, agglomerate
from .defaults import (
    ANISOTROPIC_SCORING,
    ANISOTROPY,
    AUTO_SCORING,
    BACKGROUND_MODES_AGG,
    DEFAULT_BACKGROUND_MODE,
    DEFAULT_FG_THRESHOLD,
    DEFAULT_MAX_THRESHOLD,
    DEFAULT_MEMBRANE_FILL,
    DEFAULT_MIN_SIZE,
    DEFAULT_SCORING,
    PLAIN_WATERZ_SCORING,
    DEFAULT_SMALL,
    DEFAULT_THRESHOLD,
    SCORING_FUNCTIONS,
    SMALL_SEGMENTS,
    foreground_threshold_for,
    resolve_scoring,
    serial_sections,
)
from .fragments import DEFAULT_FRAGMENTS, FRAGMENT_METHODS, distance_fragments
from .inputs import affinities_from_boundaries, restrict_to_foreground
from .membranes import fill_membranes
from .sweep import SweepResult, compare_predictions, segment_and_score, threshold_sweep
from .worker import _restore_stdout, _silence_stdout  # noqa: F401  (used by benchmarks)

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_FG_THRESHOLD",
    "foreground_threshold_for",
    "DEFAULT_MEMBRANE_FILL",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_SMALL",
    "DEFAULT_MAX_THRESHOLD",
    "DEFAULT_SCORING",
    "PLAIN_WATERZ_SCORING",
    "DEFAULT_BACKGROUND_MODE",
    "BACKGROUND_MODES_AGG",
    "SMALL_SEGMENTS",
    "SCORING_FUNCTIONS",
    "AUTO_SCORING",
    "ANISOTROPIC_SCORING",
    "ANISOTROPY",
    "resolve_scoring",
    "serial_sections",
    "DEFAULT_FRAGMENTS",
    "FRAGMENT_METHODS",
    "distance_fragments",
    "Agglomeration",
    "SweepResult",
    "Scores",
    "agglomerate",
    "affinities_from_boundaries",
    "fill_membranes",
    "restrict_to_foreground",
    "threshold_sweep",
    "segment_and_score",
    "compare_predictions",
    "variation_of_information",
    "adapted_rand_error",
    "evaluate",
]
