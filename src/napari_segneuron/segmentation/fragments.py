"""Initial fragments: the regions waterz starts agglomerating from.

waterz's own watershed seeds a fragment at every plateau of the affinities above 0.9999;
on real predictions that gives fragments of a few voxels (2.09 M fragments for a 250^3
FIB-25 cube, 7.5 voxels each), a region graph of tens of millions of edges (with median
scoring a 256-bin histogram each: the 17.8 GB kill) and minutes of agglomeration.

``distance_fragments`` builds fewer, larger fragments in lsd's spirit: voxels whose mean
(foreground-restricted) affinity is above ``boundary_threshold`` (0.995) are "inside"; seeds
sit at the local maxima of their distance to the nearest boundary (3x3x3 window), and a
watershed of the boundary map (1 - mean affinity) grows them over the foreground.  waterz
then only agglomerates these fragments; the replay is exact for them as for any given
fragments.  Chosen on fib25_b with the default model's prediction (median scoring, min size
100; benchmarks/bench_fragments.py), best VI over thresholds / fragments:

  waterz's own seeds (affinity 0.9999)                     0.449   120 k
  waterz seeds at 0.995 / 0.99                             0.528 / 0.726   41 k / 16 k
  inside = mean affinity > 0.5, relief = -distance         0.59-0.90   0.2-0.7 k (cells merged)
  inside > 0.995, seeds at distance maxima, relief = boundary   0.443   11 k (0.456 on 0.44-0.52)
  the same, boundary in 256 levels                         0.515   11 k (20% faster)
  the same, distance smoothed (sigma 0.5)                  0.451    4 k
  the same, slice by slice (2-D)                           > 1     16-23 k

On the unlabelled 250^3 cube's first 100 slices: 46 k fragments instead of 888 k, first
agglomeration (mean scoring) 29 s instead of 118 s, peak RSS 636 vs 1283 MiB.  The whole cube
(median scoring): 124 k fragments of 126 voxels (waterz's seeds: 2.09 M of 7.5, killed at
17.8 GB), peak RSS 1.86 GB, 187 s, of which ~150 s are this module (mostly skimage's watershed;
all timed with the 2-core machine under a load of ~10, so several times slower than idle).

The watershed is ``seeded_watershed``: a numba bucket queue over 65536 equal-count relief
levels instead of skimage's heap: the whole fragment step on the 250^3 cube 40 s instead of
123 s (first 100 slices 9.0 vs 17.8 s; benchmarks/bench_fragments.py --watershed-only, side
by side, machine loaded), the same fragment counts, 99.9% of the voxels labelled alike, fib25_b
VI at the default threshold 0.458 either way.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..io import InputError

#: how ``agglomerate`` makes fragments when none are given
FRAGMENT_METHODS = ("distance", "waterz")
DEFAULT_FRAGMENTS = "distance"
DEFAULT_BOUNDARY_THRESHOLD = 0.995
DEFAULT_SEED_DISTANCE = 1
DEFAULT_SMOOTHING = 0.0
INSIDE_AT_LEAST = 0.1
#: at most about this many voxels (a strided sample) estimate the inside quantile of larger volumes
QUANTILE_SAMPLE_VOXELS = 2_000_000
#: seeded_watershed's backend for distance fragments (benchmarks switch it)
_BACKEND = "auto"
#: most queue levels of the bucket watershed
N_BUCKETS = 1 << 16


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..N (0 stays 0) as uint64, the form waterz wants for fragments."""
    try:
        import fastremap
    except ImportError:  # pragma: no cover - fastremap is a dependency
        u, inv = np.unique(labels, return_inverse=True)
        if u[0] != 0:
            inv = inv + 1
        return inv.reshape(labels.shape).astype(np.uint64)
    out, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True)
    return out.astype(np.uint64, copy=False)


def _distance(inside: np.ndarray) -> np.ndarray:
    """Euclidean distance (float32) of every inside voxel to the nearest outside one.

    Uses the optional ``edt`` package when installed (same values, ~6x faster than scipy on a
    250^3 mask; LGPL, so not a dependency of this MIT package), else scipy."""
    try:
        import edt
    except ImportError:
        from scipy import ndimage

        return ndimage.distance_transform_edt(inside).astype(np.float32)
    return np.asarray(edt.edt(np.ascontiguousarray(inside), black_border=False, parallel=1), np.float32)


