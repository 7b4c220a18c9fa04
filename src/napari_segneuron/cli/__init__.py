"""Command line: ``napari-segneuron predict|segment|evaluate|calibrate|finetune|pretrain|trace|export``.

Each subcommand lives in its own module that defines ``add_parser(subparsers)``;
this file only assembles them and turns expected errors into one-line messages.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

SUBCOMMAND_MODULES = (
    "napari_segneuron.cli.predict",
    "napari_segneuron.cli.segment",
    "napari_segneuron.cli.calibrate",
    "napari_segneuron.cli.train",
    "napari_segneuron.cli.trace",
    "napari_segneuron.cli.export",
)

DESCRIPTION = """\
SegNeuron neuron segmentation for 3D electron microscopy, without opening napari.

Typical use:
  napari-segneuron predict stack.tif -o prediction.zarr          # affinities + foreground
  napari-segneuron segment stack.tif -o labels.tif               # predict and segment
  napari-segneuron segment prediction.zarr -o labels.tif --threshold 0.4
  napari-segneuron evaluate labels.tif ground_truth.tif          # VI and ARAND
  napari-segneuron calibrate stack.tif painted_block.tif         # magnification + thresholds from one block
  napari-segneuron trace lm_stack.tif -o neuron.swc              # light microscopy: trace to SWC

Weights: --weights default (bundled compact model), --weights segneuron (the released
SegNeuron checkpoint, downloaded once), or --weights path/to/checkpoint.ckpt.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-segneuron", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"napari-segneuron {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # subcommand not installed in this build
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..cancel import Cancelled
    from ..io import InputError
    from .._model.weights import WeightsError

    try:
        return int(args.func(args) or 0)
    except (InputError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
