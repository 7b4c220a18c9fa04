"""Score ``napari-segneuron trace`` on held-out LM renders against their ground truth.

For each render (seeds never used in training): foreground Dice of ``--mask-out``, SWC
point F1 (points within ``--tolerance`` voxels of the true centreline, both directions),
and the same two numbers for a tuned classical baseline (Gaussian-smoothed stack with the
Dice-optimal threshold, i.e. an oracle threshold, traced the same way).

    python scripts/eval_lm_trace.py [--weights lm_default] [--seeds 777,778,779]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]

from napari_segneuron.cli import main as cli  # noqa: E402
from napari_segneuron.io import read_swc  # noqa: E402
from napari_segneuron.lm_render import centreline_points, render_sample  # noqa: E402
from napari_segneuron.tracing import swc_match_f1, swc_points_voxels, trace  # noqa: E402
from napari_segneuron.training.lm import classical_threshold, dice, normalise_lm  # noqa: E402


def true_centreline(r) -> np.ndarray:
    pts = centreline_points(r.nodes)
    return pts[np.all((pts >= -0.5) & (pts <= np.array(r.mask.shape) - 0.5), axis=1)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="lm_default")
    p.add_argument("--seeds", default="777,778,779")
    p.add_argument("--shape", default="40,160,160")
    p.add_argument("--threshold", type=float, default=None, help="default: the model's tuned threshold")
    p.add_argument("--tolerance", type=float, default=3.0)
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            r = render_sample(np.random.default_rng(seed), shape)
            stack, out, mask_out = Path(tmp) / f"s{seed}.tif", Path(tmp) / f"t{seed}.swc", Path(tmp) / f"m{seed}.tif"
            tifffile.imwrite(stack, r.stack)
            voxel = ",".join(f"{v:.6f}" for v in r.voxel_size)
            rc = cli(["trace", str(stack), "-o", str(out), "--mask-out", str(mask_out), "--weights", args.weights,
                      "--voxel-size", voxel, "--overwrite"]
                     + (["--threshold", str(args.threshold)] if args.threshold is not None else []))
            if rc:
                return rc
            truth = true_centreline(r)
            model_dice = dice(tifffile.imread(mask_out) > 0, r.mask)
            model_f1 = swc_match_f1(swc_points_voxels(read_swc(out), r.voxel_size), truth, args.tolerance)
            best_dice, t = classical_threshold(r.stack, r.mask)
            from scipy import ndimage as ndi

            smooth = ndi.gaussian_filter(normalise_lm(r.stack), 1.0)
            nodes, _ = trace(smooth, threshold=t)
            classic_f1 = swc_match_f1(swc_points_voxels(nodes), truth, args.tolerance)
            rows.append((seed, model_dice, model_f1["f1"], best_dice, classic_f1["f1"]))
            print(f"seed {seed} voxel {voxel}: model Dice {model_dice:.3f} SWC F1 {model_f1['f1']:.3f} "
                  f"(P {model_f1['precision']:.3f} R {model_f1['recall']:.3f}) | tuned threshold {t:.2f}: "
                  f"Dice {best_dice:.3f} SWC F1 {classic_f1['f1']:.3f}", flush=True)
    a = np.array([row[1:] for row in rows])
    print(f"mean: model Dice {a[:, 0].mean():.3f} SWC F1 {a[:, 1].mean():.3f} | "
          f"tuned classical threshold Dice {a[:, 2].mean():.3f} SWC F1 {a[:, 3].mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
