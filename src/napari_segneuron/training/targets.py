"""Training targets derived from an instance-labels volume.

Affinities use the offsets (-1,0,0), (0,-1,0), (0,0,-1): channel c at voxel v is 1
when v and its predecessor along axis c carry the same non-zero id. The first
plane along each axis has no predecessor; there the neighbour is the voxel
itself (replicate padding), so the value is simply ``label > 0``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def affinities_from_labels(labels: np.ndarray) -> np.ndarray:
    """Return float32 affinities (3, Z, Y, X) for a (Z, Y, X) labels volume."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (Z, Y, X), got shape {labels.shape}")
    aff = np.zeros((3,) + labels.shape, dtype=np.float32)
    fg = labels > 0
    for axis in range(3):
        # predecessor along the axis with the first plane replicated
        prev = np.concatenate(
            [labels[tuple(_take(axis, 0, 1))], labels[tuple(_take(axis, 0, -1))]], axis=axis
        )
        aff[axis] = (labels == prev) & fg
    return aff


def _take(axis: int, start: int, stop: int) -> list:
    sl = [slice(None)] * 3
    sl[axis] = slice(start, stop)
    return sl


def foreground_from_labels(labels: np.ndarray) -> np.ndarray:
    """Foreground target: 1 where the label is non-zero."""
    return (np.asarray(labels) > 0).astype(np.float32)


#: below this share of 0 voxels in the trained region, the labels hold (nearly) no membranes
MIN_MEMBRANE_SHARE = 0.01


def no_membranes_warning(labels: np.ndarray, mask: Optional[np.ndarray] = None) -> str:
    """A warning when the trained region (``mask``, default all) has (nearly) no 0 voxels: the
    foreground head learns membranes from the 0s, so labels copied from a segmentation made with
    membranes filled in teach it that there are none. Empty when the region has membranes."""
    region = np.asarray(labels) if mask is None else np.asarray(labels)[np.asarray(mask, bool)]
    if region.size == 0 or float(np.mean(region == 0)) >= MIN_MEMBRANE_SHARE:
        return ""
    return (f"under {MIN_MEMBRANE_SHARE:.0%} of the trained labels are 0, so the model would learn that there are "
            "no membranes; leave membranes 0 (a segmentation made with --membrane-fill 0, or the dock's "
            "Fill membranes ≤ 0 voxels, keeps them)")


def affinity_mask(mask: Optional[np.ndarray], shape: tuple) -> np.ndarray:
    """Per-channel loss mask for affinities: a pair counts when both voxels are annotated."""
    if mask is None:
        return np.ones((3,) + tuple(shape), dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    out = np.zeros((3,) + m.shape, dtype=np.float32)
    for axis in range(3):
        prev = np.concatenate([m[tuple(_take(axis, 0, 1))], m[tuple(_take(axis, 0, -1))]], axis=axis)
        out[axis] = m & prev
    return out


def labels_from_membranes(membranes: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """2D instance ids from a membrane mask: connected non-membrane regions, slice by slice.

    ``membranes`` is (Z, Y, X), membrane where the value (scaled to 0..1 for uint8)
    exceeds ``threshold``. Ids are unique across slices; membrane gets 0. Only
    the xy affinities derived from these ids are meaningful.
    """
    m = np.asarray(membranes)
    if m.ndim == 2:
        m = m[None]
    scale = 255.0 if m.dtype == np.uint8 else 1.0
    inside = (m.astype(np.float32) / scale) <= threshold
    out = np.zeros(m.shape, dtype=np.uint32)
    next_id = 0
    for z in range(m.shape[0]):
        lab, n = ndimage.label(inside[z])
        lab = lab.astype(np.uint32)
        lab[lab > 0] += next_id
        out[z] = lab
        next_id += n
    return out


def targets_from_labels(labels: np.ndarray, mask: Optional[np.ndarray] = None):
    """Return (affinities (3,Z,Y,X), foreground (1,Z,Y,X), aff_weight (3,...), fg_weight (1,...))."""
    labels = np.asarray(labels)
    aff = affinities_from_labels(labels)
    fg = foreground_from_labels(labels)[None]
    w_aff = affinity_mask(mask, labels.shape)
    w_fg = (np.ones_like(fg) if mask is None else np.asarray(mask).astype(np.float32)[None])
    return aff, fg, w_aff, w_fg
