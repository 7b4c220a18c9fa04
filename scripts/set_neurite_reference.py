#!/usr/bin/env python
"""Measure a checkpoint's reference neurite half-width and write it into its metadata.

The reference is the model's own mean neurite half-width (``scale_estimate.neurite_halfwidth``,
model voxels) on the bundled FIB-25 training crop at its true voxel size (20 nm): the width the
model expects neurites to have. ``--magnify auto`` compares a stack's half-width with it.

    PYTHONPATH=src python scripts/set_neurite_reference.py src/napari_segneuron/weights/default.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="measure and print, do not write")
    a = p.parse_args(argv)
    import torch

    from napari_segneuron._model.weights import _read_checkpoint, load_model, save_checkpoint
    from napari_segneuron.samples import load_raw
    from napari_segneuron.inference import Predictor
    from napari_segneuron.scale_estimate import measured_halfwidth

    torch.set_num_threads(a.threads)
    model = load_model(a.checkpoint, device="cpu")
    predictor = Predictor(model, device="cpu")
    width, count = measured_halfwidth(predictor, [load_raw()], None)  # at the model's own 20 nm
    print(f"neurite half-width on the bundled FIB-25 crop: {width:.3f} model voxels ({count} interior voxels)")
    if a.dry_run:
        return 0
    obj = _read_checkpoint(a.checkpoint)
    meta = dict(obj.get("metadata") or {})
    meta["neurite_halfwidth"] = round(float(width), 3)
    meta["neurite_halfwidth_note"] = ("mean in-section distance from neurite interior to the nearest boundary, in model "
                                      "voxels, on the bundled FIB-25 crop at 20 nm (scripts/set_neurite_reference.py)")
    save_checkpoint(obj["model_weights"], a.checkpoint, iters=int(obj.get("iters", 0)), metadata=meta)
    print(f"wrote neurite_halfwidth {meta['neurite_halfwidth']} into {a.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
