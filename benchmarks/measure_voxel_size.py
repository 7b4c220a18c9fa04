#!/usr/bin/env python
"""What voxel size do the labelled FIB-25 crops really have? Measured against the unlabeled cube.

``fib25_unlabeled_raw.tif`` is documented as 10 nm isotropic; the labelled crops
(fib25_a/b from the gala test data, fib25_c from the gala example) carry no voxel
size. The same tissue imaged the same way has the same membrane thickness and the
same neurite calibre in nanometres, so the ratio of those sizes in voxels gives the
crops' voxel size. Per volume and axis this prints:

- ``acf``: half-width at half maximum (voxels) of the intensity autocorrelation;
- ``dark``/``bright``: median length (voxels) of runs of dark (membrane) and bright
  (neurite interior) voxels along lines, dark = below the volume's Otsu threshold of the
  lightly smoothed image (chord-length statistics);
- for labelled crops, the same from the labels: runs of id 0 (annotated membrane) and runs
  of one id (neurite chords), and the median per-object maximum of the 2D distance
  transform (neurite radius);

and then, per statistic, the voxel size at which the unlabeled cube (shrunk with anti-aliasing by
1-3.5x, i.e. "imaged" at 10-35 nm) shows the same value: a calibration curve, because run
lengths and autocorrelation widths are not proportional to scale (blur, noise, discreteness).

    PYTHONPATH=src python benchmarks/measure_voxel_size.py
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEGNEURON_DATA", ROOT.parent / "shared" / "data"))
UNLABELED_NM = 10.0
AXES = {"z": 0, "y": 1, "x": 2}


def acf_halfwidth(img: np.ndarray, axis: int, max_lag: int = 40) -> float:
    """Lag (voxels, linearly interpolated) where the mean normalised autocorrelation along ``axis`` falls to 0.5."""
    a = img.astype(np.float64)
    a = a - a.mean()
    var = (a * a).mean()
    prev = 1.0
    for lag in range(1, min(max_lag, a.shape[axis] - 1)):
        n = a.shape[axis] - lag
        c = (np.take(a, range(n), axis=axis) * np.take(a, range(lag, lag + n), axis=axis)).mean() / var
        if c <= 0.5:
            return lag - 1 + (prev - 0.5) / (prev - c)
        prev = c
    return float("nan")


def otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w = np.cumsum(p)
    mu = np.cumsum(p * centres)
    between = (mu[-1] * w - mu) ** 2 / np.clip(w * (1 - w), 1e-12, None)
    return float(centres[np.argmax(between)])


def run_lengths(mask: np.ndarray, axis: int) -> np.ndarray:
    """Lengths of runs of True along ``axis`` that do not touch the volume border."""
    m = np.moveaxis(mask, axis, -1).reshape(-1, mask.shape[axis]).astype(np.int8)
    pad = np.pad(m, ((0, 0), (1, 1)))
    d = np.diff(pad, axis=1)
    rows_s, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    keep = (starts > 0) & (ends < m.shape[1])
    return (ends - starts)[keep]


def id_runs(labels: np.ndarray, axis: int) -> np.ndarray:
    """Lengths of runs of one non-zero id along ``axis`` (chords through neurites), border runs dropped."""
    lab = np.moveaxis(labels, axis, -1).reshape(-1, labels.shape[axis]).astype(np.int64)
    change = np.ones((lab.shape[0], lab.shape[1] + 1), dtype=bool)
    change[:, 1:-1] = lab[:, 1:] != lab[:, :-1]
    out = []
    for r in range(lab.shape[0]):
        b = np.flatnonzero(change[r])
        s, e = b[:-1], b[1:]
        ok = (lab[r, s] > 0) & (s > 0) & (e < lab.shape[1])
        out.append((e - s)[ok])
    return np.concatenate(out) if out else np.zeros(0, int)


def radius_2d(labels: np.ndarray) -> float:
    """Median over (slice, object) of the maximum in-plane distance to the object's border."""
    vals = []
    for z in range(0, labels.shape[0], max(1, labels.shape[0] // 10)):
        sl = labels[z]
        edt = ndimage.distance_transform_edt(sl > 0)
        # a one-voxel gap between touching ids: cut at id changes
        edges = np.zeros_like(sl, dtype=bool)
        edges[:, 1:] |= sl[:, 1:] != sl[:, :-1]
        edges[1:, :] |= sl[1:, :] != sl[:-1, :]
        edt = np.minimum(edt, ndimage.distance_transform_edt(~edges))
        ids = np.unique(sl[sl > 0])
        if ids.size:
            vals.extend(ndimage.maximum(edt, sl, ids))
    return float(np.median(vals))


def intensity_stats(raw: np.ndarray) -> dict:
    sm = ndimage.gaussian_filter(raw.astype(np.float32), 0.7)
    dark = sm < otsu(sm)
    out = {}
    for name, ax in AXES.items():
        out[f"acf_{name}"] = acf_halfwidth(raw, ax)
        out[f"dark_{name}"] = float(np.median(run_lengths(dark, ax)))
        out[f"bright_{name}"] = float(np.median(run_lengths(~dark, ax)))
    return out


def label_stats(lab: np.ndarray) -> dict:
    out = {}
    for name, ax in AXES.items():
        if name == "z":
            continue
        out[f"gt_membrane_{name}"] = float(np.median(run_lengths(lab == 0, ax)))
        out[f"gt_chord_{name}"] = float(np.median(id_runs(lab, ax)))
    out["gt_radius_xy"] = radius_2d(lab)
    return out


def shrink(img: np.ndarray, f: float) -> np.ndarray:
    """Anti-aliased (Gaussian sigma (f - 1) / 2) linear downscaling by ``f`` on every axis."""
    sm = ndimage.gaussian_filter(img.astype(np.float32), (f - 1.0) / 2.0)
    return ndimage.zoom(sm, 1.0 / f, order=1, grid_mode=True, mode="nearest")


def match_factor(value: float, curve: list, factors: tuple) -> float:
    """The factor where the (decreasing) calibration ``curve`` equals ``value``, linearly interpolated."""
    c = np.asarray(curve, dtype=float)
    if not np.isfinite(value):
        return float("nan")
    if value >= c[0]:
        return factors[0]
    if value <= c[-1]:
        return factors[-1]
    for i in range(len(c) - 1):
        lo, hi = sorted((c[i], c[i + 1]))
        if lo <= value <= hi and c[i] != c[i + 1]:
            return factors[i] + (factors[i + 1] - factors[i]) * (c[i] - value) / (c[i] - c[i + 1])
    return float("nan")


def model_radius(raw: np.ndarray, f: float, weights: str) -> float:
    """Neurite radius (voxels of ``raw``) in a segmentation by the bundled model of ``raw`` shrunk by ``f``
    (package defaults: waterz, default threshold, small segments merged)."""
    import torch
    from napari_segneuron._model import load_model
    from napari_segneuron.inference import Predictor
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD, agglomerate
    torch.set_num_threads(1)
    x = raw if f == 1.0 else np.clip(np.round(shrink(raw, f)), 0, 255).astype(np.uint8)
    aff, fg = Predictor(load_model(weights, device="cpu"), device="cpu").predict(x)
    seg = agglomerate(np.ascontiguousarray(aff, np.float32), np.ascontiguousarray(fg, np.float32),
                      worker=False).labels(DEFAULT_THRESHOLD)
    return radius_2d(np.asarray(seg)) * f


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--extra", type=Path, default=ROOT / "training_data")
    p.add_argument("--model", action="store_true",
                   help="also measure neurite radius on segmentations by the bundled model (slow: minutes)")
    p.add_argument("--weights", default=str(ROOT / "src/napari_segneuron/weights/default.pt"))
    a = p.parse_args(argv)
    rd = lambda path: tifffile.imread(str(path))  # noqa: E731
    unl = rd(a.data / "fib25_unlabeled_raw.tif")
    ref = intensity_stats(unl)
    rows = {}
    for name in ("a", "b", "c"):
        folder = a.data if name != "c" else a.extra
        rp, lp = folder / f"fib25_{name}_raw.tif", folder / f"fib25_{name}_labels.tif"
        if rp.is_file():
            rows[f"fib25_{name}"] = (intensity_stats(rd(rp)), label_stats(rd(lp)) if lp.is_file() else {})
    keys = list(ref)
    # calibration: the unlabeled cube shrunk by f (anti-aliased), i.e. imaged at 10 f nm
    factors = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5)
    calib = {f: (ref if f == 1.0 else intensity_stats(shrink(unl, f))) for f in factors}
    print("voxels | " + " ".join(f"{k:>9}" for k in keys))
    for f, st in calib.items():
        print(f"{'unlabeled at %.1f nm' % (UNLABELED_NM * f):26} " + " ".join(f"{st[k]:9.2f}" for k in keys))
    for name, (st, _) in rows.items():
        print(f"{name:26} " + " ".join(f"{st[k]:9.2f}" for k in keys))
    print("\nvoxel size at which the unlabeled cube shows the same statistic (nm; interpolated in the table"
          " above; '>' / '<' = outside it); median over statistics:")
    for name, (st, lst) in rows.items():
        est = {k: match_factor(st[k], [calib[f][k] for f in factors], factors) for k in keys}
        xy = np.nanmedian([v for k, v in est.items() if not k.endswith("_z")]) * UNLABELED_NM
        z = np.nanmedian([v for k, v in est.items() if k.endswith("_z")]) * UNLABELED_NM
        print(f"{name:26} xy {xy:5.1f} nm, z {z:5.1f} nm   ("
              + ", ".join(f"{k} {v * UNLABELED_NM:.1f}" for k, v in est.items()) + ")")
        if lst:
            print(f"{'':26} labels (voxels): " + ", ".join(f"{k} {v:.2f}" for k, v in lst.items()))
    if a.model:
        print("\nneurite radius (median per-object max of the 2D distance transform) in voxels of each volume:")
        b_raw, b_lab = rd(a.data / "fib25_b_raw.tif"), rd(a.data / "fib25_b_labels.tif")
        rb = model_radius(b_raw, 1.0, a.weights)
        print(f"fib25_b: ground truth {radius_2d(b_lab):.2f}, model segmentation {rb:.2f} (bias check)")
        for f in (1.5, 2.0, 2.5):
            ru = model_radius(unl, f, a.weights)
            print(f"unlabeled cube shrunk {f}x, model segmentation: {ru:.2f} voxels of 10 nm -> crops at "
                  f"{UNLABELED_NM * ru / rb:.1f} nm (vs the model on fib25_b) / "
                  f"{UNLABELED_NM * ru / radius_2d(b_lab):.1f} nm (vs fib25_b ground truth)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
