"""Tile geometry for tiled inference: where tiles go (``plan_tiles``), how they blend, and the
network's normalisation statistics shared by every tile (``shared_norm_stats``).

MNet normalises each layer per sample (InstanceNorm), so a tile's output depends on the tile's
own content and size. ``shared_norm_stats`` measures every norm layer's statistics once, on a
region fixed by the volume alone (its centre, ``STATS_REGION`` voxels), and every tile is then
normalised with those: the prediction at a voxel no longer depends on the tile plan beyond the
tile borders (fib25_b, tiles 24x160x160 vs 40x224x224: mean |prediction difference| 0.0223
-> 0.0199, labels VI 0.323 -> 0.286; the rest comes from tile borders and MNet's z resampling).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from .io import InputError

Triple = tuple[int, int, int]
#: MNet pools 4 times in y and x (z is interpolated back to any size)
MNET_TILE_MULTIPLE: Triple = (1, 16, 16)


def tile_multiple(model: Any) -> Triple:
    """The model's ``tile_multiple`` as a (z, y, x) triple (an int applies to every axis)."""
    m = getattr(model, "tile_multiple", MNET_TILE_MULTIPLE)
    t = (int(m),) * 3 if isinstance(m, (int, np.integer)) else tuple(int(v) for v in m)
    if len(t) != 3 or min(t) < 1:
        raise InputError(f"tile_multiple must be a positive int or (z, y, x) triple, got {m!r}")
    return t  # type: ignore[return-value]


BLENDS = ("gaussian", "crop")


@dataclass(frozen=True)
class Tiling:
    """Tile geometry and blending. ``sigma`` is in units of the half tile (coordinates in [-1, 1])."""

    tile: Triple
    overlap: Triple
    sigma: float = 0.5
    floor: float = 1e-3
    #: "gaussian": overlapping tiles blended with a Gaussian weight; "crop": each voxel taken from
    #: the one tile whose border is farthest (the overlap is a halo cropped away, as plantseg does)
    blend: str = "gaussian"

    @property
    def stride(self) -> Triple:
        return tuple(t - o for t, o in zip(self.tile, self.overlap))  # type: ignore[return-value]

    def validate(self, multiple: Triple = MNET_TILE_MULTIPLE) -> None:
        if any(t < 1 for t in self.tile):
            raise InputError(f"Tile size must be positive, got {self.tile}")
        if any(t % m for t, m in zip(self.tile, multiple)):
            if tuple(multiple) == MNET_TILE_MULTIPLE:
                raise InputError(f"Tile y and x must be multiples of 16 (MNet pools 4 times in xy), got {self.tile}")
            raise InputError(f"Tile sizes must be multiples of the network's tile_multiple {tuple(multiple)} "
                             f"(z, y, x), got {self.tile}")
        if any(o < 0 or o >= t for o, t in zip(self.overlap, self.tile)):
            raise InputError(f"Overlap {self.overlap} must be >= 0 and smaller than the tile {self.tile}")
        if self.blend not in BLENDS:
            raise InputError(f"Blend must be one of {BLENDS}, got {self.blend!r}")


