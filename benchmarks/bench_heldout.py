#!/usr/bin/env python
"""Zero-shot and adapted quality on fib25_b and on the unseen held-out VNC stack, fixed threshold rule.

Volumes
- ``fib25_b`` (validation crop, FIB-SEM fly medulla): predicted on its own grid (the grid the
  model was trained on), optionally a region of it (``--fib-region``).
- ``vnc``: unidesigner/groundtruth-drosophila-vnc stack1 (ssTEM, larval VNC, 4.6 x 4.6 x 50 nm),
  rebuilt by scripts/gather_training_data.py into runs/heldout/, never trained on. Its labels are
  2D (connected regions of one section), so every segmentation is scored per section
  (``metrics.evaluate_sections``): the main table by the "segments" rule (a segment's voxels in a
  section are one segment: merges made through other sections count, and so do true folds), a
  second table by the "pieces" rule (connected pieces against the truth's pieces: folds are free,
  merges made only through z are unseen). A model that declares a voxel size predicts it through the plugin's
  resampling path (``--vnc-voxel``), segments on the model grid and carries the labels back,
  exactly as the plugin does; a model without one (e.g. finetuned on the stack itself) predicts
  on the native grid.

Rule: plugin defaults (edge score by the plugin's "auto" rule: median-all for serial sections such
as the VNC, median otherwise; foreground "cut" at the threshold the weights declare,
segments < 100 voxels merged) at the package's DEFAULT_THRESHOLD, the same for every volume; the classical baseline (smoothed
intensity as affinities, plain waterz, no merging) at the threshold that is best on fib25_b.
The best threshold per volume is printed too, for reference only.

    PYTHONPATH=src python benchmarks/bench_heldout.py --models default=src/napari_segneuron/weights/default.pt
"""
from __future__ import annotations

import argparse
import itertools
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
THRESHOLDS = np.round(np.arange(0.08, 1.0, 0.08), 3)


def region(text: str | None) -> tuple:
    """'z0:z1,y0:y1,x0:x1' -> slices (empty -> everything)."""
    if not text:
        return (slice(None),) * 3
    return tuple(slice(*[int(v) if v else None for v in part.split(":")]) for part in text.split(","))


def score(seg, truth, two_d: bool, rule: str = "segments") -> dict:
    """3D scores, or for 2D-labelled truth the per-section scores (``metrics.evaluate_sections``:
    "segments", a segment's voxels in a section as one segment, as in every earlier table; or
    "pieces", connected pieces against the truth's pieces); 2D ``truth`` comes cut by
    ``metrics.section_truth`` with the same rule."""
    from napari_segneuron.metrics import evaluate, evaluate_cut_sections
    s = evaluate_cut_sections(seg, truth, rule=rule) if two_d else evaluate(seg, truth)
    return {"vi": round(s.vi, 4), "vi_split": round(s.vi_split, 4), "vi_merge": round(s.vi_merge, 4),
            "arand": round(s.arand, 4)}


def rows_for(ag, gt, two_d: bool, fixed: float) -> dict:
    """Score at the fixed threshold and, for reference, the best of a sweep."""
    from napari_segneuron.metrics import section_truth
    truth = section_truth(gt) if two_d else gt  # cut once for the whole sweep
    seg = ag.labels(fixed)
    out = dict(score(seg, truth, two_d), threshold=fixed)
    if two_d:
        out["pieces"] = score(seg, section_truth(gt, rule="pieces"), two_d, rule="pieces")
    best = None
    for t in THRESHOLDS:
        r = score(ag.labels(float(t)), truth, two_d)
        if best is None or r["vi"] < best["vi"]:
            best = dict(r, threshold=float(t))
    out["best"] = best
    return out


def _cut_z(aff):
    """Section-by-section agglomeration: no z affinity (diagnostic for 2D ground truth)."""
    aff = np.array(aff, dtype=np.float32, copy=True)
    aff[0] = 0.0
    return aff


def segment_model(model, raw, voxel, model_voxel=None, sections=False, tiles=None, fg_threshold=None, tta=False,
                  scorings=("median",), fills=(None,)):
    """Plugin path: predict (resampled when the model declares a voxel size and ``voxel`` differs),
    agglomerate with the package defaults on the model grid, carry back to the input grid; one
    agglomeration per edge score in ``scorings`` and membrane fill in ``fills`` (None: the package
    default; a dict (score, fill) -> agglomeration)."""
    from napari_segneuron.inference import Predictor
    from napari_segneuron.segmentation import agglomerate, foreground_threshold_for
    pred = Predictor(model, device="cpu", model_voxel_size=model_voxel, tta=tta, **(tiles or {}))
    fg_t = foreground_threshold_for(model) if fg_threshold is None else fg_threshold  # declared, as the plugin does
    mg = {}
    aff, fg = pred.predict(raw, voxel_size=voxel, model_grid=mg)
    grid = mg.get("affinities") is not None
    if grid:
        aff, fg = mg["affinities"], mg["foreground"]
    aff = _cut_z(aff) if sections else np.ascontiguousarray(aff, np.float32)
    fg = np.ascontiguousarray(fg, np.float32)
    out = {}
    for scoring in scorings:
        for fill in fills:
            kw = {} if fill is None else {"membrane_fill": fill}
            ag = agglomerate(aff, fg, fg_threshold=fg_t, scoring=scoring, worker=False, **kw)
            out[scoring, fill] = ag.on_grid(raw.shape) if grid else ag
    return out


