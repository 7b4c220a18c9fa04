"""``napari-segneuron export``: label volume -> OME-Zarr or Neuroglancer precomputed, for sharing."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .common import float_triple
from ..io import InputError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a label volume to OME-Zarr or Neuroglancer precomputed",
        description="Write a label volume (tif or zarr, z-y-x) as an OME-Zarr multiscale group (NGFF 0.4, "
        "levels by striding so ids stay exact) or a Neuroglancer precomputed segmentation (optionally with "
        "meshes). The output is written to a temporary folder and renamed into place.",
    )
    p.add_argument("input", metavar="LABELS", help="label volume: .tif/.tiff or .zarr")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.add_argument("--format", required=True, choices=["ome-zarr", "precomputed"], dest="fmt")
    p.add_argument("--meshes", action="store_true", help="precomputed: also mesh every segment")
    p.add_argument("--image", default=None, metavar="STACK",
                   help="ome-zarr: also write this image (same shape) with the labels under labels/segmentation")
    p.add_argument("--voxel-size", type=float_triple, default=None, metavar="Z,Y,X",
                   help="voxel size in nm (default: from the file, else 1,1,1)")
    p.add_argument("--levels", type=int, default=3, metavar="N", help="ome-zarr: pyramid levels, at least 2 (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import read_volume

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    labels, voxel = read_volume(args.input)
    labels = np.asarray(labels)
    voxel = tuple(args.voxel_size) if args.voxel_size is not None else (voxel or (1.0, 1.0, 1.0))
    if args.fmt == "ome-zarr":
        from ..export.ome_zarr import write_ome_zarr

        image = np.asarray(read_volume(args.image)[0]) if args.image else None
        write_ome_zarr(out, labels, voxel, image=image, levels=args.levels, overwrite=args.overwrite)
    else:
        try:
            from ..export.precomputed import write_precomputed
        except ImportError as err:
            raise InputError(f"precomputed export needs tensorstore and zmesh ({err}); "
                             "pip install 'napari-segneuron[export]'") from None
        write_precomputed(out, labels, voxel, meshes=args.meshes, overwrite=args.overwrite)
    print(f"wrote {out} ({args.fmt}, {labels.shape}, voxel {voxel} nm)", file=sys.stderr)
    return 0
