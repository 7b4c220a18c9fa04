"""What giving membranes to neurites costs: agglomeration with ``membrane_fill`` 0 and the default,
side by side in one run, on the default model's prediction of fib25_b mirrored out to a larger volume.

    PYTHONPATH=src python benchmarks/bench_membranes.py [--shape 100,512,512] [--threads 2]

Prints the seconds of each agglomeration, the fill's share, and the fill's peak extra memory
(tracemalloc: numpy's allocations inside ``fill_membranes``).
"""
from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def mirrored(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``a`` (..., Z, Y, X) mirrored (symmetric padding) out to ``shape`` in its last three axes."""
    pad = [(0, 0)] * (a.ndim - 3) + [(0, max(0, s - n)) for s, n in zip(shape, a.shape[-3:])]
    out = np.pad(a, pad, mode="symmetric")
    return np.ascontiguousarray(out[(Ellipsis,) + tuple(slice(0, s) for s in shape)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="100,512,512", help="Z,Y,X of the mirrored volume")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from napari_segneuron._model import load_named
    from napari_segneuron.inference import Predictor
    from napari_segneuron.segmentation import DEFAULT_MEMBRANE_FILL, agglomerate, foreground_threshold_for
    from napari_segneuron.segmentation.membranes import fill_membranes

    model = load_named("default")
    raw = tifffile.imread(DATA / "fib25_b_raw.tif")
    aff, fg = Predictor(model, device="cpu").predict(raw)
    shape = tuple(int(v) for v in a.shape.split(","))
    aff, fg = mirrored(aff, shape), mirrored(fg, shape)
    fg_t = foreground_threshold_for(model)
    print(f"volume {shape} ({np.prod(shape) / 1e6:.1f} Mvoxel), foreground threshold {fg_t}, "
          f"{100 * float((fg < fg_t).mean()):.1f}% background")
    seconds = {}
    for fill in (0, DEFAULT_MEMBRANE_FILL):
        t0 = time.perf_counter()
        ag = agglomerate(aff, fg, fg_threshold=fg_t, membrane_fill=fill)
        seconds[fill] = time.perf_counter() - t0
        print(f"membrane_fill {fill}: agglomerate {seconds[fill]:.1f} s, "
              f"{ag.info['membrane_voxels_filled']} voxels filled, {100 * float((ag.labels(0.48) == 0).mean()):.2f}% left 0")
    frags = ag.fragments.copy()
    bg = fg < np.float32(fg_t)
    frags[bg] = 0
    tracemalloc.start()
    t0 = time.perf_counter()
    fill_membranes(frags, fg, bg)
    fill_s = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"fill alone {fill_s:.1f} s ({fill_s / np.prod(shape) * 1e9:.0f} ns/voxel), peak extra memory "
          f"{peak / 2**20:.0f} MiB ({peak / np.prod(shape):.1f} bytes/voxel); agglomeration with fill / without: "
          f"{seconds[DEFAULT_MEMBRANE_FILL] / seconds[0]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