def classical_ag(raw, sigma: float = 0.5, sections=False):
    from napari_segneuron.segmentation import agglomerate
    img = raw.astype(np.float32)
    lo, hi = np.percentile(img, (1, 99))
    sm = np.clip((ndimage.gaussian_filter(img, sigma) - lo) / (hi - lo), 0, 1)
    aff = np.stack([sm] * 3)
    return agglomerate(_cut_z(aff) if sections else aff, None, worker=False, min_size=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=[f"default={ROOT / 'src/napari_segneuron/weights/default.pt'}"],
                   help="NAME=CHECKPOINT ...")
    p.add_argument("--volumes", default="fib25_b,vnc")
    p.add_argument("--model-voxel", nargs="*", default=[],
                   help="NAME=NM: override the voxel size a model declares (isotropic), e.g. to compare 10 and 20")
    p.add_argument("--heldout", type=Path, default=ROOT / "runs" / "heldout")
    p.add_argument("--vnc-voxel", default="50,4.6,4.6", help="z,y,x nm of the VNC stack (its README)")
    p.add_argument("--vnc-region", default="0:20,0:512,128:640",
                   help="scored region (z0:z1,y0:y1,x0:x1); the default leaves out the adaptation block "
                        "y 0:120, x 0:120")
    p.add_argument("--fib-region", default="", help="scored region of fib25_b (default all)")
    p.add_argument("--no-classical", action="store_true")
    p.add_argument("--sections", action="store_true",
                   help="diagnostic: agglomerate each z section on its own (z affinities 0) for the 2D-labelled VNC")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tile", default=None, help="Z,Y,X tile for the model rows (default: the predictor's choice)")
    p.add_argument("--overlap", default=None, help="Z,Y,X halo with --tile")
    p.add_argument("--blend", default=None, choices=("crop", "gaussian"), help="tile blending (default: the predictor's)")
    p.add_argument("--tile-plans", nargs="*", default=[], metavar="Z,Y,X",
                   help="score every model row with each of these tiles (halo --overlap, default 8,32,32) and print "
                        "the mean and range per model and volume: the tile plan alone moves VI by 0.03-0.06 on "
                        "these volumes, so compare means, e.g. --tile-plans 24,160,160 32,192,192 40,224,224")
    p.add_argument("--calibrated", nargs="*", default=[],
                   help="NAME=JSON: a calibration ('napari-segneuron calibrate --json') used by model NAME on every "
                        "volume: its magnification, foreground threshold and merge threshold (as the fixed one)")
    p.add_argument("--auto-magnify", action="store_true",
                   help="the plugin's label-free magnification ('--magnify auto', scale_estimate): estimated on each "
                        "scored volume from the image alone, then predicted at it with the default thresholds")
    p.add_argument("--tta", nargs="*", default=["min"], choices=["off", "mean", "min"],
                   help="test-time augmentation of the model rows (default: min, the plugin's default); several "
                        "modes score each model once per mode, side by side")
    p.add_argument("--scoring", nargs="*", default=["auto"], metavar="SCORE",
                   help="edge scores for the model rows, side by side on one prediction: 'auto' (the plugin's rule: "
                        "median-all for serial sections, median otherwise), median, median-all, mean")
    p.add_argument("--membrane-fill", nargs="*", type=int, default=[None], metavar="N",
                   help="membrane fill radii for the model rows, side by side on one prediction (default: the "
                        "package's; 0 leaves background voxels to the metric's nearest-segment fill)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from napari_segneuron._model import load_model
    from napari_segneuron.calibration import magnified_voxel_size
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD, foreground_threshold_for, resolve_scoring

    vols = {}
    names = a.volumes.split(",")
    if "fib25_b" in names:
        r = region(a.fib_region)
        vols["fib25_b"] = (tifffile.imread(str(DATA / "fib25_b_raw.tif"))[r],
                           tifffile.imread(str(DATA / "fib25_b_labels.tif"))[r], None, False)
    if "vnc" in names:
        r = region(a.vnc_region)
        vols["vnc"] = (tifffile.imread(str(a.heldout / "vnc_stack1_raw.tif"))[r],
                       tifffile.imread(str(a.heldout / "vnc_stack1_labels.tif"))[r],
                       tuple(float(v) for v in a.vnc_voxel.split(",")), True)
    rows = []
    if not a.no_classical:
        # threshold rule for the baseline: its best on fib25_b (the whole crop), applied everywhere
        b_raw = tifffile.imread(str(DATA / "fib25_b_raw.tif"))
        b_gt = tifffile.imread(str(DATA / "fib25_b_labels.tif"))
        t_cl = rows_for(classical_ag(b_raw), b_gt, False, 0.5)["best"]["threshold"]
        for vname, (raw, gt, voxel, two_d) in vols.items():
            r = dict(rows_for(classical_ag(raw, sections=a.sections and two_d), gt, two_d, t_cl),
                     model="classical (sigma 0.5, waterz)" + (", per section" if a.sections and two_d else ""),
                     volume=vname)
            rows.append(r)
            print(json.dumps(r), flush=True)
    overrides = {k: float(v) for k, v in (spec.split("=", 1) for spec in a.model_voxel)}
    tiles = {k: tuple(int(v) for v in getattr(a, k).split(",")) for k in ("tile", "overlap") if getattr(a, k)}
    if a.blend:
        tiles["blend"] = a.blend
    calibrations = {k: json.loads(Path(v).read_text()) for k, v in (spec.split("=", 1) for spec in a.calibrated)}
    overlap = tiles.get("overlap", (8, 32, 32))
    plans = [{"tile": tuple(int(v) for v in t.split(",")), "overlap": overlap} for t in a.tile_plans] or [{}]
    for spec in a.models:
        name, path = spec.split("=", 1)
        model = load_model(path, device="cpu")
        vs = getattr(model, "info", {}).get("voxel_size_nm")
        if name in overrides:
            vs = (overrides[name],) * 3
        for vname, (raw, gt, voxel, two_d) in vols.items():
            cal = calibrations.get(name)
            fg_t = foreground_threshold_for(model) if cal is None else cal["fg_threshold"]
            magnify = 1.0 if cal is None else cal["magnify"]
            if a.auto_magnify and cal is None:
                from napari_segneuron.inference import Predictor
                from napari_segneuron.scale_estimate import estimate_magnification
                est = estimate_magnification(Predictor(model, device="cpu", model_voxel_size=vs), raw, voxel)
                magnify = est.magnify
                print(f"{name} {vname}: {est.summary()}", flush=True)
            vox = magnified_voxel_size(voxel, vs, magnify)
            # edge scores named as asked ('auto' resolved by this volume's voxel size, as the plugin does)
            scorings = {s: resolve_scoring(s if cal is None else cal.get("scoring", s), voxel) for s in a.scoring}
            for tta, plan in itertools.product(a.tta, plans):
                t = time.time()
                ags = segment_model(model, raw, vox, vs, sections=a.sections and two_d, tiles=dict(tiles, **plan),
                                    fg_threshold=fg_t, tta=tta, scorings=sorted(set(scorings.values())),
                                    fills=a.membrane_fill)
                for (asked, scoring), fill in itertools.product(scorings.items(), a.membrane_fill):
                    shown = asked if asked == scoring else f"{asked}={scoring}"
                    r = dict(rows_for(ags[scoring, fill], gt, two_d,
                                      DEFAULT_THRESHOLD if cal is None else cal["threshold"]),
                             fg_threshold=fg_t, magnify=magnify, tta=tta, scoring=scoring,
                             membrane_fill=ags[scoring, fill].info.get("membrane_fill"),
                             model=name + (f", flips {tta}" if len(a.tta) > 1 else "")
                             + (f", {shown}" if len(a.scoring) > 1 else "")
                             + (f", membrane fill {fill}" if len(a.membrane_fill) > 1 else "")
                             + (", per section" if a.sections and two_d else ""), volume=vname,
                             model_voxel_nm=list(vs) if vs else None, seconds=round(time.time() - t))
                    if plan:
                        r["tile"] = list(plan["tile"])
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    print("\n| model | volume | VI (fixed t) | split | merge | ARAND | t | best VI (t) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['volume']} | {r['vi']:.3f} | {r['vi_split']:.3f} | {r['vi_merge']:.3f} | "
              f"{r['arand']:.3f} | {r['threshold']:.2f} | {r['best']['vi']:.3f} ({r['best']['threshold']:.2f}) |")
    two_d_rows = [r for r in rows if "pieces" in r]
    if two_d_rows:
        print("\n2D truth, scored by connected pieces per section (folds free, merges made only through z unseen), fixed t:")
        print("| model | volume | VI | split | merge | ARAND |")
        print("|---|---|---|---|---|---|")
        for r in two_d_rows:
            o = r["pieces"]
            print(f"| {r['model']} | {r['volume']} | {o['vi']:.3f} | {o['vi_split']:.3f} | {o['vi_merge']:.3f} | "
                  f"{o['arand']:.3f} |")
    if len(plans) > 1:
        print(f"\nOver {len(plans)} tile plans ({', '.join(a.tile_plans)}), fixed t: VI mean (min-max)")
        print("| model | volume | VI | pieces VI (2D truth) |")
        print("|---|---|---|---|")
        groups: dict = {}
        for r in rows:
            if "tile" in r:
                groups.setdefault((r["model"], r["volume"]), []).append(r)
        for (model_name, vname), rs in groups.items():
            vi = [r["vi"] for r in rs]
            pcs = [r["pieces"]["vi"] for r in rs if "pieces" in r]
            pcs_text = f"{np.mean(pcs):.3f} ({min(pcs):.3f}-{max(pcs):.3f})" if pcs else "–"
            print(f"| {model_name} | {vname} | {np.mean(vi):.3f} ({min(vi):.3f}-{max(vi):.3f}) | {pcs_text} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
