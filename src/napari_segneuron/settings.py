"""Typed settings of the predict and segment steps: one definition of each setting and its default.

``PredictSettings`` and ``SegmentSettings`` are each built once from the command line (``from_args``), from a dock's fields
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
from .tta import DEFAULT_TTA, tta_mode
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


AUTO = "auto"


def _triple(value, name: str) -> Optional[tuple[int, int, int]]:
    """None, or three positive integers (z, y, x)."""
    if value is None:
        return None
    try:
        t = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be three integers z,y,x, got {value!r}") from None
    if len(t) != 3 or min(t) < (0 if name == "overlap" else 1):
        raise InputError(f"{name} must be three {'non-negative' if name == 'overlap' else 'positive'} "
                         f"integers z,y,x, got {value!r}")
    return t


@dataclass(frozen=True)
class PredictSettings:
    """How a stack becomes affinities and foreground.

    ``tile`` / ``overlap`` / ``batch_size`` None: the predictor's fitted plan. ``magnify`` ``"auto"``:
    estimated from the image (``scale_estimate``), 1: the stack as it is. ``tta``: False (off),
    "min" or "mean" over the four flips.
    """

    tile: Optional[tuple[int, int, int]] = None
    overlap: Optional[tuple[int, int, int]] = None
    batch_size: Optional[int] = None
    device: str = "auto"
    half: bool = False
    tta: Any = DEFAULT_TTA
    magnify: Any = AUTO
    model_voxel_size: Optional[tuple[float, float, float]] = None
    official_tiling: bool = False
    autotune: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", _triple(self.tile, "tile"))
        object.__setattr__(self, "overlap", _triple(self.overlap, "overlap"))
        object.__setattr__(self, "tta", tta_mode(self.tta))
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", int(self.batch_size) or None)
        if self.model_voxel_size is not None:
            object.__setattr__(self, "model_voxel_size", tuple(float(v) for v in self.model_voxel_size))
        if self.magnify != AUTO:
            object.__setattr__(self, "magnify", float(self.magnify))

    def validate(self) -> "PredictSettings":
        """Raise ``InputError`` naming the first setting out of range; return self."""
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise InputError(f"device must be auto, cpu, cuda or mps, not {self.device!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.magnify != AUTO and not 0.0 < self.magnify < float("inf"):
            raise InputError(f"magnify must be 'auto' or a positive number, got {self.magnify!r}")
        if self.model_voxel_size is not None and (len(self.model_voxel_size) != 3 or min(self.model_voxel_size) <= 0):
            raise InputError(f"model_voxel_size must be three positive numbers, got {self.model_voxel_size!r}")
        return self

    def replace(self, **changes: Any) -> "PredictSettings":
        return dataclasses.replace(self, **changes).validate()

    @property
    def magnify_is_auto(self) -> bool:
        return self.magnify == AUTO

    # -- the three forms -------------------------------------------------------------------
    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PredictSettings":
        """From the parsed arguments of ``predict`` / ``segment`` / ``calibrate``."""
        get = lambda name, default=None: getattr(args, name, default)  # noqa: E731 - subcommands differ
        return cls(
            tile=get("tile"), overlap=get("overlap"), batch_size=get("batch_size"), device=get("device") or "auto",
            half=bool(get("half")), tta=get("tta", False), magnify=get("magnify", 1.0) or 1.0,
            model_voxel_size=get("model_voxel_size"), official_tiling=bool(get("official_tiling")),
            autotune=bool(get("autotune")),
        ).validate()

    @classmethod
    def from_provenance(cls, prov: Mapping[str, Any]) -> "PredictSettings":
        """From a run's ``predict`` provenance record; missing entries take their defaults, except
        flips: a record without ``tta`` ran without them. The magnification is the one the run
        used (an 'auto' estimate's result); 'auto' only when none was resolved."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in prov.items() if k in names and v is not None}
        values.setdefault("tta", False)
        if "magnify" not in values:
            values["magnify"] = AUTO if prov.get("magnify_auto", True) else 1.0
        return cls(**values).validate()

    def cli_args(self) -> list[str]:
        """The flags that reproduce these settings; ``--tta`` and a hand-chosen ``--magnify`` are
        always spelled out (the command line's defaults may differ from a dock's)."""
        args: list[str] = []
        if self.tile:
            args += ["--tile", ",".join(str(v) for v in self.tile)]
        if self.overlap:
            args += ["--overlap", ",".join(str(v) for v in self.overlap)]
        if self.batch_size:
            args += ["--batch-size", str(self.batch_size)]
        if self.device != "auto":
            args += ["--device", self.device]
        if self.half:
            args.append("--half")
        args += ["--tta", self.tta or "off"]
        if not self.magnify_is_auto:
            args += ["--magnify", f"{self.magnify:g}"]
        if self.model_voxel_size:
            args += ["--model-voxel-size", ",".join(f"{v:g}" for v in self.model_voxel_size)]
        if self.official_tiling:
            args.append("--official-tiling")
        return args

    def provenance(self) -> dict:
        """The ``predict`` record a run writes (JSON-ready; 'auto' magnify as ``magnify_auto``)."""
        rec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
        rec["magnify_auto"] = self.magnify_is_auto
        if self.magnify_is_auto:
            rec["magnify"] = None
        return rec

    def predictor(self, model):
        """A ``Predictor`` for ``model`` with these settings."""
        from .inference import OFFICIAL_TILING, Predictor  # here, so settings load without torch

        return Predictor(
            model, model_voxel_size=self.model_voxel_size, tile=self.tile, overlap=self.overlap,
            batch_size=self.batch_size, device=None if self.device == "auto" else self.device, half=self.half,
            tiling=OFFICIAL_TILING if self.official_tiling else None, tta=self.tta,
            tune="force" if self.autotune else "auto",
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
