"""Fragments on real predicted affinities: waterz's own seeds (old) vs distance fragments (new).

Needs predictions of the bundled default model (made once, ~2-15 min on CPU):

    napari-segneuron predict /work/shared/data/fib25_unlabeled_raw.tif -o /tmp/unlab_pred.zarr
    napari-segneuron predict /work/shared/data/fib25_b_raw.tif -o /tmp/fib25b_pred.zarr

Prints, side by side in one run: on the unlabelled 250^3 FIB-25 cube (or its first
``--slices`` slices) the fragment count, the first agglomeration's time and peak RSS (each
run in a fresh process) and the slider's update time; on the validation crop fib25_b
VI and ARAND at the default threshold and at the best one.

It first times the distance fragments' watershed alone, skimage's heap (old) vs the numba
bucket queue (new), on the cube and on fib25_b (with fib25_b's VI at the default threshold
for each); ``--watershed-only`` stops there.

    python benchmarks/bench_fragments.py [--slices 100] [--scoring median] [--skip-old] [--watershed-only]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEGNEURON_DATA", ROOT / ".." / "shared" / "data"))


def child(args: argparse.Namespace) -> None:
    """One agglomeration in this (fresh) process; prints a JSON line."""
    from napari_segneuron.io import read_prediction
    from napari_segneuron.segmentation import agglomerate
    from napari_segneuron.segmentation.memory import available_bytes

    aff, fg = read_prediction(args.prediction)
    z = args.slices
    aff = np.ascontiguousarray(aff[:, :z], dtype=np.float32)
    fg = np.ascontiguousarray(fg[:z], dtype=np.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stages: list = []
    t0 = time.perf_counter()
    agg = agglomerate(aff, fg, fragments=args.child, scoring=args.scoring,
                      progress=lambda d, n, m="": stages.append((round(time.perf_counter() - t0, 2), m)))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    drag, release = [], []
    for t in np.linspace(0.3, 0.7, 9):
        t1 = time.perf_counter()
        agg.labels(float(t), min_size=0)  # what the dock shows while the slider is dragged
        drag.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        agg.labels(float(t))  # with small-segment merging, on release
        release.append(time.perf_counter() - t1)
    print(json.dumps(dict(
        method=args.child, shape=list(fg.shape), fragments=agg.n_fragments, seconds=seconds,
        peak_mib=peak / 1024, inputs_mib=base / 1024, drag_ms=1000 * float(np.median(drag)),
        release_ms=1000 * float(np.median(release)), stages=stages, available_gib=available_bytes() / 2**30,
    )))


def quality(pred: Path, gt_path: Path, method: str, scoring: str) -> dict:
    import tifffile

    from napari_segneuron.io import read_prediction
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD, agglomerate, evaluate, threshold_sweep

    aff, fg = read_prediction(pred)
    aff, fg = np.asarray(aff, np.float32), np.asarray(fg, np.float32)
    gt = tifffile.imread(gt_path)
    t0 = time.perf_counter()
    agg = agglomerate(aff, fg, fragments=method, scoring=scoring)
    seconds = time.perf_counter() - t0
    sweep = threshold_sweep(agg, gt)
    at = evaluate(agg.labels(DEFAULT_THRESHOLD), gt)
    b = sweep.best_index
    return dict(fragments=agg.n_fragments, seconds=seconds, vi=at.vi, vi_split=at.vi_split, vi_merge=at.vi_merge,
                arand=at.arand, best_t=sweep.best_threshold, best_vi=float(sweep.vi[b]),
                best_arand=float(sweep.arand[b]), curve=[(float(t), float(v)) for t, v in zip(sweep.thresholds, sweep.vi)])


def watershed_step(cube: Path, validation: Path, slices, scoring: str) -> None:
    """agglomerate's fragment step (distance fragments) with skimage's watershed vs the bucket
    queue, side by side in this process, and fib25_b's VI from each."""
    import tifffile

    from napari_segneuron.io import read_prediction
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD, agglomerate, evaluate
    from napari_segneuron.segmentation import fragments as F

    if F._numba_flood() is None:
        print("numba unavailable: only skimage's watershed")
        return
    F.seeded_watershed(np.random.rand(4, 5, 6).astype(np.float32), np.ones((4, 5, 6), np.int32))  # compile
    print(f"{'':34} {'skimage (old)':>14} {'bucket (new)':>14} {'new/old':>8}")
    for name, path in (("cube", cube), ("fib25_b", validation)):
        aff, fg = read_prediction(path)
        z = slices if name == "cube" else None
        aff = np.ascontiguousarray(aff[:, :z], dtype=np.float32)
        fg = np.ascontiguousarray(fg[:z], dtype=np.float32)
        res = {}
        for be in ("skimage", "auto"):
            F._BACKEND = be
            marks: list = []
            agg = agglomerate(aff, fg, fragments="distance", scoring=scoring,
                              progress=lambda d, n, m="": marks.append((time.perf_counter(), m)))
            start = next(i for i, (_, m) in enumerate(marks) if m == "computing fragments")
            secs = marks[start + 1][0] - marks[start][0]
            res[be] = (secs, agg.n_fragments, agg.labels(DEFAULT_THRESHOLD))
            del agg
        F._BACKEND = "auto"
        (so, no, lo), (sn, nn, ln) = res["skimage"], res["auto"]
        label = f"{name} {tuple(fg.shape)}"
        print(f"{label + ' fragments s':34} {so:14.2f} {sn:14.2f} {sn / so:8.2f}")
        print(f"{name + ' fragments':34} {no:14d} {nn:14d}")
        if name == "fib25_b":
            gt = tifffile.imread(DATA / "fib25_b_labels.tif")
            vo, vn = evaluate(lo, gt).vi, evaluate(ln, gt).vi
            print(f"{'fib25_b VI @ ' + str(DEFAULT_THRESHOLD):34} {vo:14.3f} {vn:14.3f}")
        del aff, fg, res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prediction", type=Path, default=Path("/tmp/unlab_pred.zarr"))
    ap.add_argument("--validation", type=Path, default=Path("/tmp/fib25b_pred.zarr"))
    ap.add_argument("--slices", type=int, default=None, help="only the first N slices of the cube")
    ap.add_argument("--scoring", default="median")
    ap.add_argument("--skip-old", action="store_true", help="do not run waterz's own seeds on the cube (minutes)")
    ap.add_argument("--watershed-only", action="store_true", help="only time the watershed, old vs new")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD

    for p in (args.prediction, args.validation):
        if not p.exists():
            print(f"missing {p}: make it with `napari-segneuron predict ... -o {p}` (see the docstring)")
            return 2
    print(f"== distance fragments' watershed ({args.prediction}{', first %d slices' % args.slices if args.slices else ''}) ==")
    watershed_step(args.prediction, args.validation, args.slices, args.scoring)
    if args.watershed_only:
        return 0
    methods = ["distance"] if args.skip_old else ["waterz", "distance"]
    print(f"scoring {args.scoring}, default threshold {DEFAULT_THRESHOLD}")
    print(f"\n== validation fib25_b ({args.validation}) ==")
    q = {m: quality(args.validation, DATA / "fib25_b_labels.tif", m, args.scoring) for m in ("waterz", "distance")}
    print(f"{'':28} {'waterz seeds':>14} {'distance':>14} {'new/old':>8}")
    for key, fmt in (("fragments", "{:14d}"), ("seconds", "{:14.2f}"), ("vi", "{:14.3f}"), ("vi_split", "{:14.3f}"),
                     ("vi_merge", "{:14.3f}"), ("arand", "{:14.3f}"), ("best_t", "{:14.2f}"), ("best_vi", "{:14.3f}"),
                     ("best_arand", "{:14.3f}")):
        a, b = q["waterz"][key], q["distance"][key]
        label = f"{key} @ {DEFAULT_THRESHOLD}" if key in ("vi", "vi_split", "vi_merge", "arand") else key
        print(f"{label:28} {fmt.format(a)} {fmt.format(b)} {b / a if a else float('nan'):8.2f}")
    print("VI by threshold (waterz seeds / distance):")
    for (t, va), (_, vb) in zip(q["waterz"]["curve"], q["distance"]["curve"]):
        if 0.3 <= t <= 0.8:
            print(f"  t {t:.2f}  {va:.3f}  {vb:.3f}")

    print(f"\n== unlabelled cube ({args.prediction}{', first %d slices' % args.slices if args.slices else ''}) ==")
    rows = {}
    for m in methods:
        cmd = [sys.executable, __file__, "--child", m, "--prediction", str(args.prediction), "--scoring", args.scoring]
        if args.slices:
            cmd += ["--slices", str(args.slices)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{m}: failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
            continue
        rows[m] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{m}: stages (s, what) {rows[m]['stages']}")
    if rows:
        shape = next(iter(rows.values()))["shape"]
        nvox = float(np.prod(shape))
        print(f"volume {tuple(shape)} = {nvox / 1e6:.1f} Mvoxel")
        print(f"{'':28} " + " ".join(f"{m:>14}" for m in rows) + (f" {'new/old':>8}" if len(rows) == 2 else ""))
        for key, fmt in (("fragments", "{:14d}"), ("voxels/fragment", "{:14.1f}"), ("seconds", "{:14.1f}"),
                         ("peak_mib", "{:14.0f}"), ("drag_ms", "{:14.0f}"), ("release_ms", "{:14.0f}")):
            vals = [r["fragments"] and nvox / r["fragments"] if key == "voxels/fragment" else r[key] for r in rows.values()]
            line = f"{key:28} " + " ".join(fmt.format(v) for v in vals)
            if len(vals) == 2:
                line += f" {vals[1] / vals[0] if vals[0] else float('nan'):8.3f}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
