"""Helpers shared by the CLI subcommands: argument types, progress bars, model loading."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from ..io import InputError
from ..tta import DEFAULT_TTA, TTA_ARGUMENTS


def triple(text: str) -> tuple[int, int, int]:
    """Parse ``Z,Y,X`` (or one number for all three axes)."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X integers, got {text!r}") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers Z,Y,X, got {text!r}")
    return parts[0], parts[1], parts[2]


def float_triple(text: str) -> tuple[float, float, float]:
    """Parse ``Z,Y,X`` floats (voxel sizes in nm)."""
    try:
        parts = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Z,Y,X numbers, got {text!r}") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected three positive numbers Z,Y,X, got {text!r}")
    return parts[0], parts[1], parts[2]


def add_model_arguments(p: argparse.ArgumentParser, weights_default: Optional[str] = "default") -> None:
    g = p.add_argument_group("model and inference")
    g.add_argument("--weights", default=weights_default, metavar="NAME_OR_PATH",
                   help="weights: 'default' (bundled), 'segneuron' (released, downloaded once) or a checkpoint file "
                        f"(default: {weights_default})")
    g.add_argument("--tile", type=triple, default=None, metavar="Z,Y,X",
                   help="tile size in voxels; y and x multiples of 16 (default 32,192,192, fitted to the volume; "
                        "the same on every machine)")
    g.add_argument("--overlap", type=triple, default=None, metavar="Z,Y,X",
                   help="overlap between tiles (default 8,32,32)")
    g.add_argument("--official-tiling", action="store_true",
                   help="use the official SegNeuron tiling (20,128,128 tiles, stride 10,64,64): slower")
    g.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="tiles per forward pass (default: 1 on CPU, sized to free memory on a GPU)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="where to run the network (default: cuda, then mps, then cpu)")
    g.add_argument("--tta", nargs="?", const="mean", default=DEFAULT_TTA, choices=TTA_ARGUMENTS,
                   help="test-time augmentation over the y/x flips (4x the compute). Default 'min': each affinity's "
                        "lowest of the four views, so a boundary any view sees stays (fewer merges; on the unseen "
                        "VNC stack VI 0.449 -> 0.404, mean over 3 tile plans); 'mean' (a bare --tta) averages the "
                        "views; 'off' predicts once, 4x faster")
    g.add_argument("--half", action="store_true",
                   help="reduced precision where the device has it natively and it measured faster (fp16 on GPU, "
                        "bf16 on CPUs with avx512_bf16/amx_bf16; else fp32 with a note): faster, slightly different")
    g.add_argument("--autotune", action="store_true",
                   help="time this machine's candidates again (threads, memory format, precision); done "
                        "automatically the first time a model architecture runs here and cached in "
                        "$NAPARI_SEGNEURON_CACHE/autotune.json")
    g.add_argument("--voxel-size", type=float_triple, default=None, metavar="Z,Y,X",
                   help="voxel size of the input in nm (default: from the tif metadata; if unknown, the model's own)")
    g.add_argument("--roi", type=parse_roi, default=None, metavar="Z0:Z1,Y0:Y1,X0:X1",
                   help="process only this box of the input (voxel indices, end excluded; e.g. a napari preview's region)")
    g.add_argument("--model-voxel-size", type=float_triple, default=None, metavar="Z,Y,X",
                   help="override the voxel size in nm the model was trained at (e.g. for the released SegNeuron weights)")
    g.add_argument("--magnify", type=magnify_arg, default="auto", metavar="M|auto",
                   help="show the stack to the model magnified M times (1: its true scale; >1 for tissue with finer "
                        "neurites and membranes than the training data's). Default 'auto': estimated from the image, "
                        "without labels (the model's neurite width on sample blocks against its training data's; "
                        "estimates below 1.25 count as 1; it never shrinks). 'napari-segneuron calibrate' picks it from one "
                        "painted block instead")


