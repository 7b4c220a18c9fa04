"""Our predictor vs an official-style tiling loop, side by side in one process.

The official-style loop is re-implemented here from the published setting: 20x128x128
crops, stride 10x64x64, reflect padding so the tiles fit, a radial Gaussian weight,
fp32, batch 1. Both use the same MNet weights. Prints the speed ratio and the max /
mean absolute difference of the outputs, and (when segmentation is available and a
ground truth is given) the VI difference of the segmentations.

    python benchmarks/bench_inference.py [--weights default] [--volume PATH] [--crop Z,Y,X]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_segneuron._model import fetch_weights, load_model
from napari_segneuron.inference import Predictor

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def official_style_predict(model, volume: np.ndarray, crop=(20, 128, 128), stride=(10, 64, 64), sigma=0.5, floor=1e-3):
    """The official tiling loop (x and y kept in their places)."""
    shape = volume.shape
    counts = [(s - c) // st + 2 for s, c, st in zip(shape, crop, stride)]
    pads = [((n - 1) * st + c - s) // 2 for n, st, c, s in zip(counts, stride, crop, shape)]
    pads = [max(p, 0) for p in pads]
    padded = np.pad(volume, [(p, p) for p in pads], mode="reflect").astype(np.float32) / 255.0
    grids = np.meshgrid(*[np.linspace(-1, 1, c, dtype=np.float32) for c in crop], indexing="ij")
    dist2 = sum(g * g for g in grids)
    weight = np.maximum(np.exp(-dist2 / (2 * sigma**2)), floor)
    out = np.zeros((4,) + padded.shape, np.float32)
    wsum = np.zeros(padded.shape, np.float32)
    for iz in range(counts[0]):
        for iy in range(counts[1]):
            for ix in range(counts[2]):
                start = []
                for i, n in zip((iz, iy, ix), range(3)):
                    s0 = i * stride[n]
                    if s0 + crop[n] > padded.shape[n]:
                        s0 = padded.shape[n] - crop[n]
                    start.append(s0)
                sl = tuple(slice(s, s + c) for s, c in zip(start, crop))
                x = torch.from_numpy(np.ascontiguousarray(padded[sl])[None, None])
                with torch.no_grad():
                    aff, fg = model(x)
                out[(slice(None),) + sl] += torch.cat([aff, fg], 1)[0].numpy() * weight
                wsum[sl] += weight
    out /= wsum
    inner = tuple(slice(p, p + s) for p, s in zip(pads, shape))
    return out[(slice(None),) + inner][:3], out[(slice(None),) + inner][3]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default="default")
    ap.add_argument("--volume", default=str(DATA / "fib25_unlabeled_raw.tif"))
    ap.add_argument("--crop", default="64,250,250", help="Z,Y,X extent taken from the volume's corner")
    ap.add_argument("--gt-raw", default=str(DATA / "fib25_b_raw.tif"), help="image with ground truth for the VI check")
    ap.add_argument("--gt", default=str(DATA / "fib25_b_labels.tif"), help="its ground-truth labels")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    crop = tuple(int(c) for c in args.crop.split(","))
    volume = tifffile.imread(args.volume)[: crop[0], : crop[1], : crop[2]]
    model = load_model(fetch_weights(args.weights), device="cpu")
    print(f"volume {volume.shape} from {Path(args.volume).name}; {model.describe()}; {torch.get_num_threads()} threads")

    # warm up both paths once (oneDNN kernels are built on first use)
    Predictor(model, tile=(8, 64, 64), overlap=(0, 0, 0)).predict(volume[:8, :64, :64])

    t0 = time.perf_counter()
    ref_aff, ref_fg = official_style_predict(model, volume)
    t_official = time.perf_counter() - t0
    rows = [("official-style (20x128x128, stride 10x64x64, fp32, batch 1)", t_official, ref_aff, ref_fg)]
    for label, kwargs in [("ours default (fp32)", {}), ("ours default + --half (bf16)", {"half": True})]:
        t0 = time.perf_counter()
        aff, fg = Predictor(model, device="cpu", **kwargs).predict(volume)
        rows.append((label, time.perf_counter() - t0, aff, fg))

    print(f"\n{'predictor':<62} {'time s':>8} {'speed-up':>9} {'max|d|':>8} {'mean|d|':>9}")
    for label, t, aff, fg in rows:
        both = np.concatenate([aff, fg[None]])
        ref = np.concatenate([ref_aff, ref_fg[None]])
        d = np.abs(both - ref)
        print(f"{label:<62} {t:8.1f} {t_official / t:8.2f}x {d.max():8.4f} {d.mean():9.5f}")

    try:
        from napari_segneuron.segmentation import compare_predictions
    except ImportError:
        return 0
    # segmentation agreement, on the validation crop with its ground truth
    raw = tifffile.imread(args.gt_raw)
    gt = tifffile.imread(args.gt)
    ref = official_style_predict(model, raw)
    print(f"\nsegmentations on {Path(args.gt_raw).name} {raw.shape} vs its ground truth (GT label 0 ignored):")
    for label, kwargs in [("ours default (fp32)", {}), ("ours default + --half (bf16)", {"half": True})]:
        ours = Predictor(model, device="cpu", **kwargs).predict(raw)
        r = compare_predictions(ours, ref, gt)
        print(f"  {label:<32} VI to GT {r['vi_a']:.4f} vs official-style {r['vi_b']:.4f}: difference "
              f"{r['vi_difference']:.4f} (target <= 0.02); VI between the two segmentations {r['vi_between']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
