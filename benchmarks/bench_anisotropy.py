#!/usr/bin/env python
"""Where the edge-score rule should switch: median vs median-all as the z spacing grows.

``segmentation.resolve_scoring("auto", voxel)`` picks ``median-all`` when the z voxel is at least
``ANISOTROPY`` (4, placed by this benchmark) times the xy voxel, ``median`` otherwise. This benchmark measures both scores
on fib25_b (FIB-SEM, 3D truth, declared 20 nm isotropic) with only every k-th section kept, so
the stack becomes a serial-section stack of known truth: z spacing 20·k nm, anisotropy k. Each
stack goes through the plugin path (declared voxel (20k, 20, 20) nm, resampled onto the model's
20 nm grid, flips "min", foreground at the declared threshold, merge threshold 0.48, labels carried
back to the stack's grid) and is scored in 3D against the same sections of the truth.

fib25_b is the validation crop: this looks at where the rule switches, not at a threshold for it.

    PYTHONPATH=src python benchmarks/bench_anisotropy.py --steps 1 2 3 4 5
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEGNEURON_DATA", ROOT.parent / "shared" / "data"))
SCORINGS = ("median", "median-all")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", nargs="*", type=int, default=[1, 2, 3, 4, 5],
                   help="keep every k-th section (anisotropy k)")
    p.add_argument("--offsets", type=int, default=1,
                   help="average over this many section offsets (0..k-1) per step")
    p.add_argument("--tiles", nargs="*", default=["32,192,192"], metavar="Z,Y,X",
                   help="tile plans (halo 8,32,32); the mean over them is printed")
    p.add_argument("--threshold", type=float, default=None, help="merge threshold (default: the package's)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from bench_heldout import segment_model
    from napari_segneuron._model import load_model
    from napari_segneuron.metrics import evaluate
    from napari_segneuron.segmentation import ANISOTROPY, DEFAULT_THRESHOLD, resolve_scoring
    from napari_segneuron.tta import DEFAULT_TTA

    t = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    raw = tifffile.imread(str(DATA / "fib25_b_raw.tif"))
    gt = tifffile.imread(str(DATA / "fib25_b_labels.tif"))
    model = load_model(ROOT / "src/napari_segneuron/weights/default.pt", device="cpu")
    xy = float((model.info.get("voxel_size_nm") or (20.0,))[-1])
    print(f"fib25_b {raw.shape}, declared {xy:g} nm; merge threshold {t}; flips {DEFAULT_TTA}; "
          f"the rule switches at anisotropy {ANISOTROPY:g}", flush=True)
    rows = []
    for k in args.steps:
        voxel = (xy * k, xy, xy)
        vis = {s: [] for s in SCORINGS}
        splits = {s: [] for s in SCORINGS}
        t0 = time.perf_counter()
        for off in range(min(args.offsets, k)):
            sub_raw, sub_gt = np.ascontiguousarray(raw[off::k]), np.ascontiguousarray(gt[off::k])
            for tile in args.tiles:
                plan = dict(tile=tuple(int(v) for v in tile.split(",")), overlap=(8, 32, 32))
                ags = segment_model(model, sub_raw, voxel if k > 1 else None, tiles=plan, tta=DEFAULT_TTA,
                                    scorings=SCORINGS)
                for (s, _fill), ag in ags.items():
                    sc = evaluate(ag.labels(t), sub_gt)
                    vis[s].append(sc.vi)
                    splits[s].append((sc.vi_split, sc.vi_merge))
        row = {"k": k, "voxel": voxel, "auto": resolve_scoring("auto", voxel), "seconds": time.perf_counter() - t0}
        for s in SCORINGS:
            row[s] = float(np.mean(vis[s]))
            row[s + " range"] = (float(np.min(vis[s])), float(np.max(vis[s])))
            row[s + " split/merge"] = tuple(float(v) for v in np.mean(splits[s], 0))
        rows.append(row)
        print(f"k {k}: " + "  ".join(f"{s} {row[s]:.3f} ({row[s + ' split/merge'][0]:.3f}/"
                                     f"{row[s + ' split/merge'][1]:.3f})" for s in SCORINGS)
              + f"  auto -> {row['auto']}  [{row['seconds']:.0f} s]", flush=True)

    print(f"\nVI (split / merge), mean over {args.offsets} section offset(s) x {len(args.tiles)} tile plan(s):")
    print("| z step k (anisotropy) | voxel (nm) | median | median-all | better | auto picks |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        better = min(SCORINGS, key=lambda s: r[s])
        print(f"| {r['k']} | {r['voxel'][0]:g}x{r['voxel'][1]:g}x{r['voxel'][2]:g} | "
              + " | ".join(f"{r[s]:.3f} ({r[s + ' split/merge'][0]:.3f} / {r[s + ' split/merge'][1]:.3f})"
                           for s in SCORINGS)
              + f" | {better} | {r['auto']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
