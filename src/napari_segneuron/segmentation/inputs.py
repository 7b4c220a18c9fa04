"""Checking and preparing the inputs of an agglomeration: affinities, boundary maps, foreground."""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..io import InputError

# inputs


def affinities_from_boundaries(boundary: np.ndarray, scale: Optional[float] = None) -> np.ndarray:
    """Affinities (3,Z,Y,X) float32 from a boundary-probability map.

    The edge between a voxel and its lower neighbour along z, y or x gets
    ``1 - max(p(voxel), p(neighbour))``; edges leaving the volume get ``1 - p(voxel)``.
    ``scale`` divides ``boundary`` first (default: 255 for uint8 maps, else 1).
    """
    b = np.asarray(boundary)
    if b.ndim != 3:
        raise InputError(f"A boundary map must be 3-D (z, y, x), not {b.shape}")
    if scale is None:
        scale = 255.0 if b.dtype == np.uint8 else 1.0
    p = b.astype(np.float32) / np.float32(scale)
    aff = np.empty((3,) + p.shape, np.float32)
    for c in range(3):
        m = p.copy()
        lead = [slice(None)] * 3
        prev = [slice(None)] * 3
        lead[c] = slice(1, None)
        prev[c] = slice(None, -1)
        np.maximum(m[tuple(lead)], p[tuple(prev)], out=m[tuple(lead)])
        np.subtract(1.0, m, out=aff[c])
    return aff


def _as_affinities(affinities: Any) -> np.ndarray:
    aff = np.asarray(affinities)
    if aff.ndim != 4 or aff.shape[0] != 3:
        raise InputError(
            f"Affinities must have the shape (3, Z, Y, X) with channels z, y, x; got {aff.shape}"
        )
    if min(aff.shape[1:]) < 1:
        raise InputError(f"Affinities are empty: {aff.shape}")
    if aff.dtype.kind not in "fiub":
        raise InputError(f"Affinities must be numbers, not {aff.dtype}")
    if aff.dtype == np.uint8:
        aff = aff.astype(np.float32) / np.float32(255)
    return aff


def _check_unit_range(arr: np.ndarray, name: str) -> bool:
    """Raise for NaN or values clearly outside [0, 1]; True if rounding noise needs clipping."""
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if math.isnan(lo) or math.isnan(hi):
        raise InputError(f"The {name} contain NaN values")
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise InputError(
            f"The {name} must be probabilities in [0, 1]; found values in [{lo:.3g}, {hi:.3g}] "
            "(logits? apply a sigmoid first)"
        )
    return lo < 0.0 or hi > 1.0


def restrict_to_foreground(
    affinities: np.ndarray,
    foreground: np.ndarray,
    fg_threshold: float,
    out: Optional[np.ndarray] = None,
    exclude_background: bool = True,
    cut_background: bool = False,
) -> np.ndarray:
    """SegNeuron's foreground restriction; returns the background mask (foreground < fg_threshold).

    ``out`` (3,Z,Y,X) float32 receives ``min(affinity, foreground)`` per channel (``out``
    may be ``affinities`` itself when that is float32).  Then, for background voxels:
    ``exclude_background`` sets every edge touching one to 0 (waterz's watershed leaves
    them at 0); otherwise ``cut_background`` sets only edges between two background voxels
    (or leaving the volume from one) to 0, so membranes still separate regions in the graph
    but are not agglomerated among themselves.
    """
    if out is None:
        out = np.empty(affinities.shape, np.float32)
    fg = np.asarray(foreground, dtype=np.float32)
    for c in range(3):
        np.minimum(affinities[c], fg, out=out[c])
    bg = fg < np.float32(fg_threshold)
    if (exclude_background or cut_background) and bg.any():
        for c in range(3):
            lead = [slice(None)] * 3
            prev = [slice(None)] * 3
            lead[c] = slice(1, None)
            prev[c] = slice(None, -1)
            if exclude_background:
                np.copyto(out[c], 0, where=bg)
                np.copyto(out[c][tuple(lead)], 0, where=bg[tuple(prev)])
            else:
                first = [slice(None)] * 3
                first[c] = slice(0, 1)
                np.copyto(out[c][tuple(first)], 0, where=bg[tuple(first)])
                np.copyto(out[c][tuple(lead)], 0, where=bg[tuple(lead)] & bg[tuple(prev)])
    return bg


