"""Simulated proofreader: how much VI do 100 oracle edits through ``Proofreader`` recover?

An oracle holding the ground truth makes, each step, the edit that fixes the most misplaced
voxels: merge the two largest segments that mostly hold one body, or split a segment at the
centres of its two largest bodies (``Proofreader.split`` with those two seeds); an edit that
fixes nothing is undone (the step still counts) and not tried again. Beside it the
same oracle makes *perfect* edits on the label array (a split cuts exactly along the truth),
starting from the same labels. Prints VI (split/merge) after 0, 10, 25, 50, 100 edits and the
time per Proofreader edit.

Data: fib25_b (crop given by --crop, default the whole stack), affinities predicted by the
bundled default weights (or --prediction PRED).

Run:  .venv/bin/python benchmarks/bench_proofread.py [--crop 0:50,0:100,0:200] [--prediction P]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_segneuron.metrics import variation_of_information
from napari_segneuron.proofreading import Proofreader
from napari_segneuron.segmentation import agglomerate

DATA = Path("/work/shared/data")
STEPS = (0, 10, 25, 50, 100)
VERBOSE = False


def _table(seg: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = gt > 0
    g = gt[m].astype(np.int64)
    base = int(g.max()) + 1
    keys, counts = np.unique(seg[m].astype(np.int64) * base + g, return_counts=True)
    return keys // base, keys % base, counts


def misplaced(seg: np.ndarray, gt: np.ndarray) -> int:
    """Voxels outside their segment's main body plus voxels outside their body's main segment."""
    s, g, c = _table(seg, gt)
    out = 0
    for ids in (s, g):
        tot = np.bincount(ids, weights=c)
        top = np.zeros_like(tot)
        np.maximum.at(top, ids, c)
        out += int(tot.sum() - top.sum())
    return out


def best_edit(seg: np.ndarray, gt: np.ndarray, skip: frozenset | set = frozenset()):
    """('merge', a, b, gain) or ('split', s, body1, body2, gain): the edit fixing most voxels
    (edits in ``skip``, keyed by their first three fields, are passed over)."""
    s, g, c = _table(seg, gt)
    best = None
    major: dict[int, tuple[int, int]] = {}  # segment -> (its main body, overlap)
    for si, gi, ci in zip(s, g, c):
        if si and (si not in major or ci > major[si][1]):
            major[int(si)] = (int(gi), int(ci))
    by_body: dict[int, list[tuple[int, int]]] = {}
    for si, (gi, ci) in major.items():
        by_body.setdefault(gi, []).append((ci, si))
    for gi, lst in by_body.items():
        if len(lst) > 1:
            lst.sort(reverse=True)
            gain = lst[1][0]
            if (best is None or gain > best[-1]) and ("merge", lst[0][1], lst[1][1]) not in skip:
                best = ("merge", lst[0][1], lst[1][1], gain)
    per_seg: dict[int, list[tuple[int, int]]] = {}
    for si, gi, ci in zip(s, g, c):
        if si:
            per_seg.setdefault(int(si), []).append((int(ci), int(gi)))
    for si, lst in per_seg.items():
        if len(lst) > 1:
            lst.sort(reverse=True)
            gain = lst[1][0]
            if (best is None or gain > best[-1]) and ("split", si, lst[0][1]) not in skip:
                best = ("split", si, lst[0][1], lst[1][1], gain)
    return best


def centre(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel of ``mask`` farthest from its boundary."""
    d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(np.argmax(d), mask.shape))