def magnify_arg(text: str):
    """``--magnify``: 'auto' or a positive number."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the magnification must be a positive number, got {text!r}")
    return value


def magnify_of(args: argparse.Namespace) -> float:
    """The numeric magnification of ``args`` ('auto' not yet resolved counts as 1)."""
    value = getattr(args, "magnify", 1.0)
    return 1.0 if value in (None, "auto") else float(value)


def resolve_magnify(args: argparse.Namespace, predictor, volume, voxel) -> float:
    """Replace ``--magnify auto`` by the label-free estimate (``scale_estimate``) on ``volume``,
    saying what was found; ``args.magnify_estimate`` keeps the details. Numbers pass through."""
    if getattr(args, "magnify", 1.0) != "auto":
        return magnify_of(args)
    from ..scale_estimate import estimate_magnification

    bar = TerminalProgress("scale")
    try:
        est = estimate_magnification(predictor, volume, voxel, progress=bar)
    finally:
        bar.close()
    args.magnify = est.magnify
    args.magnify_estimate = est
    if est.reference is not None:  # weights without a reference stay silent
        print(f"magnify auto: {est.summary()}", file=sys.stderr)
    return est.magnify


def parse_roi(text: str) -> tuple[slice, slice, slice]:
    """Parse ``Z0:Z1,Y0:Y1,X0:X1`` into three slices (an empty bound means the edge)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected Z0:Z1,Y0:Y1,X0:X1, got {text!r}")
    out = []
    for part in parts:
        bounds = part.split(":")
        try:
            if len(bounds) != 2:
                raise ValueError
            lo, hi = (int(b) if b.strip() else None for b in bounds)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected Z0:Z1,Y0:Y1,X0:X1 with integers, got {text!r}") from None
        if (lo is not None and lo < 0) or (hi is not None and hi < 0) or (lo is not None and hi is not None and hi <= lo):
            raise argparse.ArgumentTypeError(f"each range must be non-negative and non-empty, got {part!r}")
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def apply_roi(volume, roi: Optional[tuple], meta: Optional[dict] = None):
    """``volume[roi]`` (lazy for zarr/dask), checked against the volume's shape; records it in ``meta``."""
    if roi is None:
        return volume
    shape = tuple(int(s) for s in volume.shape)
    for axis, (sl, n) in enumerate(zip(roi, shape)):
        if (sl.start or 0) >= n or (sl.stop is not None and sl.stop > n):
            raise InputError(f"--roi {sl.start}:{sl.stop} on axis {'zyx'[axis]} is outside the volume {shape}")
    cropped = volume[roi]
    if meta is not None:
        meta["roi"] = {"start": [sl.start or 0 for sl in roi], "stop": [sl.stop or n for sl, n in zip(roi, shape)]}
    return cropped


class TerminalProgress:
    """A tqdm progress bar fed by ``progress(done, total, message)`` callbacks."""

    def __init__(self, desc: str, unit: str | None = None):
        self.desc = desc
        self.unit = unit or ("tile" if desc == "predict" else "B" if desc == "download" else "step")
        self.bar = None
        self.started = time.time()  # the work starts now, not at its first report

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, desc=self.desc, unit=self.unit, file=sys.stderr, dynamic_ncols=True)
            self.bar.start_t = self.started  # so the first step's rate and the ETA count its time
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def checked_volume(volume, name: str):
    """The volume as predict should see it: NaN/inf replaced by the darkest value
    (``io.check_finite``), with one ``warning:`` line for that and for a constant or
    noise-only image (``image_checks``)."""
    import warnings

    from ..image_checks import content_warning
    from ..io import check_finite

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = check_finite(volume, name=name)
    notes = [str(w.message) for w in caught]
    note = content_warning(volume, name=name)
    if note:
        notes.append(note)
    for text in notes:
        print(f"warning: {text}", file=sys.stderr)
    return volume


def load_weights(name_or_path: str, device: Optional[str]):
    """Fetch (download if needed) and load weights, with a download bar."""
    from .._model import load_named

    bar = TerminalProgress("download")
    try:
        return load_named(name_or_path, device=None if device in (None, "auto") else device, progress=bar)
    finally:
        bar.close()


