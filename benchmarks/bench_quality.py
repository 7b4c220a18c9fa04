"""Quality: foreground-restricted waterz vs plain waterz on the same affinities, over a threshold sweep.

Data (../shared/data):
- snemi_mini (always): a real SNEMI3D boundary map used as affinities.  The stored map is
  high inside neurons and low on membranes (mean 0.88 off and 0.56 on ground-truth
  boundaries), despite its name, so boundary = 1 - value/255; affinities =
  1 - max(boundary of the two voxels); foreground = 1 - boundary.  With this foreground
  the voxel-wise minimum changes nothing (affinity <= foreground already), so here the
  restriction acts only through fg_threshold (background voxels).
- fib25_b (with --weights W or --prediction PRED): affinities and foreground predicted by
  our network (napari_segneuron.inference.Predictor), scored against fib25_b_labels.

Scoring: ground-truth label 0 is ignored.  Predicted background (0) is scored both ways:
"fill" (each background voxel takes the nearest segment's label; the default of
napari_segneuron.metrics) and "ignore" (left out).  Segments are not size-filtered
(min_size 0); the ground truth's tiny ids are kept.

Run:  .venv/bin/python benchmarks/bench_quality.py [--weights default] [--prediction pred.zarr]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEGNEURON_DATA", ROOT / ".." / "shared" / "data"))
FG_THRESHOLDS = (0.2, 0.35, 0.4, 0.45, 0.5, 0.65)


def compare(name: str, aff: np.ndarray, fg: np.ndarray, gt: np.ndarray, scorings=("mean", "median")) -> dict:
    from napari_segneuron.segmentation import (
        DEFAULT_BACKGROUND_MODE, DEFAULT_FG_THRESHOLD, DEFAULT_SCORING, DEFAULT_THRESHOLD, agglomerate, threshold_sweep,
    )

    print(f"\n=== {name}: volume {gt.shape}, {len(np.unique(gt[gt > 0]))} ground-truth ids, "
          f"{100 * float((gt == 0).mean()):.1f}% ground-truth 0 (ignored) ===")
    print(f"{'scoring':>7} {'restriction':>20} {'bg':>6} | {'best t':>6} {'VI':>6} {'split':>6} {'merge':>6} "
          f"{'ARAND':>6} {'segs':>5} | {'VI@' + str(DEFAULT_THRESHOLD):>7} {'ARAND@':>6}")
    best: dict = {}
    for scoring in scorings:
        configs = [("plain waterz", None, 0.0, "exclude")] + [
            (f"{m} fg_thr {f}", fg, f, m) for m in ("cut", "mask", "exclude") for f in FG_THRESHOLDS
        ]
        for label, fgv, fthr, mode in configs:
            agg = agglomerate(aff, fgv, fg_threshold=fthr, scoring=scoring, background_mode=mode, worker=False)
            for bg in ("fill", "ignore"):
                sw = threshold_sweep(agg, gt, background=bg)
                b = sw.best_index
                d = int(np.argmin(np.abs(sw.thresholds - DEFAULT_THRESHOLD)))
                print(f"{scoring:>7} {label:>20} {bg:>6} | {sw.thresholds[b]:6.2f} {sw.vi[b]:6.3f} "
                      f"{sw.vi_split[b]:6.3f} {sw.vi_merge[b]:6.3f} {sw.arand[b]:6.3f} {sw.n_segments[b]:5d} | "
                      f"{sw.vi[d]:7.3f} {sw.arand[d]:6.3f} | scored {100 * sw.scored[b]:5.1f}%")
                best[(scoring, label, bg)] = (float(sw.vi[b]), float(sw.arand[b]), float(sw.thresholds[b]), fthr)
            del agg
    for scoring in scorings:
        for bg in ("fill", "ignore"):
            plain = best[(scoring, "plain waterz", bg)]
            restricted = min((v for k, v in best.items() if k[0] == scoring and k[2] == bg and k[1] != "plain waterz"))
            dvi = plain[0] - restricted[0]
            print(f"{scoring} scoring, background {bg}: best restricted (fg_thr {restricted[3]}, t {restricted[2]}) VI "
                  f"{restricted[0]:.3f} vs plain {plain[0]:.3f} (t {plain[2]}): restriction "
                  f"{'wins' if dvi > 0 else 'loses'} by {abs(dvi):.3f} VI ({100 * dvi / plain[0]:+.1f}%), "
                  f"ARAND {restricted[1]:.3f} vs {plain[1]:.3f}")
    fixed = best.get((DEFAULT_SCORING, f"{DEFAULT_BACKGROUND_MODE} fg_thr {DEFAULT_FG_THRESHOLD}", "fill"))
    if fixed:
        print(f"default settings ({DEFAULT_SCORING}, {DEFAULT_BACKGROUND_MODE}, fg_thr {DEFAULT_FG_THRESHOLD}, fill): "
              f"best t {fixed[2]}, VI {fixed[0]:.3f} (default threshold {DEFAULT_THRESHOLD})")
    return best


def held_out(name: str, aff: np.ndarray, fg: np.ndarray, gt: np.ndarray, scoring: str = "mean") -> None:
    """Choose fg_threshold and threshold on the first half of z, score on the second half.

    Picking the best of several fg thresholds on the scored volume flatters the
    restriction; this check does not."""
    from napari_segneuron.metrics import evaluate
    from napari_segneuron.segmentation import agglomerate, threshold_sweep

    half = gt.shape[0] // 2
    tune = (slice(0, half), slice(None), slice(None))
    test = (slice(half, None), slice(None), slice(None))
    results = {}
    for label, fgv, choices in (("plain waterz", None, [0.0]), ("restricted", fg, list(FG_THRESHOLDS))):
        best = None
        for f in choices:
            agg = agglomerate(aff, fgv, fg_threshold=f, scoring=scoring, worker=False)
            sw = threshold_sweep(agg, gt[tune], region=tune)
            if best is None or sw.vi.min() < best[0]:
                best = (float(sw.vi.min()), f, sw.best_threshold, agg)
        _, f, t, agg = best
        s = evaluate(agg.labels(t, region=test), gt[test])
        results[label] = s
        print(f"  {label:>12}: tuned on z < {half}: fg_thr {f}, t {t:.2f} -> held-out z >= {half}: VI {s.vi:.3f} "
              f"(split {s.vi_split:.3f}, merge {s.vi_merge:.3f}), ARAND {s.arand:.3f}")
    from napari_segneuron.segmentation import DEFAULT_FG_THRESHOLD, DEFAULT_SCORING, DEFAULT_THRESHOLD

    if scoring == DEFAULT_SCORING:
        agg = agglomerate(aff, fg, fg_threshold=DEFAULT_FG_THRESHOLD, scoring=scoring, worker=False)
        s = evaluate(agg.labels(DEFAULT_THRESHOLD, region=test), gt[test])
        print(f"  {'defaults':>12}: fg_thr {DEFAULT_FG_THRESHOLD}, t {DEFAULT_THRESHOLD} -> "
              f"held-out VI {s.vi:.3f}, ARAND {s.arand:.3f}")
    d = results["plain waterz"].vi - results["restricted"].vi
    print(f"  held-out ({name}, {scoring}): restriction {'wins' if d > 0 else 'loses'} by {abs(d):.3f} VI "
          f"({100 * d / results['plain waterz'].vi:+.1f}%)")


def snemi() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import tifffile

    from napari_segneuron.segmentation import affinities_from_boundaries

    boundary = 255 - tifffile.imread(DATA / "snemi_mini_boundary_probability.tif")
    aff = affinities_from_boundaries(boundary)
    fg = 1.0 - boundary.astype(np.float32) / 255.0
    return aff, fg, tifffile.imread(DATA / "snemi_mini_labels.tif")


def fib25_prediction(weights: str | None, prediction: str | None) -> tuple[np.ndarray, np.ndarray]:
    if prediction:
        from napari_segneuron.io import read_prediction

        aff, fg = read_prediction(prediction)
        return np.asarray(aff, np.float32), np.asarray(fg, np.float32)
    import tifffile

    from napari_segneuron._model import fetch_weights, load_model
    from napari_segneuron.inference import Predictor

    raw = tifffile.imread(DATA / "fib25_b_raw.tif")
    model = load_model(fetch_weights(weights))
    t0 = time.perf_counter()
    aff, fg = Predictor(model).predict(raw)
    print(f"predicted fib25_b with {weights} in {time.perf_counter() - t0:.1f} s")
    return aff, fg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="also score fib25_b with affinities predicted by these weights")
    ap.add_argument("--prediction", default=None, help="or: a saved fib25_b prediction (.zarr/.tif)")
    args = ap.parse_args(argv)
    print(__doc__.split("Run:")[0].strip())
    data = snemi()
    compare("snemi_mini (real boundary map)", *data)
    print("\nheld-out check (background filled):")
    for scoring in ("mean", "median"):
        held_out("snemi_mini", *data, scoring=scoring)
    if args.weights or args.prediction:
        import tifffile

        aff, fg = fib25_prediction(args.weights, args.prediction)
        gt_b = tifffile.imread(DATA / "fib25_b_labels.tif")
        compare("fib25_b (predicted affinities)", aff, fg, gt_b)
        print("\nheld-out check (background filled):")
        for scoring in ("mean", "median"):
            held_out("fib25_b", aff, fg, gt_b, scoring=scoring)
        if args.weights:
            from bench_voxel_size import run as voxel_size_check

            print()
            voxel_size_check(args.weights)
    else:
        print("\n(fib25_b skipped: pass --weights W or --prediction PRED once a trained model exists)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
