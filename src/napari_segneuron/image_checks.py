"""Is there anything to segment? Warnings for images that cannot hold neurons.

SegNeuron happily turns any array into "neurons": a constant image or pure noise gives a
labels layer that looks like a result. ``content_warning`` looks at a few central slabs
and returns a message (or None):

* constant: every sampled voxel has the same value;
* noise: neighbouring pixels are uncorrelated. Measured here (lag-1 correlation along y
  and x, central 8x256x256): FIB-25 crops 0.87-0.95, ISBI 2012 0.86, LSD crops 0.96; the
  same stacks sampled every 4th pixel 0.36-0.79; uniform white noise 0.00. Below
  ``NOISE_CORRELATION`` (0.15) the image is called noise.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

NOISE_CORRELATION = 0.15
SAMPLE_SHAPE = (8, 256, 256)


def _central_slabs(volume: Any, n_slabs: int = 3) -> list[np.ndarray]:
    """Up to ``n_slabs`` (z, y, x) blocks of at most SAMPLE_SHAPE at 1/4, 1/2, 3/4 of the depth."""
    shape = tuple(int(s) for s in volume.shape)
    z, y, x = shape[-3:] if len(shape) >= 3 else (1,) + shape[-2:]
    dz, dy, dx = (min(a, b) for a, b in zip(SAMPLE_SHAPE, (z, y, x)))
    y0, x0 = (y - dy) // 2, (x - dx) // 2
    starts = sorted({int(round(f * z - dz / 2)) for f in ((0.5,) if n_slabs == 1 else (0.25, 0.5, 0.75))})
    out = []
    for z0 in starts:
        z0 = min(max(z0, 0), z - dz)
        block = volume[z0:z0 + dz, y0:y0 + dy, x0:x0 + dx] if len(shape) >= 3 else volume[None, y0:y0 + dy, x0:x0 + dx]
        out.append(np.asarray(block, dtype=np.float64))
    return out


def neighbour_correlation(block: np.ndarray) -> float:
    """The larger of the lag-1 intensity correlations along y and x (1 = smooth, 0 = white noise)."""
    best = -1.0
    for axis in (-1, -2):
        if block.shape[axis] < 2:
            continue
        a = np.moveaxis(block, axis, -1)
        u, v = a[..., :-1].ravel(), a[..., 1:].ravel()
        ok = np.isfinite(u) & np.isfinite(v)
        u, v = u[ok] - u[ok].mean(), v[ok] - v[ok].mean()
        den = np.sqrt((u * u).mean() * (v * v).mean()) if u.size else 0.0
        if den > 0:
            best = max(best, float((u * v).mean() / den))
    return best


def content_warning(volume: Any, name: str = "image") -> Optional[str]:
    """A message when ``volume`` (z, y, x) looks constant or like noise; None when it looks like an image."""
    blocks = _central_slabs(volume)
    values = np.concatenate([b[np.isfinite(b)].ravel() for b in blocks])
    if values.size == 0:
        return None  # all non-finite: io.check_finite refuses it with its own message
    if float(values.max()) == float(values.min()):
        return (f"The {name} is constant (every sampled voxel is {values[0]:g}): there is nothing to segment. "
                "Check that the right layer/file is selected.")
    r = max(neighbour_correlation(b) for b in blocks)
    if r < NOISE_CORRELATION:
        return (f"The {name} looks like noise: neighbouring pixels are uncorrelated (r = {r:.2f}; EM images "
                "give 0.35-0.95). The 'neurons' SegNeuron finds in it would be meaningless; check the layer, or "
                "denoise/bin the stack first.")
    return None