def make_predictor(args: argparse.Namespace, model):
    """The ``Predictor`` the parsed arguments describe (``settings.PredictSettings``)."""
    from ..allocator import retain_freed_memory
    from ..settings import PredictSettings

    retain_freed_memory()  # a command-line process: reuse freed layer memory instead of page-faulting new
    return PredictSettings.from_args(args).predictor(model)


def check_output_path(path: str, overwrite: bool) -> None:
    from pathlib import Path

    p = Path(path)
    if p.exists() and not overwrite:
        raise InputError(f"{p} already exists; pass --overwrite to replace it")
    if not str(p).lower().rstrip("/").endswith((".tif", ".tiff", ".zarr")):
        raise InputError(f"Output must end in .tif, .tiff or .zarr, got {p.name}")


def input_voxel_size(args: argparse.Namespace, from_file, predictor, volume=None) -> Optional[tuple]:
    """The input's voxel size: --voxel-size, else the file's metadata, else None (with a note);
    with --magnify, the size that shows the stack to the model magnified ('auto' is estimated
    on ``volume`` first, see ``resolve_magnify``; without a volume it counts as 1)."""
    from ..calibration import magnified_voxel_size
    from ..resample import needs_resampling

    voxel = getattr(args, "voxel_size", None) or from_file
    model_voxel = predictor.model_voxel_size
    if getattr(args, "magnify", 1.0) == "auto" and volume is not None:
        resolve_magnify(args, predictor, volume, voxel)
    magnify = magnify_of(args)
    if magnify != 1.0:
        magnified = magnified_voxel_size(voxel, model_voxel, magnify)
        fmt = lambda v: "×".join(f"{x:g}" for x in v)  # noqa: E731
        known = f"{fmt(voxel)} nm" if voxel else "voxel size unknown, taken as the model's"
        print(f"magnify {magnify:g}: the stack ({known}) is predicted as if its voxels were {fmt(magnified)} nm",
              file=sys.stderr)
        from .._model.info import ModelInfo  # not at the top: --help stays free of torch

        trained = ModelInfo.of(predictor.model).trained_magnify
        if trained:
            print(f"note: these weights were finetuned at magnification {trained:g} and declare that grid; "
                  f"--magnify {magnify:g} magnifies on top of it (leave it out to predict as they were trained)",
                  file=sys.stderr)
        voxel = magnified
    if voxel is None:
        if model_voxel is not None:
            print(f"note: the input's voxel size is unknown; assuming the model's own {model_voxel} nm "
                  "(pass --voxel-size Z,Y,X to resample)", file=sys.stderr)
        return None
    if needs_resampling(voxel, model_voxel, predictor.tolerance):
        print(f"resampling from {tuple(voxel)} nm to the model's {model_voxel} nm and back", file=sys.stderr)
    return tuple(voxel)


def resolve_fg_threshold(args: argparse.Namespace, source) -> float:
    """``--fg-threshold`` if given, else what the weights declare (``source``: the model or the
    prediction's provenance), else the package default; sets ``args.fg_threshold`` and says which."""
    from ..segmentation import DEFAULT_FG_THRESHOLD, foreground_threshold_for

    if args.fg_threshold is None:
        args.fg_threshold = foreground_threshold_for(source)
        if args.fg_threshold != DEFAULT_FG_THRESHOLD and not args.no_foreground:
            print(f"foreground threshold {args.fg_threshold:g}: the value these weights declare "
                  "(--fg-threshold to change it)", file=sys.stderr)
    return args.fg_threshold


def resolve_scoring_arg(args: argparse.Namespace, voxel_size) -> str:
    """Replace ``--scoring auto`` by the edge score for this stack's voxel size
    (``segmentation.resolve_scoring``) and say which when it is not the package default."""
    from ..segmentation import AUTO_SCORING, DEFAULT_SCORING, resolve_scoring

    auto = args.scoring in (None, AUTO_SCORING)
    chosen = resolve_scoring(args.scoring, voxel_size)
    if auto and chosen != DEFAULT_SCORING:
        shown = "×".join(f"{v:g}" for v in voxel_size)
        print(f"edge score {chosen}: serial sections ({shown} nm; --scoring to change it)", file=sys.stderr)
    args.scoring = chosen
    return chosen
