"""Block and halo geometry for blockwise (out-of-core, distributed) processing.

A volume is cut into a grid of disjoint *blocks* (the "core" each task owns and writes);
a task reads its block plus a *halo* of context around it. Two halos are used:

- prediction: the halo is whatever the *global* tile grid of the in-memory predictor needs
  (``tiles_touching`` over ``Predictor.plan``): every tile that touches the block is run and blended exactly as
  ``Predictor.predict`` blends it over the whole volume, so the cropped block equals the
  whole-volume prediction up to float rounding, whatever the network's receptive field;
- segmentation: a fixed margin of context voxels (``Block.outer``), clipped at the volume.

Block ids are flat C-order indices into the grid; ``Block.index`` is the (z, y, x) grid
position. Output arrays are chunked with the block shape, so every block is exactly one
chunk and has exactly one writer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from .io import InputError

Triple = tuple[int, int, int]


def as_triple(value: int | Sequence[int], name: str) -> Triple:
    """``value`` as three positive ints (one int applies to all axes)."""
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * 3
    t = tuple(int(v) for v in value)
    if len(t) != 3 or min(t) < 1:
        raise InputError(f"{name} needs three positive numbers (z, y, x), got {value!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class Block:
    """One block: ``id``, grid ``index``, ``core`` slices (what it owns) and ``outer``
    slices (core plus halo, clipped to the volume)."""

    id: int
    index: Triple
    core: tuple[slice, slice, slice]
    outer: tuple[slice, slice, slice]

    @property
    def core_in_outer(self) -> tuple[slice, slice, slice]:
        """The core's position inside an array read at ``outer``."""
        return tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(self.core, self.outer))  # type: ignore[return-value]

    @property
    def shape(self) -> Triple:
        return tuple(s.stop - s.start for s in self.core)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """A readable id for messages: ``id (z,y,x)``."""
        return f"{self.id} {self.index}"


@dataclass(frozen=True)
class BlockGrid:
    """A volume ``shape`` cut into blocks of ``block`` voxels (the last ones smaller), with
    ``halo`` context voxels on each side."""

    shape: Triple
    block: Triple
    halo: Triple = (0, 0, 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", as_triple(self.shape, "volume shape"))
        object.__setattr__(self, "block", as_triple(self.block, "block"))
        halo = tuple(int(h) for h in self.halo)
        if len(halo) != 3 or min(halo) < 0:
            raise InputError(f"halo needs three non-negative numbers, got {self.halo!r}")
        object.__setattr__(self, "halo", halo)

    @property
    def grid_shape(self) -> Triple:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block))  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(np.prod(self.grid_shape))

    def __iter__(self) -> Iterator[Block]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, block_id: int) -> Block:
        n = len(self)
        if not 0 <= block_id < n:
            raise IndexError(f"block id {block_id} outside 0..{n - 1}")
        index = tuple(int(i) for i in np.unravel_index(block_id, self.grid_shape))
        core = tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, self.block, self.shape))
        outer = tuple(slice(max(c.start - h, 0), min(c.stop + h, s)) for c, h, s in zip(core, self.halo, self.shape))
        return Block(int(block_id), index, core, outer)  # type: ignore[arg-type]

    def block_at(self, index: Sequence[int]) -> Block:
        return self[int(np.ravel_multi_index(tuple(index), self.grid_shape))]


def grid_for(shape: Sequence[int], block: Sequence[int] | int, halo: Sequence[int] | int = 0) -> BlockGrid:
    """A ``BlockGrid`` with the block clipped to the volume (so small volumes are one block)."""
    shape_t = as_triple(tuple(shape), "volume shape")
    block_t = tuple(min(b, s) for b, s in zip(as_triple(block, "block"), shape_t))
    halo_t = (int(halo),) * 3 if isinstance(halo, (int, np.integer)) else tuple(int(h) for h in halo)
    return BlockGrid(shape_t, block_t, halo_t)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# the predictor's global tile grid


def _axis_box(plan, axis: int, i: int) -> tuple[int, int]:
    """Tile ``i``'s written part along ``axis`` in volume coordinates."""
    index = [0, 0, 0]
    index[axis] = i
    b = plan.box(tuple(index))[axis]
    t = plan.tile[axis]
    s = plan.starts[axis][i]
    lo, hi, _ = b.indices(t)
    return s + lo, s + hi


def tiles_touching(plan, core: Sequence[slice]) -> tuple[list[list[int]], tuple[slice, slice, slice]]:
    """For a tile plan (``inference.TilePlan``: ``tile``, ``starts``, ``box``):
    the tile indices per axis whose written part meets ``core``, and the region (padded
    coordinates) those tiles read: the block's prediction halo."""
    per_axis = []
    region = []
    for axis, c in enumerate(core):
        hit = []
        for i in range(len(plan.starts[axis])):
            lo, hi = _axis_box(plan, axis, i)
            if lo < c.stop and hi > c.start:
                hit.append(i)
        per_axis.append(hit)
        region.append(slice(plan.starts[axis][hit[0]], plan.starts[axis][hit[-1]] + plan.tile[axis]))
    return per_axis, tuple(region)  # type: ignore[return-value]


def tiles_run(plan, grid: BlockGrid) -> int:
    """Tiles run in total when each block of ``grid`` runs every tile whose written part meets
    it (tiles across block faces run once per block they serve)."""
    counts = []
    for axis in range(3):
        per_block = []
        for g in range(grid.grid_shape[axis]):
            lo = g * grid.block[axis]
            hi = min(lo + grid.block[axis], grid.shape[axis])
            per_block.append(sum(1 for i in range(len(plan.starts[axis]))
                                 if _axis_box(plan, axis, i)[0] < hi and _axis_box(plan, axis, i)[1] > lo))
        counts.append(per_block)
    return int(np.prod([sum(c) for c in counts]))


def predictor_plan(predictor, shape: Sequence[int]):
    """Where a ``Predictor`` puts its tiles on a volume of ``shape`` (``Predictor.plan``)."""
    return predictor.plan(tuple(int(s) for s in shape))


def normalise_region(volume, region: Sequence[slice], shape: Triple, offset: float, scale: float) -> np.ndarray:
    """Read ``region`` (padded coordinates) of ``volume`` as float32 in [0, 1], mirror-padding
    beyond the volume's end as the predictor does for axes smaller than a tile."""
    read = tuple(slice(r.start, min(r.stop, s)) for r, s in zip(region, shape))
    block = _read(volume, read).astype(np.float32, copy=False)
    block = (block - np.float32(offset)) / np.float32(scale)
    np.nan_to_num(block, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(block, 0.0, 1.0, out=block)
    pads = tuple((0, max(0, r.stop - s)) for r, s in zip(region, shape))
    if any(p[1] for p in pads):
        block = np.pad(block, pads, mode="reflect" if min(block.shape) > 1 else "edge")
    return np.ascontiguousarray(block, dtype=np.float32)


def _read(volume, region: Sequence[slice]) -> np.ndarray:
    part = volume[tuple(region)]
    if hasattr(part, "compute"):  # dask: read here, in this task, without another scheduler
        part = part.compute(scheduler="synchronous")
    return np.asarray(part)


def read_region(volume, region: Sequence[slice], dtype: Optional[np.dtype] = None) -> np.ndarray:
    """``volume[region]`` as a numpy array (zarr, dask, numpy or any array-like)."""
    out = _read(volume, region)
    return out if dtype is None else out.astype(dtype, copy=False)