def vi(seg: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    return variation_of_information(seg, gt)


def run(name: str, agg, gt: np.ndarray, threshold: float, n: int = max(STEPS)) -> None:
    pr = Proofreader(agg, threshold)
    perfect = pr.labels().astype(np.int64)
    rows_o, rows_p, times = {}, {}, []
    skip: set = set()
    seg = pr.labels()
    for k in range(n + 1):
        if k in STEPS:
            rows_o[k], rows_p[k] = vi(seg, gt), vi(perfect, gt)
        if k == n:
            break
        e = best_edit(seg, gt, skip)
        if e is not None:  # one step: the edit, undone (and not tried again) when it fixed nothing
            t0 = time.perf_counter()
            n_edits = len(pr.edits)
            try:
                if e[0] == "merge":
                    pr.merge(e[1], e[2])
                else:
                    sm = seg == e[1]
                    pr.split(e[1], [centre(sm & (gt == e[2])), centre(sm & (gt == e[3]))])
            except ValueError as exc:
                if VERBOSE:
                    print("refused:", e, exc)
            new = pr.labels()
            times.append(time.perf_counter() - t0)
            if VERBOSE:
                print(k, e, misplaced(seg, gt), misplaced(new, gt))
            if len(pr.edits) > n_edits and misplaced(new, gt) < misplaced(seg, gt):
                seg = new
            else:
                skip.add(e[:3])
                if len(pr.edits) > n_edits:
                    pr.undo()
                    seg = pr.labels()
        p = best_edit(perfect, gt)
        if p is not None:
            if p[0] == "merge":
                perfect[perfect == p[2]] = p[1]
            else:
                perfect[(perfect == p[1]) & (gt == p[3])] = perfect.max() + 1
    print(f"\n{name}: {agg.n_fragments} fragments, threshold {threshold}")
    print("edits | oracle VI (split, merge)   | perfect VI (split, merge)")
    for k in STEPS:
        (os_, om), (ps, pm) = rows_o[k], rows_p[k]
        print(f"{k:5d} | {os_ + om:.3f} ({os_:.3f}, {om:.3f}) | {ps + pm:.3f} ({ps:.3f}, {pm:.3f})")
    g_o = sum(rows_o[0]) - sum(rows_o[n])
    g_p = sum(rows_p[0]) - sum(rows_p[n])
    print(f"VI gain after {n} edits: oracle {g_o:.3f}, perfect {g_p:.3f} ({g_o / max(g_p, 1e-9):.0%})")
    print(f"time per edit (edit + labels): mean {np.mean(times):.3f} s, max {np.max(times):.3f} s")


def main(argv: list[str] | None = None) -> int:
    import tifffile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", default="0:50,0:100,0:200", help="z0:z1,y0:y1,x0:x1 of fib25_b")
    ap.add_argument("--prediction", default=None, help="a saved fib25_b prediction (.zarr/.tif)")
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--verbose", action="store_true", help="print every edit and the misplaced voxels before/after")
    args = ap.parse_args(argv)
    global VERBOSE
    VERBOSE = args.verbose
    box = tuple(slice(*map(int, p.split(":"))) for p in args.crop.split(","))
    gt = tifffile.imread(DATA / "fib25_b_labels.tif")[box]
    if args.prediction:
        from napari_segneuron.io import read_prediction

        aff, fg = (np.asarray(a, np.float32) for a in read_prediction(args.prediction))
        aff, fg = aff[(slice(None),) + box], fg[box]
    else:
        from napari_segneuron._model import load_model
        from napari_segneuron.inference import Predictor

        weights = Path(__file__).resolve().parents[1] / "src/napari_segneuron/weights/default.pt"

        raw = tifffile.imread(DATA / "fib25_b_raw.tif")[box]
        t0 = time.perf_counter()
        aff, fg = Predictor(load_model(weights, device="cpu"), device="cpu").predict(raw)
        print(f"predicted fib25_b {raw.shape} with the default weights in {time.perf_counter() - t0:.1f} s")
    agg = agglomerate(np.asarray(aff, np.float32), np.asarray(fg, np.float32))
    from napari_segneuron.segmentation.defaults import DEFAULT_THRESHOLD

    run(f"fib25_b[{args.crop}]", agg, gt, args.threshold if args.threshold is not None else DEFAULT_THRESHOLD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
