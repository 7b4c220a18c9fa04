"""What a loaded model is and what its weights declare: one typed record, ``model.info``.

``ModelInfo`` has a typed attribute for every entry the package reads (name, file, hash,
architecture, the declared voxel size and foreground threshold, …) and still behaves as a
mapping (``info["name"]``, ``info.get("fg_threshold")``, ``{**info}``), so scripts written
against the plain dict keep working. ``ModelInfo.of(model)`` reads any model's record, including
a plain dict someone assigned to ``model.info``.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any, Optional

VoxelSize = tuple[float, float, float]


def _voxel_or_none(value) -> Optional[VoxelSize]:
    """Three positive numbers as a tuple of floats, else None."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        v = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        return None
    return v if len(v) == 3 and all(x > 0 for x in v) else None


def _fraction_or_none(value) -> Optional[float]:
    """A number in [0, 1], else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if 0.0 <= v <= 1.0 else None


def _positive_or_none(value) -> Optional[float]:
    """A positive finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if 0.0 < v < float("inf") else None


@dataclass(eq=False)  # equality and hashing as a mapping
class ModelInfo(MutableMapping):
    """A loaded model's record: where it came from and what its checkpoint declares."""

    name: Optional[str] = None
    path: Optional[str] = None
    sha256: Optional[str] = None
    family: Optional[str] = None
    kn: Optional[tuple[int, ...]] = None
    fmu: Optional[str] = None
    in_channels: Optional[int] = None
    arch: Optional[dict] = None
    n_parameters: int = 0
    device: str = "cpu"
    #: the voxel size (z, y, x nm) the weights were trained at, None when they declare none
    voxel_size_nm: Optional[VoxelSize] = None
    #: the foreground threshold the weights recommend, None when they declare none
    fg_threshold: Optional[float] = None
    #: the model's neurite half-width on its training data at their true scale (scale_estimate)
    neurite_halfwidth: Optional[float] = None
    iters: int = 0
    #: the checkpoint's own metadata, as saved
    metadata: dict = field(default_factory=dict)
    #: entries outside the typed ones (kept so nothing assigned is lost)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.voxel_size_nm = _voxel_or_none(self.voxel_size_nm)
        self.fg_threshold = _fraction_or_none(self.fg_threshold)
        self.neurite_halfwidth = _positive_or_none(self.neurite_halfwidth)
        if self.kn is not None:
            self.kn = tuple(int(k) for k in self.kn)
        self.metadata = dict(self.metadata or {})

    # -- building --------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping) -> "ModelInfo":
        """A record from a plain mapping (unknown keys go to ``extra``)."""
        typed = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in values.items() if k in typed}
        extra = {**dict(values.get("extra") or {}), **{k: v for k, v in values.items() if k not in typed and k != "extra"}}
        return cls(**known, extra=extra)

    @classmethod
    def of(cls, source: Any) -> "ModelInfo":
        """The record of a model (its ``info``), of a mapping, or an empty one for anything else."""
        info = getattr(source, "info", source)
        if isinstance(info, ModelInfo):
            return info
        if isinstance(info, Mapping):
            return cls.from_mapping(info)
        return cls()

    def to_dict(self) -> dict:
        """A plain dict of every entry (typed and extra)."""
        return dict(self.items())

    # -- reading what the weights declare ---------------------------------------------------
    @property
    def trained_magnify(self) -> Optional[float]:
        """The magnification the weights were adapted at (``metadata['magnify']``), if any."""
        return _positive_or_none(self.metadata.get("magnify"))

    def provenance(self) -> dict:
        """The weights' entries a prediction's provenance records."""
        return {"weights": self.name, "weights_sha256": self.sha256, "model_fg_threshold": self.fg_threshold}

    # -- the mapping view ------------------------------------------------------------------
    def _typed(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "extra"]

    def __getitem__(self, key: str):
        if key in self._typed():
            return getattr(self, key)
        if key in self.extra:
            return self.extra[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value) -> None:
        if key in self._typed():
            setattr(self, key, value)
            self.__post_init__()
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._typed():
            default = next(f for f in fields(self) if f.name == key)
            setattr(self, key, default.default_factory() if callable(default.default_factory) else default.default)
        else:
            del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from self._typed()
        yield from self.extra

    def __len__(self) -> int:
        return len(self._typed()) + len(self.extra)
