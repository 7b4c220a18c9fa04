#!/usr/bin/env python
"""Uniform weight average ("model soup") of MNet checkpoints of one architecture.

Used for the bundled ``default`` of 2026-12-01: three checkpoints of one GPU training run
(scratch run's final weights, and the final and EMA weights of its continuation), averaged
in float32 and stored as fp16. Only checkpoints of one run (one loss basin) average well.

    python scripts/average_checkpoints.py runs/gpu/em_cont/ema.pt runs/gpu/em_cont/final.pt \
        runs/gpu/em_scratch/final.pt -o src/napari_segneuron/weights/default.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from napari_segneuron._model.weights import save_checkpoint  # noqa: E402


def average(paths: list[Path]) -> tuple[dict, list[dict]]:
    """Mean of every floating tensor (float32 accumulation); other tensors from the first file."""
    loaded = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    states = [c["model_weights"] for c in loaded]
    keys = set(states[0])
    for path, state in zip(paths, states):
        if set(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise SystemExit(f"{path}: not the same architecture as {paths[0]}")
    mean = {k: (sum(s[k].float() for s in states) / len(states) if states[0][k].is_floating_point()
                else states[0][k]) for k in states[0]}
    return mean, [c.get("metadata", {}) for c in loaded]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--name", default="default")
    args = p.parse_args(argv)
    mean, metas = average(args.checkpoints)
    first = metas[0]
    metadata = {key: first[key] for key in ("voxel_size_nm", "augment", "training_data", "validation_data", "crop",
                                            "batch") if key in first}
    metadata.update(name=args.name, kn=list(first.get("kn", [])), fmu=first.get("fmu", "sub"),
                    input_normalization="uint8/255", dtype="float16",
                    recipe="weight average of: " + "; ".join(m.get("recipe", "?") for m in metas),
                    averaged=[str(path) for path in args.checkpoints])
    save_checkpoint(mean, args.output, iters=sum(int(m.get("iters", 0)) for m in metas), metadata=metadata, half=True)
    print(f"wrote {args.output} (mean of {len(args.checkpoints)} checkpoints)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
