"""Predicting at the model's voxel size: resample in, predict, resample back, slab by slab.

A model sees the world at the voxel size it was trained at. When the input's voxel size
differs from the model's by more than ``DEFAULT_TOLERANCE`` (relative, on any axis), the
input is resampled to the model grid, predicted there, and the affinities and foreground
are resampled back onto the input grid.

- Grids are aligned on voxel centres: input index ``i`` sits at model coordinate
  ``(i + 0.5) * in / model - 0.5``.
- Input: Gaussian anti-aliasing (sigma = (factor - 1) / 2 per shrunk axis, as scikit-image
  does), then linear interpolation. Outputs back: nearest neighbour onto a finer input grid
  (linear interpolation would lift the low affinities on membranes and cause merges:
  fib25_b 2x finer, VI 1.38 linear vs 1.21 nearest), linear onto a coarser one.
- Work goes in slabs along z with a halo of model slices on each side, so memory holds one
  slab of the model grid at a time, not the whole resampled volume.
- Intensities are normalised once for the whole volume before resampling, so slabs agree.
- Segmenting: agglomerate the model-grid prediction (``predict(..., model_grid={})`` keeps
  it) and carry the fragments to the input grid by nearest neighbour
  (``Agglomeration.on_grid``). Watershed on interpolated affinities sees membranes that
  are either doubled or blurred; fib25_b 2x finer in xy (benchmarks/bench_voxel_size.py,
  package defaults): VI +16% vs native on the model grid, +51% when segmenting the
  resampled affinities, +84% with the voxel size not given.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .cancel import CancelToken, check
from .io import InputError, as_volume

Voxel = tuple[float, float, float]
#: resample only when some axis differs by more than this fraction
DEFAULT_TOLERANCE = 0.15
#: input voxels per slab (32 MiB as float32): bounds memory independently of the volume's depth
SLAB_VOXELS = 2**23


def parse_voxel_size(value: Optional[Sequence[float]], name: str = "voxel size") -> Optional[Voxel]:
    if value is None:
        return None
    v = tuple(float(x) for x in value)
    if len(v) != 3 or not all(math.isfinite(x) and x > 0 for x in v):
        raise InputError(f"The {name} must be three positive numbers (z, y, x in nm), got {value!r}")
    return v  # type: ignore[return-value]


def voxel_size_from_scale(scale: Sequence[float]) -> Optional[Voxel]:
    """Voxel size in nm from a napari layer's ``scale`` (last three axes).

    napari scales carry no unit: all ones means "unknown"; values below 0.5 are taken
    as micrometres, anything else as nanometres.
    """
    s = tuple(float(x) for x in tuple(scale)[-3:])
    if len(s) < 3:
        s = (1.0,) * (3 - len(s)) + s
    if all(abs(x - 1.0) < 1e-9 for x in s):
        return None
    if max(s) < 0.5:
        return tuple(x * 1000.0 for x in s)  # type: ignore[return-value]
    return s  # type: ignore[return-value]


def needs_resampling(voxel: Optional[Voxel], model_voxel: Optional[Voxel], tolerance: float = DEFAULT_TOLERANCE) -> bool:
    if voxel is None or model_voxel is None:
        return False
    return any(abs(v / m - 1.0) > tolerance for v, m in zip(voxel, model_voxel))


def model_grid_shape(shape: Sequence[int], voxel: Voxel, model_voxel: Voxel) -> tuple[int, int, int]:
    return tuple(max(1, int(round(n * v / m))) for n, v, m in zip(shape, voxel, model_voxel))  # type: ignore[return-value]


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """For each of ``n_out`` voxels spanning the same extent as ``n_in``, the nearest input voxel (centres aligned)."""
    f = n_in / n_out
    return np.clip(np.floor((np.arange(n_out) + 0.5) * f).astype(np.int64), 0, n_in - 1)


def resize_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label volume to ``shape`` (same physical extent); ids kept exactly."""
    labels = np.asarray(labels)
    if tuple(labels.shape) == tuple(shape):
        return labels
    iz, iy, ix = (nearest_indices(a, b) for a, b in zip(labels.shape, shape))
    out = np.empty(tuple(shape), labels.dtype)
    rows_cols = np.ix_(iy, ix)
    for o, i in enumerate(iz):  # slice by slice: one output slice of scratch memory
        out[o] = labels[i][rows_cols]
    return out


def resample_image(volume: np.ndarray, voxel: Voxel, model_voxel: Voxel) -> np.ndarray:
    """A whole (small) stack moved to the model grid: Gaussian anti-aliasing on shrunk axes, then
    linear interpolation, centres aligned as in prediction. Keeps the dtype (integers rounded and
    clipped), so a resampled training block is normalised exactly like the original."""
    a = np.asarray(volume)
    factors = [m / v for v, m in zip(voxel, model_voxel)]  # input voxels per model voxel
    shape = model_grid_shape(a.shape, voxel, model_voxel)
    work = a.astype(np.float32)
    sigmas = [max(0.0, (f - 1.0) / 2.0) for f in factors]
    if any(sigmas):
        from scipy import ndimage  # imported when needed: 0.3 s off every predict that does not resample

        work = ndimage.gaussian_filter(work, sigmas, mode="nearest")
    out = _resample_block(work, factors, (0, 0, 0), (0, 0, 0), shape)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(a.dtype)