#: the official SegNeuron inference setting: each voxel is predicted ~8 times
OFFICIAL_TILING = Tiling(tile=(20, 128, 128), overlap=(10, 64, 64))
#: fixed default (untuned): tiles fitted per volume up to this size, halo cropped (each voxel ~1.5-1.8 times)
DEFAULT_TILING = Tiling(tile=(32, 192, 192), overlap=(8, 32, 32), blend="crop")
#: default on a GPU when the user names no tile: halved in xy on out-of-memory
GPU_TILING = Tiling(tile=(48, 256, 256), overlap=(8, 32, 32))


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis; the last tile ends exactly at ``size`` (``size >= tile``)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def plan_axis(size: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """Tile length and start offsets along one axis, computing each voxel as few times as possible.

    The fewest tiles of at most ``tile`` voxels that overlap by at least ``overlap``; their length
    shrunk to the smallest multiple of ``multiple`` that still covers ``size``; starts spread
    evenly so the first tile starts at 0 and the last ends flush at ``size`` (every overlap about
    equal). An axis shorter than one tile gets one tile rounded up to ``multiple`` (mirror
    padding under one multiple: no tile is mostly padding).
    """
    if size <= tile:
        t = -(-size // multiple) * multiple
        return t, [0]
    overlap = min(overlap, tile - multiple)
    n = -(-(size - overlap) // (tile - overlap))
    t = -(-(size + (n - 1) * overlap) // n)
    t = min(tile, -(-t // multiple) * multiple)
    span = size - t
    return t, [int(round(i * span / (n - 1))) for i in range(n)]


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles go on a volume of ``shape``: the tile size, the start offsets per axis, and
    the blend. Axes shorter than a tile are mirror-padded to ``padded``."""

    shape: Triple
    tile: Triple
    starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    blend: str = "gaussian"
    sigma: float = 0.5
    floor: float = 1e-3

    @property
    def padded(self) -> Triple:
        return tuple(max(s, t) for s, t in zip(self.shape, self.tile))  # type: ignore[return-value]

    @property
    def n_tiles(self) -> int:
        return int(np.prod([len(s) for s in self.starts]))

    @property
    def overcompute(self) -> float:
        """Voxels the network computes per output voxel (1.0 = each voxel exactly once)."""
        return self.n_tiles * float(np.prod(self.tile)) / float(np.prod(self.shape))

    def owned(self, axis: int, i: int) -> tuple[int, int]:
        """The part ``[lo, hi)`` (tile coordinates) of tile ``i`` on ``axis`` that no other tile's
        centre is closer to: the cut between neighbours sits in the middle of their overlap."""
        starts, t = self.starts[axis], self.tile[axis]
        lo = 0 if i == 0 else (starts[i] + starts[i - 1] + t) // 2 - starts[i]
        hi = t if i == len(starts) - 1 else (starts[i + 1] + starts[i] + t) // 2 - starts[i]
        return lo, hi

    def box(self, index: Sequence[int]) -> tuple[slice, slice, slice]:
        """The part of the tile at grid ``index`` that is written (tile coordinates): the whole
        tile when blending, its owned part when cropping."""
        if self.blend == "crop":
            return tuple(slice(*self.owned(axis, i)) for axis, i in enumerate(index))  # type: ignore[return-value]
        return (slice(None),) * 3  # type: ignore[return-value]


def plan_tiles(shape: Sequence[int], tiling: Tiling, multiple: Sequence[int] = MNET_TILE_MULTIPLE,
               fit: bool = True) -> TilePlan:
    """The ``TilePlan`` for a volume: fitted (``plan_axis``) or, with ``fit=False``, the fixed
    tiling and stride of ``tiling`` with the last tile flush (the official placement)."""
    shape_t = tuple(int(s) for s in shape)
    if fit:
        axes = [plan_axis(n, t, o, m) for n, t, o, m in zip(shape_t, tiling.tile, tiling.overlap, multiple)]
        tile = tuple(a[0] for a in axes)
        starts = tuple(tuple(a[1]) for a in axes)
    else:
        tile = tuple(min(t, -(-n // m) * m) for n, t, m in zip(shape_t, tiling.tile, multiple))
        padded = tuple(max(n, t) for n, t in zip(shape_t, tile))
        starts = tuple(tuple(tile_starts(p, t, t - min(o, t - 1))) for p, t, o in zip(padded, tile, tiling.overlap))
    return TilePlan(shape_t, tile, starts, tiling.blend, tiling.sigma, tiling.floor)  # type: ignore[arg-type]


def gaussian_weight(shape: Sequence[int], sigma: float = 0.5, floor: float = 1e-3) -> np.ndarray:
    """Separable Gaussian over coordinates in [-1, 1] per axis, never below ``floor``."""
    w = np.ones((1, 1, 1), dtype=np.float64)
    for axis, n in enumerate(shape):
        coords = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
        profile = np.exp(-(coords**2) / (2.0 * sigma**2))
        w = w * profile.reshape([-1 if a == axis else 1 for a in range(3)])
    return np.maximum(w, floor).astype(np.float32)



#: the region (z, y, x voxels, centred on the volume, clipped to it) whose statistics normalise
#: every tile: the default tile size, so a volume of one default tile is normalised as before
STATS_REGION: Triple = (32, 192, 192)


def stats_region(shape: Sequence[int], multiple: Sequence[int] = MNET_TILE_MULTIPLE) -> tuple[slice, slice, slice]:
    """The centred box of at most ``STATS_REGION`` voxels (a multiple of ``multiple`` where the
    volume allows) whose norm statistics ``shared_norm_stats`` measures; fixed by the shape alone."""
    out = []
    for n, r, m in zip(shape, STATS_REGION, multiple):
        size = min(int(n), int(r))
        size = max(min(size, size // m * m), 1) if size >= m else size
        lo = (int(n) - size) // 2
        out.append(slice(lo, lo + size))
    return tuple(out)  # type: ignore[return-value]


def _norm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)]


def _frozen_forward(norm: torch.nn.Module, stats: dict) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        mean, var = stats[id(norm)]
        scale = torch.rsqrt(var + norm.eps)
        shift = -mean * scale
        if norm.affine:
            scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))
    return forward


def _collect_forward(norm: torch.nn.Module, stats: dict) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        xf = x.float()
        mean = xf.mean(dim=(0,) + dims)
        var = (xf - mean.view((1, -1) + (1,) * len(dims))).square().mean(dim=(0,) + dims)
        stats[id(norm)] = (mean, var)
        return _frozen_forward(norm, stats)(x)
    return forward


@contextmanager
def shared_norm_stats(model: torch.nn.Module, region: Optional[torch.Tensor],
                      run: Optional[Callable[[torch.Tensor], Any]] = None) -> Iterator[bool]:
    """Within the block, every instance-norm layer of ``model`` normalises with the statistics it
    had on ``region`` (an ``(1, 1, Z, Y, X)`` input, run once on entry) instead of each input's
    own (``run(region)``, default ``model(region)``); yields whether the model has such layers. ``region=None`` or a model without instance
    norms leaves the model as it is."""
    norms = _norm_layers(model) if region is not None else []
    if not norms:
        yield False
        return
    stats: dict = {}
    try:
        for m in norms:
            m.external_stats = True  # MNet's channels-last fast path then defers to the norm module
            m.forward = _collect_forward(m, stats)
        with torch.no_grad():
            (run or model)(region)
        for m in norms:
            if id(m) not in stats:
                raise InputError("The network skipped a norm layer while measuring its statistics")
            m.forward = _frozen_forward(m, stats)
        yield True
    finally:
        for m in norms:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("external_stats", None)