def _bucket_flood(levels, labels, stride_y, stride_z, n_levels):  # pragma: no cover - compiled
    """Priority flood over flat, padded arrays: ``labels`` > 0 are seeds, 0 free, -1 walls."""
    n = labels.size
    head = np.full(n_levels, -1, np.int32)
    tail = np.full(n_levels, -1, np.int32)
    nxt = np.full(n, -1, np.int32)
    current = n_levels
    for i in range(n):  # seeds enter in raster order, like skimage
        if labels[i] > 0:
            lv = levels[i]
            if tail[lv] < 0:
                head[lv] = i
            else:
                nxt[tail[lv]] = i
            tail[lv] = i
            if lv < current:
                current = lv
    offsets = np.array((-stride_z, -stride_y, -1, 1, stride_y, stride_z), np.int64)
    while current < n_levels:
        i = head[current]
        if i < 0:
            current += 1
            continue
        head[current] = nxt[i]
        if head[current] < 0:
            tail[current] = -1
        lab = labels[i]
        for k in range(6):
            j = i + offsets[k]
            if labels[j] == 0:
                labels[j] = lab
                lv = levels[j]
                if tail[lv] < 0:
                    head[lv] = j
                else:
                    nxt[tail[lv]] = j
                tail[lv] = j
                if lv < current:
                    current = lv


_compiled_flood = None


def _numba_flood():
    """The compiled flood, or None when numba is missing or fails to compile."""
    global _compiled_flood
    if _compiled_flood is None:
        try:
            import numba

            _compiled_flood = numba.njit(cache=True, nogil=True)(_bucket_flood)
        except Exception:  # pragma: no cover - numba missing or unusable
            _compiled_flood = False
    return _compiled_flood or None