def _resample_block(block: np.ndarray, factors: Sequence[float], start_in: Sequence[float],
                    start_out: Sequence[float], out_shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resampling: output index o (offset ``start_out``) reads input coordinate
    ``(o + start_out + 0.5) * f - 0.5 - start_in`` (``order`` 1 linear, 0 nearest)."""
    offset = [(so + 0.5) * f - 0.5 - si for so, f, si in zip(start_out, factors, start_in)]
    from scipy import ndimage

    return ndimage.affine_transform(block, np.asarray(factors, dtype=np.float64), offset=offset,
                                    output_shape=tuple(out_shape), order=order, mode="nearest", prefilter=False)


def predict_resampled(
    predictor: Any,
    volume: Any,
    voxel_size: Voxel,
    model_voxel_size: Voxel,
    progress: Optional[Callable[..., None]] = None,
    cancel: Optional[CancelToken] = None,
    out: Optional[dict] = None,
    dtype: Any = np.float32,
    slab: Optional[int] = None,
    halo: Optional[int] = None,
    model_grid: Optional[dict] = None,
) -> tuple[Any, Any]:
    """Predict ``volume`` (voxel size ``voxel_size``) with a model trained at ``model_voxel_size``.

    ``model_grid``: a dict that receives the prediction on the model's grid as well
    (``affinities``, ``foreground``, ``voxel_size``), for segmenting there.
    """
    from .io import intensity_scale

    volume = as_volume(volume)
    shape = tuple(int(s) for s in volume.shape)
    mshape = model_grid_shape(shape, voxel_size, model_voxel_size)
    scale_in = [m / v for v, m in zip(voxel_size, model_voxel_size)]  # input voxels per model voxel
    tz = predictor.tiling.tile[0]
    if slab is None:  # model slices per slab core: about SLAB_VOXELS input voxels, at least one tile deep
        slab = max(tz, int(SLAB_VOXELS / (shape[1] * shape[2]) / scale_in[0]))
    halo = tz // 2 if halo is None else halo
    sigmas = [max(0.0, (f - 1.0) / 2.0) for f in scale_in]
    pad = [int(math.ceil(3 * s)) + 2 for s in sigmas]
    lo_val, span = intensity_scale(volume)
    if out is None:
        out = {"affinities": np.empty((3,) + shape, dtype=dtype), "foreground": np.empty(shape, dtype=dtype)}
    if model_grid is not None:
        model_grid.update(affinities=np.empty((3,) + mshape, dtype=dtype), foreground=np.empty(mshape, dtype=dtype),
                          voxel_size=tuple(model_voxel_size))

    # input z index -> model z coordinate
    def m_of(i: float) -> float:
        return (i + 0.5) / scale_in[0] - 0.5

    def i_of(m: float) -> float:
        return (m + 0.5) * scale_in[0] - 0.5

    core_in = max(1, int(round(slab * scale_in[0])))
    chunks = [(z, min(z + core_in, shape[0])) for z in range(0, shape[0], core_in)]
    for n, (iz0, iz1) in enumerate(chunks):
        check(cancel)
        m_lo = max(0, int(math.floor(m_of(iz0))) - halo)
        m_hi = min(mshape[0], int(math.ceil(m_of(iz1 - 1))) + 1 + halo)
        in_lo = max(0, int(math.floor(i_of(m_lo))) - pad[0])
        in_hi = min(shape[0], int(math.ceil(i_of(m_hi - 1))) + 1 + pad[0])
        block = np.array(volume[in_lo:in_hi], dtype=np.float32)
        block -= lo_val
        block /= span
        np.nan_to_num(block, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
        np.clip(block, 0.0, 1.0, out=block)
        if any(sigmas):
            from scipy import ndimage

            block = ndimage.gaussian_filter(block, sigmas, mode="nearest")
        model_block = _resample_block(block, scale_in, (in_lo, 0, 0), (m_lo, 0, 0), (m_hi - m_lo,) + mshape[1:])
        del block

        def slab_progress(done: int, total: int, message: str = "", _n=n) -> None:
            if progress is not None:
                progress(_n * 1000 + int(1000 * done / max(total, 1)), len(chunks) * 1000,
                         f"slab {_n + 1}/{len(chunks)}: {message}")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aff, fg = predictor.predict(model_block, progress=slab_progress, cancel=cancel)
        if model_grid is not None:  # this slab's share of the model grid (edges at iz / scale)
            c0 = min(mshape[0], int(round(iz0 / scale_in[0])))
            c1 = mshape[0] if n == len(chunks) - 1 else min(mshape[0], int(round(iz1 / scale_in[0])))
            model_grid["affinities"][:, c0:c1] = aff[:, c0 - m_lo:c1 - m_lo]
            model_grid["foreground"][c0:c1] = fg[c0 - m_lo:c1 - m_lo]
        back = [1.0 / f for f in scale_in]
        target = (iz1 - iz0,) + shape[1:]
        order = 0 if max(back) <= 1.0 and min(back) < 1.0 else 1  # nearest onto a finer grid keeps membranes' low affinities
        for c in range(len(aff)):  # any number of channels (predict_raw)
            out["affinities"][c, iz0:iz1] = _resample_block(aff[c], back, (m_lo, 0, 0), (iz0, 0, 0), target, order)
        out["foreground"][iz0:iz1] = _resample_block(fg, back, (m_lo, 0, 0), (iz0, 0, 0), target, order)
    return out["affinities"], out["foreground"]
