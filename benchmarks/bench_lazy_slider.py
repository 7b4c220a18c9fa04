"""The dock's slider on a blockwise segmentation: a new lazy dask array per threshold, so the
update cost does not grow with the volume (``_widgets/_large.lazy_labels``).

Two fragment volumes (zarr, 64x256x256 chunks, 100k fragments as 4x8x8 blobs) of 16.8 M and 1.07 G voxels;
per threshold: build the lazy labels (what the slider does) and compute the one z-slice napari
shows. Prints both volumes side by side and their ratio.

    python benchmarks/bench_lazy_slider.py
"""
from __future__ import annotations

import tempfile
import time

import numpy as np
import zarr

from napari_segneuron._widgets._large import lazy_labels


class _Agg:
    """The two things lazy_labels uses: the zarr fragments and a lookup table per threshold."""

    def __init__(self, fragments, n: int) -> None:
        self.fragments = fragments
        self.rng = np.random.default_rng(0)
        self.n = n

    def lookup_table(self, threshold, min_size=None):
        return (np.arange(self.n + 1, dtype=np.uint32) * (1 + int(threshold * 10))) % 5003


def measure(shape, n_fragments=100_000, repeats=5) -> tuple[float, float]:
    folder = tempfile.mkdtemp()
    frag = zarr.create_array(f"{folder}/f.zarr", shape=shape, dtype="uint32", chunks=(64, 256, 256), fill_value=0)
    z = shape[0] // 2
    # fragments as 4x8x8 voxel blobs (compress like real fragments; random ids per voxel would
    # make the zarr decompression, not the relabelling, the whole cost)
    zz, yy, xx = np.ogrid[:64, : shape[1], : shape[2]]
    blobs = ((zz // 4) * (shape[1] // 8) * (shape[2] // 8) + (yy // 8) * (shape[2] // 8) + xx // 8) % n_fragments + 1
    frag[z - z % 64: z - z % 64 + 64] = blobs.astype(np.uint32)
    agg = _Agg(frag, n_fragments)
    build, view = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        labels = lazy_labels(agg, 0.1 * (i + 1))
        t1 = time.perf_counter()
        np.asarray(labels[z])  # the slice on screen
        build.append(t1 - t0)
        view.append(time.perf_counter() - t1)
    return float(np.median(build)) * 1000, float(np.median(view)) * 1000


if __name__ == "__main__":
    small, large = (64, 512, 512), (256, 2048, 2048)
    bs, vs = measure(small)
    bl, vl = measure(large)
    print(f"{'volume':>18} {'voxels':>12} {'new lazy labels ms':>20} {'+ one z-slice ms':>18}")
    print(f"{str(small):>18} {np.prod(small):>12,} {bs:>20.2f} {vs:>18.1f}")
    print(f"{str(large):>18} {np.prod(large):>12,} {bl:>20.2f} {vl:>18.1f}")
    print(f"ratio large/small: voxels {np.prod(large) / np.prod(small):.0f}x, slider update {(bl + vl) / (bs + vs):.2f}x")