def seeded_watershed(relief: np.ndarray, seeds: np.ndarray, mask: Optional[np.ndarray] = None,
                     backend: str = "auto") -> np.ndarray:
    """Seeded watershed of ``relief`` (6-/4-connected), labels (int32) 0 outside ``mask``.

    backend "skimage": ``skimage.segmentation.watershed``; "bucket": the same priority flood
    (lowest relief first, ties first come first served) with a bucket queue over the ranks of
    the relief values (at most ``N_BUCKETS`` equal-count levels), compiled by numba: O(N)
    instead of a heap's O(N log N); the same labels as skimage on a relief without ties and at
    most N_BUCKETS distinct values, otherwise ties / merged levels may settle differently
    (99.9% of the voxels agree on a real 100-slice map); "auto": bucket when numba imports,
    else skimage."""
    flood = _numba_flood() if backend in ("auto", "bucket") else None
    if flood is None:
        if backend == "bucket":
            raise InputError("the bucket watershed needs numba (pip install numba)")
        from skimage.segmentation import watershed

        return watershed(relief, seeds, mask=mask).astype(np.int32, copy=False)
    shape = relief.shape
    r3 = relief.reshape((1,) * (3 - relief.ndim) + shape)
    # buckets: the distinct relief values in order, merged into at most N_BUCKETS
    # equal-count groups (few buckets keep the queue's heads in cache: 5x faster than one
    # bucket per distinct value on a real map, whose 15 M voxels have 2.5 M distinct values)
    values, rank, counts = np.unique(r3, return_inverse=True, return_counts=True)
    n_levels = len(values)
    if n_levels > N_BUCKETS:
        before = np.cumsum(counts) - counts
        group = (before * N_BUCKETS // max(1, rank.size)).astype(np.int32)
        rank = group[rank]
        n_levels = int(group[-1]) + 1
    del values, counts
    levels = np.zeros(tuple(d + 2 for d in r3.shape), np.int32)
    levels[1:-1, 1:-1, 1:-1] = rank.reshape(r3.shape)
    del rank
    labels = np.full(levels.shape, -1, np.int32)  # the one-voxel border is a wall
    inner = labels[1:-1, 1:-1, 1:-1]
    inner[...] = seeds.reshape(r3.shape)
    if mask is not None:
        inner[~mask.reshape(r3.shape)] = -1
    sy, sz = levels.shape[2], levels.shape[1] * levels.shape[2]
    flat = labels.reshape(-1)
    flood(levels.reshape(-1), flat, sy, sz, n_levels)
    out = np.ascontiguousarray(inner).reshape(shape)
    out[out < 0] = 0
    return out


def _watershed_from_distance(inside: np.ndarray, relief: np.ndarray, region: Optional[np.ndarray],
                             min_seed_distance: int, smoothing: float) -> tuple[np.ndarray, int]:
    """Fragments (uint32) of one 2-D or 3-D block and their count: seeds at the maxima of the
    distance to the boundary, grown over ``region`` along the boundary map ``relief``."""
    from scipy import ndimage

    if not inside.any():
        if region is not None and region.any():  # no interior at all: one fragment per connected piece
            lab, n = ndimage.label(region)
            return lab.astype(np.uint32), int(n)
        return np.zeros(inside.shape, np.uint32), 0
    dist = _distance(inside)
    if smoothing > 0:
        dist = ndimage.gaussian_filter(dist, smoothing)
        dist[~inside] = 0
    size = 2 * int(min_seed_distance) + 1
    peaks = ndimage.maximum_filter(dist, size=size) == dist
    peaks &= inside
    del dist
    seeds, n = ndimage.label(peaks)
    del peaks
    labels = seeded_watershed(relief, seeds, region, backend=_BACKEND).astype(np.uint32, copy=False)
    del seeds
    if region is not None:  # foreground pieces no seed can reach (no interior): fragments of their own
        left = region & (labels == 0)
        if left.any():
            extra, m = ndimage.label(left)
            labels[left] = extra[left].astype(np.uint32) + np.uint32(n)
            n += int(m)
    return labels, int(n)


def distance_fragments(
    affinities: np.ndarray,
    foreground_mask: Optional[np.ndarray] = None,
    *,
    boundary_threshold: float = DEFAULT_BOUNDARY_THRESHOLD,
    min_seed_distance: int = DEFAULT_SEED_DISTANCE,
    smoothing: float = DEFAULT_SMOOTHING,
    per_slice: bool = False,
) -> np.ndarray:
    """Fragments (Z,Y,X) uint64, 0 outside ``foreground_mask``, from a watershed of the distance
    to the nearest boundary.

    affinities: (3,Z,Y,X) float32 in [0, 1], already restricted to the foreground (then
      background voxels are boundary too).
    foreground_mask: voxels to cover (default: all); fragments never reach outside it.
    boundary_threshold: voxels with mean affinity below it are boundary (lowered to the
      90th percentile of the mean affinity when fewer than 10% of the voxels reach it).
    min_seed_distance: seeds are local maxima within a (2r+1)-wide window.
    smoothing: Gaussian sigma (voxels) applied to the distance (0: none).
    per_slice: 2-D fragments, slice by slice (ids made unique over the volume).
    """
    aff = np.asarray(affinities)
    if aff.ndim != 4 or aff.shape[0] != 3:
        raise InputError(f"Affinities must have the shape (3, Z, Y, X), not {aff.shape}")
    if min_seed_distance < 1:
        raise InputError(f"min_seed_distance must be >= 1, not {min_seed_distance}")
    mean = np.add(aff[0], aff[1], dtype=np.float32)
    mean += aff[2]
    mean /= np.float32(3)
    # weaker or differently calibrated affinities (another model, a synthetic map) may never
    # reach boundary_threshold: the top INSIDE_AT_LEAST of the voxels count as inside then
    # (the default model's predictions have 17-25% of voxels above 0.995: unchanged)
    level = np.float32(boundary_threshold)
    sample = mean.reshape(-1)[:: max(1, mean.size // QUANTILE_SAMPLE_VOXELS)]
    level = min(level, np.float32(np.quantile(sample, 1.0 - INSIDE_AT_LEAST)))
    inside = mean > level
    if not inside.any():  # a constant map
        inside = mean >= level
    if foreground_mask is not None:
        inside &= foreground_mask
    # the boundary map (1 - mean affinity) is the watershed's relief (kept in float32: 256
    # levels cost 0.06 VI on fib25_b for 20% less time)
    relief = np.subtract(np.float32(1), mean, out=mean)
    if not per_slice:
        frag, _ = _watershed_from_distance(inside, relief, foreground_mask, min_seed_distance, smoothing)
        return frag.astype(np.uint64)
    out = np.zeros(inside.shape, np.uint64)
    offset = 0
    for z in range(inside.shape[0]):
        region = None if foreground_mask is None else foreground_mask[z]
        lab, n = _watershed_from_distance(inside[z], relief[z], region, min_seed_distance, smoothing)
        nz = lab != 0
        out[z][nz] = lab[nz].astype(np.uint64) + np.uint64(offset)
        offset += n
    return _renumber(out)
