"""Membrane voxels go to the neurite on their side of the membrane.

The foreground head marks membranes as background, so a foreground-restricted segmentation
leaves a gap of a few voxels between touching neurites. Dense ground truth (FIB-25) and every
downstream use (volumes, skeletons, contacts) wants those voxels in a neuron. ``fill_membranes``
gives each background voxel within ``radius`` voxels of the foreground to a fragment by a seeded
watershed of ``1 - foreground``: the floods from the two sides of a membrane meet where the
foreground is lowest, the membrane's centre line as the model sees it. Wider background (glia,
extracellular space, anything further than ``radius`` from a neurite) stays 0.

Measured before it became the default (cached predictions, flips min, merge threshold 0.48;
nearest-segment filling, which is what the metrics do with background, against this): fib25_b
0.354 -> 0.339 (mean of 3 tile plans), ISBI 2012 0.730 -> 0.692, VNC y 0:512 0.290 -> 0.247,
y 512:1024 0.292 -> 0.263. On those stacks every background voxel lies within 2 voxels of a
neurite, so the radius only matters for wider background.
"""
from __future__ import annotations

import numpy as np

from .defaults import DEFAULT_MEMBRANE_FILL, _check_membrane_fill

#: voxels per slab of the watershed (it needs about 30 bytes per voxel of a slab)
_SLAB_VOXELS = 1 << 24


def _flooded_ids(fragments: np.ndarray, foreground: np.ndarray, background: np.ndarray, radius: int) -> np.ndarray:
    """Fragment ids the watershed gives each voxel of a slab: the fragment flooding it for background
    within ``radius`` voxels of the foreground, 0 for background further away (read only at
    background voxels)."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    inside = ~background
    target = background & ndimage.binary_dilation(inside, iterations=radius)
    # seeds: the foreground voxels touching background; only they can flood (the rest is interior)
    shell = inside & ndimage.binary_dilation(background, iterations=1)
    # seeds numbered 1..n as int32 (what skimage's watershed works in), whatever the ids' dtype
    values = fragments[shell]
    ids, seed = np.unique(values, return_inverse=True)
    seed = (seed.reshape(-1) + 1).astype(np.int32)
    seed[values == 0] = 0
    markers = np.zeros(fragments.shape, np.int32)
    markers[shell] = seed
    del values, seed
    flooded = watershed(1.0 - foreground.astype(np.float32), markers, mask=target | shell)
    return np.concatenate([np.zeros(1, ids.dtype), ids])[flooded]


def fill_membranes(
    fragments: np.ndarray, foreground: np.ndarray, background: np.ndarray, radius: int = DEFAULT_MEMBRANE_FILL
) -> int:
    """Give background voxels within ``radius`` voxels of a fragment to a fragment, in place.

    fragments: (Z,Y,X) non-negative ids, 0 on ``background``; foreground: the probabilities the
    background was cut from; background: the (Z,Y,X) bool mask of background voxels. The watershed
    runs in z slabs with a margin of ``2 * radius + 2`` planes, so the memory stays bounded on large
    volumes. Returns how many background voxels now hold a fragment.
    """
    radius = _check_membrane_fill(radius)
    if radius == 0 or not background.any() or background.all():
        return 0
    nz = fragments.shape[0]
    margin = 2 * radius + 2
    step = max(1, _SLAB_VOXELS // max(int(np.prod(fragments.shape[1:])), 1) - 2 * margin)
    results = []
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        a, b = max(0, z0 - margin), min(nz, z1 + margin)
        ids = _flooded_ids(fragments[a:b], foreground[a:b], background[a:b], radius)
        results.append(ids[z0 - a: z1 - a][background[z0:z1]])  # only background voxels change
    for z0, values in zip(range(0, nz, step), results):  # written after every slab has read the unfilled ids
        view = fragments[z0:z0 + step]
        view[background[z0:z0 + step]] = values
    return int(np.count_nonzero(fragments[background]))
