"""``napari-segneuron calibrate``: fit magnification, thresholds and edge score to one painted block."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import TerminalProgress, add_model_arguments, checked_volume, load_weights, make_predictor, resolve_magnify


def _floats(text: str) -> tuple[float, ...]:
    """Parse comma-separated numbers (``0.75,1,1.5``) for argparse."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    """Parse comma-separated edge scores (``median,mean``) for argparse."""
    from ..io import InputError
    from ..segmentation.defaults import check_scoring

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated edge scores, got {text!r}")
    try:
        return tuple(check_scoring(v, custom=False) for v in values)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(subparsers) -> None:
    from ..calibration import DEFAULT_MAGNIFICATIONS, DEFAULT_SCORINGS

    p = subparsers.add_parser(
        "calibrate",
        help="pick magnification, thresholds and edge score for your stack from one painted block (no training)",
        description="Predict the painted block of LABELS at several magnifications, segment it at several "
        "foreground thresholds with each edge score and at every merge threshold, score each against the painted ids (VI) and print the best setting "
        "with the command that uses it. Minutes on a CPU (most of it the magnified predictions); finetune afterwards with the same --magnify.",
    )
    p.add_argument("image", help="EM stack (.tif or .zarr, z-y-x)")
    p.add_argument("labels", help="labels of the image's shape: every neuron painted in one block (0 elsewhere)")
    p.add_argument("--mask", default=None, help="volume marking the annotated block (non-zero); default: the "
                                                "bounding box of the painted ids")
    p.add_argument("--magnifications", type=_floats, default=DEFAULT_MAGNIFICATIONS, metavar="M1,M2,...",
                   help=f"magnifications to try (default {','.join(f'{m:g}' for m in DEFAULT_MAGNIFICATIONS)})")
    p.add_argument("--fg-thresholds", type=_floats, default=None, metavar="F1,F2,...",
                   help="foreground thresholds to try (default: 0.5 and the one the weights declare)")
    p.add_argument("--scorings", type=_names, default=DEFAULT_SCORINGS, metavar="S1,S2,...",
                   help=f"edge scores to try (default {','.join(DEFAULT_SCORINGS)}; the one segment's "
                        "'--scoring auto' picks for this voxel size is always tried)")
    sections = p.add_mutually_exclusive_group()
    sections.add_argument("--per-section", dest="per_section", action="store_true", default=None,
                          help="score section by section (labels painted as 2D ids); default: when no id spans "
                               "two sections")
    sections.add_argument("--3d", dest="per_section", action="store_false", help="score in 3D")
    p.add_argument("--json", default=None, metavar="FILE", help="write every scored setting to this JSON file")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    add_model_arguments(p)
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from ..atomic import atomic_output
    from ..calibration import calibrate
    from ..io import InputError, as_volume, read_volume
    from ..segmentation import resolve_scoring

    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    if getattr(args, "magnify", "auto") not in ("auto", 1.0):
        raise InputError("calibrate chooses the magnification itself: leave out --magnify (use --magnifications)")
    volume, voxel = read_volume(args.image)
    volume = checked_volume(as_volume(volume, name=args.image), name=args.image)
    labels, _ = read_volume(args.labels)
    labels = np.asarray(labels)
    if labels.shape != tuple(volume.shape):
        raise InputError(f"{args.labels} is {'×'.join(map(str, labels.shape))} but {args.image} is "
                         f"{'×'.join(map(str, volume.shape))}: the labels must cover the image")
    mask = None
    if args.mask:
        mask, _ = read_volume(args.mask)
        mask = np.asarray(mask)
        if mask.shape != labels.shape:
            raise InputError(f"{args.mask} is {'×'.join(map(str, mask.shape))}, not the image's shape")
    model = load_weights(args.weights, args.device)
    predictor = make_predictor(args, model)
    voxel = args.voxel_size or voxel
    print(f"{model.describe()} on {predictor.device}; image {tuple(volume.shape)}, voxel size "
          f"{'×'.join(f'{v:g}' for v in voxel) + ' nm' if voxel else 'unknown'}", file=sys.stderr)
    # the default to beat: what 'segment' would do, the label-free magnification included
    default_magnify = resolve_magnify(args, predictor, volume, voxel)
    bar = TerminalProgress("calibrate")
    try:
        result = calibrate(predictor, volume, labels, voxel_size=voxel, mask=mask,
                           magnifications=args.magnifications, fg_thresholds=args.fg_thresholds,
                           scorings=args.scorings, default_magnify=default_magnify, per_section=args.per_section, progress=bar)
    finally:
        bar.close()
    print("best per magnification (VI on the block; split / merge):")
    for m in sorted({r["magnify"] for r in result.table}):
        r = min((r for r in result.table if r["magnify"] == m), key=lambda r: r["vi"])
        print(f"  magnify {m:<5g} foreground ≥ {r['fg_threshold']:<5g} {r['scoring']:<6s} merge {r['threshold']:<5g} "
              f"VI {r['vi']:.3f} ({r['vi_split']:.3f} / {r['vi_merge']:.3f})")
    print(f"defaults (magnification {result.default['magnify']:g}): VI {result.default_vi:.3f}")
    print(f"chosen: {result.summary()}")
    voxel_arg = f" --voxel-size {','.join(f'{v:g}' for v in voxel)}" if args.voxel_size else ""
    weights_arg = f" --weights {args.weights}" if args.weights != "default" else ""
    scoring_arg = f" --scoring {result.scoring}" if result.scoring != resolve_scoring("auto", voxel) else ""
    print(f"use: napari-segneuron segment {args.image}{weights_arg}{voxel_arg} --magnify {result.magnify:g} "
          f"--fg-threshold {result.fg_threshold:g}{scoring_arg} --threshold {result.threshold:g} -o labels.tif")
    if args.json:
        doc = {"magnify": result.magnify, "fg_threshold": result.fg_threshold, "scoring": result.scoring,
               "threshold": result.threshold,
               "vi": result.vi, "default_vi": result.default_vi, "default": result.default,
               "box": [list(b) for b in result.box], "per_section": result.per_section, "table": result.table}
        with atomic_output(Path(args.json)) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
    return 0
