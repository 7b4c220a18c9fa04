"""Typed settings of the segment step: one definition of each setting and its default.

``SegmentSettings`` is built once from the command line (``from_args``), from a dock's fields
or from a run's provenance (``from_provenance``), validated once (``validate``), and turned
into ``agglomerate`` keyword arguments, command-line flags and provenance by the same code, so
the CLI, the dock and *Copy as CLI command* cannot drift apart.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .io import InputError
from .segmentation.defaults import (
    AUTO_SCORING,
    BACKGROUND_MODES_AGG,
    DEFAULT_BACKGROUND_MODE,
    DEFAULT_MEMBRANE_FILL,
    DEFAULT_MIN_SIZE,
    DEFAULT_SMALL,
    DEFAULT_THRESHOLD,
    SCORING_FUNCTIONS,
    SMALL_SEGMENTS,
    resolve_scoring,
)


@dataclass(frozen=True)
class SegmentSettings:
    """How affinities and foreground become labels.

    ``fg_threshold`` None: the value the weights declare (resolved before the run).
    ``scoring`` ``"auto"``: the edge score for the stack's voxel size (``segmentation.resolve_scoring``).
    ``use_foreground`` False: plain waterz on the affinities alone.
    """

    threshold: float = DEFAULT_THRESHOLD
    fg_threshold: Optional[float] = None
    min_size: int = DEFAULT_MIN_SIZE
    small: str = DEFAULT_SMALL
    use_foreground: bool = True
    background_mode: str = DEFAULT_BACKGROUND_MODE
    membrane_fill: int = DEFAULT_MEMBRANE_FILL
    scoring: str = AUTO_SCORING

    def validate(self) -> "SegmentSettings":
        """Raise ``InputError`` naming the first setting out of range; return self."""
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise InputError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.fg_threshold is not None and not 0.0 <= float(self.fg_threshold) <= 1.0:
            raise InputError(f"fg_threshold must lie in [0, 1], got {self.fg_threshold}")
        for name in ("min_size", "membrane_fill"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.small not in SMALL_SEGMENTS:
            raise InputError(f"small must be one of {SMALL_SEGMENTS}, not {self.small!r}")
        if self.background_mode not in BACKGROUND_MODES_AGG:
            raise InputError(f"background_mode must be one of {BACKGROUND_MODES_AGG}, not {self.background_mode!r}")
        if self.scoring not in (AUTO_SCORING, *SCORING_FUNCTIONS):
            raise InputError(f"scoring must be {AUTO_SCORING!r} or one of {sorted(SCORING_FUNCTIONS)}, "
                             f"not {self.scoring!r}")
        return self

    def replace(self, **changes: Any) -> "SegmentSettings":
        return dataclasses.replace(self, **changes)

    # -- the three forms -------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SegmentSettings":
        """From ``napari-segneuron segment``'s parsed arguments."""
        return cls(
            threshold=float(args.threshold), fg_threshold=args.fg_threshold, min_size=int(args.min_size),
            small=args.small, use_foreground=not args.no_foreground, background_mode=args.background_mode,
            membrane_fill=int(args.membrane_fill), scoring=args.scoring or AUTO_SCORING,
        ).validate()

    @classmethod
    def from_provenance(cls, prov: Mapping[str, Any]) -> "SegmentSettings":
        """From a run's ``segment`` provenance record; missing entries take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in prov.items() if k in names and v is not None}
        # the score the run used, not the choice: 'auto' could pick another score for another voxel size
        if not prov.get("scoring") and prov.get("scoring_choice"):
            values["scoring"] = prov["scoring_choice"]
        if "fg_threshold" in prov and prov["fg_threshold"] is None and "use_foreground" not in prov:
            values["use_foreground"] = False
        return cls(**values).validate()

    def cli_args(self) -> list[str]:
        """The ``segment`` flags that reproduce these settings, every one spelled out except
        ``--fg-threshold`` when it is left to the weights."""
        args = ["--threshold", f"{self.threshold:g}"]
        if self.fg_threshold is not None:
            args += ["--fg-threshold", f"{self.fg_threshold:g}"]
        args += ["--min-size", str(int(self.min_size)), "--small", self.small,
                 "--background-mode", self.background_mode, "--membrane-fill", str(int(self.membrane_fill)),
                 "--scoring", self.scoring]
        if not self.use_foreground:
            args.append("--no-foreground")
        return args

    def provenance(self) -> dict:
        """The ``segment`` record a run writes (JSON-ready)."""
        return dataclasses.asdict(self)

    def agglomerate_kwargs(self, voxel_size: Optional[tuple] = None) -> dict:
        """Keyword arguments for ``segmentation.agglomerate`` / ``segment_blockwise``; ``scoring``
        auto is resolved for ``voxel_size``; ``fg_threshold`` must be resolved first."""
        if self.use_foreground and self.fg_threshold is None:
            raise InputError("fg_threshold is not resolved: take the weights' value first (foreground_threshold_for)")
        kwargs = dict(min_size=int(self.min_size), small=self.small, background_mode=self.background_mode,
                      membrane_fill=int(self.membrane_fill), scoring=resolve_scoring(self.scoring, voxel_size))
        if self.use_foreground:
            kwargs["fg_threshold"] = float(self.fg_threshold)
        return kwargs
