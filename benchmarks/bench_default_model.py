#!/usr/bin/env python
"""Quality of the bundled default model on fib25_b against a classical baseline and ablations.

Every method goes through the same waterz agglomeration and threshold sweep
(``napari_segneuron.segmentation``); scores use ground-truth label 0 ignored and
predicted background filled from the nearest segment (the metrics' default).
Reported: the lowest-VI threshold (picked on fib25_b itself, as the data README
allows) with VI split / merge and ARAND.

Methods
- classical: Gaussian-smoothed raw intensity (scaled 1-99 %) as all three affinities, plain
  waterz with the package's scoring (the reference); also with the package's small-segment
  merging and with the other scoring, for a like-for-like comparison.
- each model: MNet prediction (core Predictor, default tiling), agglomerated with the package
  defaults (median scoring, foreground restriction "fg on", segments below DEFAULT_MIN_SIZE
  merged), then one option changed at a time: fg off, no merging, mean scoring, TTA.
- untrained: an MNet of the same size with random weights (seed 0).

    PYTHONPATH=src python benchmarks/bench_default_model.py [--extra NAME=CKPT ...] [--checkpoints DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]

DATA = Path(os.environ.get("SEGNEURON_DATA", ROOT.parent / "shared" / "data"))


def sweep(aff, fg, gt, thresholds, min_size=None, scoring=None):
    """Agglomerate once, score every threshold, return the lowest-VI row (package defaults
    for ``min_size`` and ``scoring`` unless given)."""
    from napari_segneuron.segmentation import DEFAULT_MIN_SIZE, DEFAULT_SCORING, agglomerate, threshold_sweep
    ag = agglomerate(np.ascontiguousarray(aff, dtype=np.float32),
                     None if fg is None else np.ascontiguousarray(fg, dtype=np.float32), worker=False,
                     min_size=DEFAULT_MIN_SIZE if min_size is None else min_size, small="merge",
                     scoring=scoring or DEFAULT_SCORING)
    s = threshold_sweep(ag, gt, thresholds)
    r = s.rows()[s.best_index]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}


def describe(min_size=None, scoring=None, tta=False, fg=None) -> str:
    """Short description of the options that differ from the package defaults."""
    parts = [] if fg is None else [f"fg {'on' if fg else 'off'}"]
    if tta:
        parts.append("TTA")
    if min_size is not None:
        parts.append(f"small segments < {min_size} merged" if min_size else "no small-segment merging")
    if scoring:
        parts.append(f"{scoring} scoring")
    return ", ".join(parts)


def classical(raw, gt, thresholds, sigmas=(0.5, 1.0, 2.0), min_size=0, scoring=None):
    """Plain waterz on smoothed intensity, one row per sigma, each at its own lowest-VI threshold.
    ``min_size`` defaults to 0 here: the baseline the issue defines has no post-processing."""
    img = raw.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99))
    rows = []
    for sigma in sigmas:
        sm = np.clip((ndimage.gaussian_filter(img, sigma) - lo) / (hi - lo), 0, 1)
        r = sweep(np.stack([sm] * 3), None, gt, thresholds, min_size, scoring)
        extra = describe(min_size or None, scoring)
        r.update(sigma=sigma, method=f"classical: smoothed intensity (sigma {sigma}), waterz" + (f", {extra}" if extra else ""))
        rows.append(r)
    return rows


def model_rows(name, model, raw, gt, thresholds, variants=({"fg": True}, {"fg": False}), tta=False):
    """One prediction, then one row per agglomeration variant (dicts of fg / min_size / scoring)."""
    from napari_segneuron.inference import Predictor
    t = time.time()
    aff, fg = Predictor(model, device="cpu", tta=tta).predict(raw)
    dt = time.time() - t
    rows = []
    for v in variants:
        use_fg = v.get("fg", True)
        r = sweep(aff, fg if use_fg else None, gt, thresholds, v.get("min_size"), v.get("scoring"))
        r.update(method=f"{name} ({describe(v.get('min_size'), v.get('scoring'), tta, use_fg)})", predict_s=round(dt, 1))
        rows.append(r)
        print(json.dumps(r), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(ROOT / "src/napari_segneuron/weights/default.pt"))
    p.add_argument("--extra", nargs="*", default=[], help="more checkpoints as NAME=PATH (ablations)")
    p.add_argument("--checkpoints", default=None, help="also score every *_iter*.pt in this folder (fg on only)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--other-scoring", default="mean",
                   help="also score the classical baseline and the default model with this waterz scoring "
                        "('' to skip); the main rows use the package default")
    p.add_argument("--skip-untrained", action="store_true")
    p.add_argument("--json", default=None, help="write all rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from napari_segneuron._model import load_model
    from napari_segneuron._model.mnet import MNet
    from napari_segneuron.segmentation import DEFAULT_MIN_SIZE

    raw = tifffile.imread(str(DATA / "fib25_b_raw.tif"))
    gt = tifffile.imread(str(DATA / "fib25_b_labels.tif"))
    thresholds = np.round(np.arange(0.04, 1.0, 0.02), 3)
    rows = []
    cl = classical(raw, gt, thresholds)
    cl.sort(key=lambda r: r["vi"])               # the strongest classical setting first: the reference
    rows += cl
    print(json.dumps(cl), flush=True)
    best_sigma = cl[0]["sigma"]
    if DEFAULT_MIN_SIZE:
        rows += classical(raw, gt, thresholds, sigmas=(best_sigma,), min_size=DEFAULT_MIN_SIZE)
    if a.other_scoring:
        rows += classical(raw, gt, thresholds, sigmas=(best_sigma,), scoring=a.other_scoring)
    model = load_model(a.weights, device="cpu")
    variants = [{"fg": True}, {"fg": False}]
    if DEFAULT_MIN_SIZE:
        variants.append({"fg": True, "min_size": 0})
    if a.other_scoring:
        variants.append({"fg": True, "min_size": 0, "scoring": a.other_scoring})
    rows += model_rows("default model", model, raw, gt, thresholds, variants)
    rows += model_rows("default model", model, raw, gt, thresholds, [{"fg": True}], tta=True)
    for spec in a.extra:
        name, path = spec.split("=", 1)
        rows += model_rows(name, load_model(path, device="cpu"), raw, gt, thresholds)
    if not a.skip_untrained:
        torch.manual_seed(0)
        un = MNet(1, kn=model.kn, fmu=model.fmu).eval()
        rows += model_rows("untrained MNet", un, raw, gt, thresholds)
    if a.checkpoints:
        for ck in sorted(Path(a.checkpoints).glob("*_iter*.pt")):
            rows += model_rows(f"checkpoint {ck.name}", load_model(ck, device="cpu"), raw, gt, thresholds, [{"fg": True}])
    base = rows[0]["vi"]
    print(f"\nVI / classical: relative to the strongest plain classical baseline ({rows[0]['method']}, VI {base:.3f})")
    print("\n| method | VI | split | merge | ARAND | threshold | VI / classical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['vi']:.3f} | {r['vi_split']:.3f} | {r['vi_merge']:.3f} | {r['arand']:.3f} | "
              f"{r['threshold']:.2f} | {r['vi'] / base:.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
