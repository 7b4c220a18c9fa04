"""``napari-segneuron predict``: affinities and foreground for a volume."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .common import (
    apply_roi,
    TerminalProgress,
    add_model_arguments,
    check_output_path,
    checked_volume,
    input_voxel_size,
    magnify_of,
    load_weights,
    make_predictor,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict affinities and foreground probability for an EM stack",
        description="Run SegNeuron on a 3D EM stack (tif or zarr, z-y-x) and write affinities (z, y, x "
        "channels) and the foreground probability. A .zarr output holds arrays 'affinities' (3,Z,Y,X) and "
        "'foreground' (Z,Y,X) and is written as it goes (fits volumes larger than memory); a .tif output "
        "holds 4 channels: affinity z, y, x, foreground.",
    )
    p.add_argument("input", metavar="IN", help="EM stack: .tif/.tiff or .zarr (array, or group with 'raw')")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output .zarr or .tif")
    add_model_arguments(p)
    from .blockwise import add_blockwise_arguments

    add_blockwise_arguments(p)
    p.add_argument("--float16", action="store_true", help="store outputs as float16 (half the disk space)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def provenance(args: argparse.Namespace, model, predictor) -> dict:
    from .. import __version__
    from .._model.info import ModelInfo

    return {
        "plugin_version": __version__,
        **ModelInfo.of(model).provenance(),
        "tile": list(predictor.tiling.tile),
        "overlap": list(predictor.tiling.overlap),
        "half": predictor.half,
        "tta": predictor.tta,
        "inference": predictor.settings(),
        "model_voxel_size_nm": predictor.model_voxel_size,
        "magnify": magnify_of(args),
        **({"magnify_estimate": args.magnify_estimate.record()} if getattr(args, "magnify_estimate", None) else {}),
        "command": " ".join(["napari-segneuron"] + sys.argv[1:]) if sys.argv else "",
    }


def run(args: argparse.Namespace) -> int:
    from . import blockwise as _cli_blockwise

    if _cli_blockwise.wants_blockwise(args):  # --block / --scheduler
        return _cli_blockwise.run_predict(args)
    from ..atomic import atomic_output
    from ..inference import zarr_output
    from ..io import as_volume, read_volume, write_prediction

    check_output_path(args.output, args.overwrite)
    volume, _voxel = read_volume(args.input)
    volume = as_volume(volume, name=args.input)
    roi_meta: dict = {}
    volume = apply_roi(volume, args.roi, roi_meta)
    volume = checked_volume(volume, name=args.input)
    model = load_weights(args.weights, args.device)
    predictor = make_predictor(args, model)
    print(f"{model.describe()} on {predictor.device}; volume {tuple(volume.shape)}", file=sys.stderr)
    voxel = input_voxel_size(args, _voxel, predictor, volume)
    dtype = np.float16 if args.float16 else np.float32
    meta = {**provenance(args, model, predictor), **roi_meta}
    if voxel:  # as predicted (the stack's own times --magnify): `segment PRED` picks its edge score by it
        meta["voxel_size_nm"] = [float(v) for v in voxel]
    bar = TerminalProgress("predict")
    try:
        if str(args.output).rstrip("/").lower().endswith(".zarr"):
            with atomic_output(args.output) as tmp:
                out = zarr_output(str(tmp), tuple(volume.shape), dtype=dtype, metadata=meta)
                predictor.predict(volume, progress=bar, out=out, voxel_size=voxel)
        else:
            aff, fg = predictor.predict(volume, progress=bar, dtype=dtype, voxel_size=voxel)
            write_prediction(args.output, aff, fg, metadata=meta, overwrite=args.overwrite)
    finally:
        bar.close()
    print(f"wrote {args.output}", file=sys.stderr)
    return 0
