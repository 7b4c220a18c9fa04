"""``napari-segneuron trace``: light-microscopy stack -> foreground -> SWC tracing."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .common import TerminalProgress, float_triple, triple
from ..io import InputError


def point(text: str) -> tuple[float, float, float]:
    """Parse a ``Z,Y,X`` voxel position (zero allowed)."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X voxel coordinates, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 0:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X voxel coordinates (not negative), got {text!r}")
    return parts  # type: ignore[return-value]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "trace",
        help="trace neurons in a 3D light-microscopy stack to SWC",
        description="Predict the neuron foreground of a 3D light-microscopy stack (confocal / two-photon, tif or "
        "zarr, z-y-x) with the LM model, skeletonise it and join the pieces across dim gaps along the cheapest paths and write one SWC tree per neuron, rooted at its soma. SWC "
        "coordinates: x = column, y = row, z = slice, times the voxel size (µm from the tif metadata or "
        "--voxel-size; 1 when unknown).",
    )
    p.add_argument("input", metavar="STACK", help="LM stack: .tif/.tiff or .zarr")
    p.add_argument("-o", "--output", required=True, metavar="TREE.swc", help="output SWC file")
    p.add_argument("--mask-out", default=None, metavar="MASK.tif",
                   help="also write the predicted foreground mask (non-zero = neuron, same shape as the stack)")
    p.add_argument("--weights", default="lm_default", metavar="NAME|FILE",
                   help="LM model: 'lm_default' (bundled) or a ViT3D checkpoint file (default: lm_default)")
    p.add_argument("--voxel-size", type=float_triple, default=None, metavar="Z,Y,X",
                   help="voxel size (µm) for the SWC coordinates (default: from the file, else 1,1,1)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="foreground probability threshold in (0, 1) (default: the model's tuned threshold, else 0.5)")
    p.add_argument("--min-size", type=int, default=50, metavar="N",
                   help="drop foreground components smaller than N voxels (default 50)")
    p.add_argument("--spur-length", type=float, default=4.0, metavar="L",
                   help="prune terminal branches shorter than L voxels (default 4)")
    p.add_argument("--max-gap", type=float, default=15.0, metavar="L",
                   help="join skeleton pieces across dim gaps up to L voxels along the cheapest path through the "
                   "foreground and the stack; 0 = off (default 15)")
    p.add_argument("--max-gap-um", type=float, default=None, metavar="L",
                   help="the maximum gap in the voxel-size units (µm); replaces --max-gap")
    p.add_argument("--background", type=float, default=0.05, metavar="B",
                   help="never join through voxels whose foreground probability and normalised intensity are "
                   "both below B (default 0.05)")
    p.add_argument("--root", type=point, action="append", default=None, metavar="Z,Y,X",
                   help="root (soma) of a neuron in voxels; repeat for several neurons (default: the thickest point "
                   "of each tree)")
    p.add_argument("--tile", type=triple, default=None, metavar="Z,Y,X", help="tile size (default 40,168,168)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=run)


def _check_outputs(args: argparse.Namespace) -> None:
    out = Path(args.output)
    if out.suffix.lower() != ".swc":
        raise InputError(f"Output must end in .swc, got {out.name}")
    for path in (out, Path(args.mask_out) if args.mask_out else None):
        if path is not None and path.exists() and not args.overwrite:
            raise InputError(f"{path} already exists; pass --overwrite to replace it")
    if args.mask_out and not str(args.mask_out).lower().rstrip("/").endswith((".tif", ".tiff", ".zarr")):
        raise InputError(f"--mask-out must end in .tif, .tiff or .zarr, got {Path(args.mask_out).name}")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise InputError(f"--threshold must lie strictly between 0 and 1, got {args.threshold}")
    if args.max_gap < 0 or (args.max_gap_um is not None and args.max_gap_um < 0):
        raise InputError("--max-gap / --max-gap-um must not be negative")


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from .._model.vit3d import load_lm_model
    from ..io import as_volume, read_volume, write_labels, write_swc
    from ..tracing import predict_foreground, trace

    _check_outputs(args)
    volume, voxel_nm = read_volume(args.input)
    volume = np.asarray(as_volume(volume, name=args.input))
    if args.voxel_size is not None:
        voxel = tuple(args.voxel_size)
    elif voxel_nm is not None:
        voxel = tuple(v / 1000.0 for v in voxel_nm)  # SWC coordinates in µm
    else:
        voxel = (1.0, 1.0, 1.0)
    for r in args.root or ():
        if any(c > s - 1 for c, s in zip(r, volume.shape)):
            raise InputError(f"--root {r} lies outside the stack of shape {volume.shape}")
    model = load_lm_model(args.weights, device=None if args.device == "auto" else args.device)
    if args.threshold is None:
        args.threshold = float((model.info.get("metadata") or {}).get("threshold", 0.5))
    print(f"{model.describe()}; stack {volume.shape}, voxel {voxel} µm, threshold {args.threshold}", file=sys.stderr)
    bar = TerminalProgress("predict")
    try:
        prob = predict_foreground(model, volume, tile=args.tile, device=None if args.device == "auto" else args.device,
                                  progress=bar)
    finally:
        bar.close()
    nodes, mask = trace(prob, threshold=args.threshold, voxel_size=voxel, min_size=args.min_size,
                        spur_length=args.spur_length, max_gap=args.max_gap, max_gap_um=args.max_gap_um,
                        background=args.background, image=volume, root=args.root)
    n_trees = int((nodes[:, 6] < 0).sum()) if len(nodes) else 0
    header = (f"napari-segneuron {__version__} trace; weights {model.info.get('name')}; threshold {args.threshold}\n"
              f"source {Path(args.input).name}; voxel size (z,y,x) {voxel}; {n_trees} trees")
    if args.overwrite and Path(args.output).exists():
        Path(args.output).unlink()
    write_swc(args.output, nodes, header=header)
    if args.mask_out:
        write_labels(args.mask_out, mask.astype(np.uint8),
                     metadata={"plugin_version": __version__, "weights": model.info.get("name"),
                               "threshold": args.threshold}, overwrite=args.overwrite)
    print(f"wrote {args.output}: {len(nodes)} nodes in {n_trees} trees", file=sys.stderr)
    return 0
