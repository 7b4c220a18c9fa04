#!/usr/bin/env python
"""The label-free magnification (``--magnify auto``, ``scale_estimate``) on every stack at hand.

Prints, per volume and the voxel size it is given: the model's neurite half-width at
magnification 1, the estimate, the magnification used, and the seconds it took. The rows the
model card reports:

- fib25_a (the reference crop), fib25_b, fib25_c (``training_data/``) at their true 20 nm: 1;
- fib25_b typed in as 10 nm (about 2) and as 40 nm (below 1: used as 1, it never shrinks);
- the unlabeled FIB-25 cube at its documented 10 nm;
- the larval VNC stack (``runs/heldout``, if gathered) at 50×4.6×4.6 nm, two regions and whole;
- ISBI 2012 at 50×4×4 nm.

    PYTHONPATH=src python benchmarks/bench_scale_estimate.py [--threads 2] [--weights default]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEGNEURON_DATA", ROOT.parent / "shared" / "data"))


def volumes(heldout: Path) -> dict:
    """name -> (loader, voxel size given); volumes whose file is missing are left out."""
    import tifffile

    def tif(path, region=(slice(None),) * 3):
        return lambda: tifffile.imread(str(path))[region]

    out = {
        "fib25_a (20 nm)": (DATA / "fib25_a_raw.tif", None, (20, 20, 20)),
        "fib25_b (20 nm)": (DATA / "fib25_b_raw.tif", None, (20, 20, 20)),
        "fib25_c (20 nm)": (ROOT / "training_data" / "fib25_c_raw.tif", None, (20, 20, 20)),
        "fib25_b typed in as 10 nm": (DATA / "fib25_b_raw.tif", None, (10, 10, 10)),
        "fib25_b typed in as 40 nm": (DATA / "fib25_b_raw.tif", None, (40, 40, 40)),
        "unlabeled FIB-25 cube (10 nm)": (DATA / "fib25_unlabeled_raw.tif", None, (10, 10, 10)),
        "VNC y 0:512, x 128:640": (heldout / "vnc_stack1_raw.tif", (slice(None), slice(0, 512), slice(128, 640)),
                                   (50, 4.6, 4.6)),
        "VNC y 512:1024, x 128:640": (heldout / "vnc_stack1_raw.tif",
                                      (slice(None), slice(512, 1024), slice(128, 640)), (50, 4.6, 4.6)),
        "VNC whole (20×1024×1024)": (heldout / "vnc_stack1_raw.tif", None, (50, 4.6, 4.6)),
        "ISBI 2012 (50×4×4 nm)": (DATA / "isbi2012_raw.tif", None, (50, 4, 4)),
    }
    return {name: (tif(path, region) if region else tif(path), voxel)
            for name, (path, region, voxel) in out.items() if path.is_file()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heldout", type=Path, default=ROOT / "runs" / "heldout")
    a = p.parse_args(argv)
    import torch

    from napari_segneuron._model import load_named
    from napari_segneuron.inference import Predictor
    from napari_segneuron.scale_estimate import estimate_magnification

    torch.set_num_threads(a.threads)
    predictor = Predictor(load_named(a.weights, device="cpu"), device="cpu")
    print("| volume (voxel size given) | half-width at 1× | estimate | used | seconds |")
    print("|---|---|---|---|---|")
    for name, (load, voxel) in volumes(a.heldout).items():
        volume = load()
        t = time.perf_counter()
        est = estimate_magnification(predictor, volume, voxel)
        sec = time.perf_counter() - t
        width = f"{est.halfwidths[0][1]:.2f}" if est.halfwidths else "–"
        raw = "–" if est.raw is None else f"{est.raw:.2f}"
        print(f"| {name} | {width} | {raw} | {est.magnify:g} | {sec:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
