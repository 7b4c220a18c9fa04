"""The dock's "Preview in view" on a 250x250 view, before and after the thin-slab preview.

    .venv/bin/python benchmarks/bench_preview.py [--threads 2] [--repeats 2]

before: +-8 slices (17), the default tiling (32x192x192 tiles, 8x32x32 overlap),
        waterz in the worker process (what the dock did);
after:  +-4 slices (9), one tile fitted to the region (9x256x256, no overlap),
        waterz in-process for a region this small (the dock now).
Both use the bundled default model and the plugin's segmentation defaults, on the
centre of fib25_unlabeled_raw (250^3), run side by side in one process.

Measured (shared 2-core box, load ~10): before 135.2 s, after 32.7 s (4.1x; best of 2).
Quality of the thin slab (fib25_b, default model, VI of the 3 central slices at z 15/25/35,
median scoring, threshold 0.56): slab prediction +-8: 1.23 / 1.57 / 2.39; +-6: 1.68 / 1.34 /
2.00; +-4: 1.26 / 2.43 / 2.12; the whole-stack prediction agglomerated on the same +-4 slab:
1.34 / 1.74 / 2.06 -- differences within the spread between positions; raise "Preview +-"
in the dock's advanced settings for more z context.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fib25_unlabeled_raw.tif"


def run_once(model, crop, tile, overlap, worker) -> tuple[float, float]:
    from napari_segneuron import segmentation as seg
    from napari_segneuron.inference import Predictor

    t0 = time.perf_counter()
    kwargs = {} if tile is None else {"tile": tile, "overlap": overlap}
    aff, fg = Predictor(model, device="cpu", **kwargs).predict(crop)
    t1 = time.perf_counter()
    agg = seg.agglomerate(aff, fg, worker=worker)
    agg.labels(seg.DEFAULT_THRESHOLD)
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    import tifffile
    import torch

    from napari_segneuron._model import fetch_weights, load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vol = tifffile.imread(args.data)
    model = load_model(fetch_weights("default"), device="cpu")
    zc = vol.shape[0] // 2
    y0 = max(0, vol.shape[1] // 2 - 125)
    x0 = max(0, vol.shape[2] // 2 - 125)
    view = (slice(y0, y0 + 250), slice(x0, x0 + 250))
    configs = {
        "before (+-8 slices, default tiling, worker process)": (vol[(slice(zc - 8, zc + 9),) + view], None, None, True),
        "after (+-4 slices, one fitted tile, in-process)": (vol[(slice(zc - 4, zc + 5),) + view], (9, 256, 256),
                                                           (0, 0, 0), False),
    }
    totals: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(args.repeats):
        for name, (crop, tile, overlap, worker) in configs.items():
            t_pred, t_seg = run_once(model, np.ascontiguousarray(crop), tile, overlap, worker)
            totals[name].append(t_pred + t_seg)
            print(f"[{r}] {name}: region {crop.shape}: predict {t_pred:.1f} s + segment {t_seg:.1f} s "
                  f"= {t_pred + t_seg:.1f} s", flush=True)
    (b_name, b), (a_name, a) = totals.items()
    print(f"best of {args.repeats}: before {min(b):.1f} s, after {min(a):.1f} s: {min(b) / min(a):.1f}x faster "
          f"({args.threads} torch threads)")


if __name__ == "__main__":
    main()
