"""``napari-segneuron finetune`` and ``napari-segneuron pretrain`` subcommands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import float_triple, magnify_arg, triple


def add_parser(subparsers) -> None:
    f = subparsers.add_parser(
        "finetune",
        help="finetune SegNeuron on your own labelled EM stack",
        description="Finetune MNet on a labelled stack (affinity + foreground BCE, Adam, cosine learning rate). "
        "Writes a checkpoint in the official layout every --checkpoint-every iterations; --resume continues one. "
        "Give --val-image/--val-labels to track VI and ARAND (best checkpoint kept as <OUT stem>_best.pt).",
    )
    f.add_argument("image", help="EM stack (.tif or .zarr, z-y-x)")
    f.add_argument("labels", help="instance labels of the same shape; 0 = boundary / background")
    f.add_argument("-o", "--output", required=True, metavar="CKPT", help="checkpoint file to write (.pt)")
    f.add_argument("--mask", default=None, help="volume marking annotated voxels (non-zero); others are ignored")
    f.add_argument("--membranes", action="store_true",
                   help="LABELS is a 2D membrane mask (non-zero = membrane): train xy affinities only")
    f.add_argument("--weights", default="default",
                   help="starting weights: a name ('default', 'segneuron'), a checkpoint, or 'none' for random")
    f.add_argument("--kn", default="16,32,48,64,128", help="channel counts when starting from random weights")
    _common(f, crop=(16, 96, 96))
    f.add_argument("--aff-weight", type=float, default=1.0, help="weight of the affinity BCE")
    f.add_argument("--fg-weight", type=float, default=1.0, help="weight of the foreground BCE")
    f.add_argument("--val-image", default=None, help="validation stack")
    f.add_argument("--val-labels", default=None, help="validation labels")
    f.add_argument("--validate-every", type=int, default=200, metavar="N")
    f.add_argument("--no-mixing", action="store_true", help="turn off amplitude mixing and CutMix")
    f.add_argument("--no-balance", action="store_true",
                   help="plain affinity BCE (default: boundary and inside affinities weigh equally)")
    f.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate and return an exponential moving average of the weights (e.g. 0.998)")
    f.add_argument("--mixed-precision", action="store_true",
                   help="bfloat16/float16 autocast where the hardware has it: on GPUs; on CPUs with native "
                        "bf16 only if one timed training step is faster with it (measured once per machine "
                        "and batch shape; on a Xeon without AMX fp32 was 15 %% faster)")
    f.add_argument("--minutes", type=float, default=None, metavar="M",
                   help="wall-clock budget: train for M minutes with the learning-rate schedule spread over "
                        "that time (iterations then only cap it when given explicitly)")
    f.add_argument("--voxel-size", type=float_triple, default=None, metavar="Z,Y,X",
                   help="voxel size of IMAGE in nm: the block is resampled to the voxel size the starting "
                        "model declares (as prediction does) and the checkpoint declares that grid; without a "
                        "declared model voxel size the checkpoint declares this one")
    f.add_argument("--magnify", type=magnify_arg, default="auto", metavar="M|auto",
                   help="train on the block shown M times larger, as 'segment --magnify M' predicts (e.g. the value "
                        "'napari-segneuron calibrate' chose); default 'auto': the label-free estimate on IMAGE, as "
                        "'segment' makes it. The checkpoint declares the voxel size it was trained at, so it "
                        "segments the stack without --magnify")
    f.set_defaults(func=run_finetune)

    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining on unlabelled EM stacks",
        description="Masked-noise reconstruction of the image and its HOG map (SegNeuron pretraining). The "
        "checkpoint holds MNet weights; start a finetune from it with --weights CKPT.",
    )
    p.add_argument("images", nargs="+", help="one or more EM stacks (.tif or .zarr)")
    p.add_argument("-o", "--output", required=True, metavar="CKPT", help="checkpoint file to write (.pt)")
    p.add_argument("--kn", default="16,32,48,64,128", help="MNet channel counts (5 numbers)")
    _common(p, crop=(20, 96, 96))
    p.set_defaults(func=run_pretrain)


def _common(p: argparse.ArgumentParser, crop) -> None:
    p.add_argument("--iterations", type=int, default=None, help="training steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--crop", type=triple, default=crop, metavar="Z,Y,X", help="training crop; y, x multiples of 16")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (Adam)")
    p.add_argument("--schedule", choices=["cosine", "poly", "constant"], default="cosine")
    p.add_argument("--zoom", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="scale augmentation range, e.g. 0.75 1.33 (off by default)")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="N")
    p.add_argument("--resume", default=None, metavar="CKPT", help="continue from this checkpoint")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace CKPT if it exists (not needed with --resume)")


def _kn(text: str) -> tuple:
    from ..io import InputError
    try:
        kn = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--kn needs 5 integers, got {text!r}") from None
    if len(kn) != 5:
        raise InputError(f"--kn needs 5 integers, got {text!r}")
    return kn


def _read(path: str):
    import numpy as np
    from ..io import read_volume
    vol, _ = read_volume(path)
    return np.asarray(vol)


def _check_out(args) -> None:
    from ..io import InputError
    out = Path(args.output)
    if out.exists() and not args.overwrite and not (args.resume and Path(args.resume).resolve() == out.resolve()):
        raise InputError(f"{out} already exists; pass --overwrite or --resume {out}")


def _augment(args, mixing: bool = True):
    from ..training.augment import AugmentConfig
    aug = AugmentConfig()
    if not mixing:
        aug.freq_mix = aug.spatial_mix = 0.0
    if args.zoom:
        aug.zoom, aug.zoom_range = 0.5, (min(args.zoom), max(args.zoom))
    return aug


def _progress(desc: str):
    from .common import TerminalProgress
    return TerminalProgress(desc)


def run_finetune(args) -> int:
    import numpy as np
    from ..training.finetune import finetune
    from ..training.targets import labels_from_membranes

    _check_out(args)
    image, labels = _read(args.image), _read(args.labels)
    if args.membranes:
        labels = labels_from_membranes((labels != 0).astype(np.float32))
    mask = _read(args.mask) != 0 if args.mask else None
    from ..training.targets import no_membranes_warning

    warning = no_membranes_warning(labels, mask) if mask is None or mask.shape == labels.shape else ""
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    val_img = _read(args.val_image) if args.val_image else None
    val_lab = _read(args.val_labels) if args.val_labels else None
    model = None if args.weights.lower() == "none" or args.resume else args.weights
    extra = {}
    if args.magnify == "auto":
        model, args.magnify = _estimated_magnify(model, image, args.voxel_size)
    else:
        # a magnification chosen by hand: the starting weights' reference neurite width no longer
        # describes the grid these weights learn, so 'auto' must not be used with them
        extra["neurite_halfwidth"] = None
    if args.voxel_size is not None or args.magnify != 1.0:
        model, image, labels, mask, grid = to_model_grid(model, image, labels, mask, args.voxel_size, args.magnify)
        extra.update(grid)
    iterations, limit_s = _budget(args)
    # with --minutes, finetune reports seconds of the budget (which starts after the set-up)
    bar = _Announcing(_progress("finetune" if limit_s is None else "finetune (s)"))
    extra["training_data"] = {"image": str(Path(args.image).resolve()), "labels": str(Path(args.labels).resolve()),
                              "mask": str(Path(args.mask).resolve()) if args.mask else None,
                              "membranes": bool(args.membranes)}
    try:
        r = finetune(model, image, labels, mask=mask, z_affinity=not args.membranes, val_image=val_img,
                     val_labels=val_lab, iterations=iterations, batch_size=args.batch_size, crop=args.crop,
                     lr=args.lr, schedule=args.schedule, aff_weight=args.aff_weight, fg_weight=args.fg_weight,
                     augment=_augment(args, not args.no_mixing), checkpoint=args.output,
                     checkpoint_every=args.checkpoint_every, validate_every=args.validate_every if val_img is not None
                     else 0, resume=args.resume, device=None if args.device == "auto" else args.device,
                     seed=args.seed, threads=args.threads, kn=_kn(args.kn), progress=bar,
                     balance=not args.no_balance, ema_decay=args.ema, mixed_precision=args.mixed_precision,
                     time_limit_s=limit_s, time_schedule=limit_s is not None, metadata=extra or None,
                     log=lambda s: print(s, file=sys.stderr) if "validation" in s else None)
    finally:
        bar.close()
    print(f"wrote {r.checkpoint} after {r.iterations} iterations"
          + (f"; best validation {r.best_score} in {r.best_checkpoint}" if r.best_checkpoint else ""))
    return 0


def _estimated_magnify(model, image, voxel_size):
    """``--magnify auto`` for finetune: the starting weights (loaded), and the label-free estimate
    on the training image (1 without starting weights or a reference to compare with)."""
    from .common import resolve_magnify
    from ..inference import Predictor

    if model is None:
        return None, 1.0
    model = _load_start(model)
    if not (model.info.get("neurite_halfwidth") and model.info.get("voxel_size_nm")):
        return model, 1.0
    ns = argparse.Namespace(magnify="auto")
    return model, resolve_magnify(ns, Predictor(model, device="cpu"), image, voxel_size)


def _load_start(model):
    """Starting weights as a module with ``info`` (a name or path is loaded on the CPU)."""
    if model is None or hasattr(model, "info"):
        return model
    from .._model import load_named

    return load_named(str(model), device="cpu")


def to_model_grid(model, image, labels, mask, voxel_size, magnify: float = 1.0):
    """The starting model loaded, and the block moved to the grid it declares, magnified
    ``magnify`` times (``training.grid.block_on_model_grid``), with the metadata that declares the
    grid trained on."""
    from ..training.grid import block_on_model_grid

    model_voxel = None
    if model is not None:  # loaded once: its info gives the declared grid, finetune takes the module
        model = _load_start(model)
        model_voxel = model.info["voxel_size_nm"]
    if model is None and magnify != 1.0:
        from ..io import InputError
        raise InputError("--magnify needs starting weights that declare their voxel size (not --weights none)")
    image2, labels2, mask2, meta = block_on_model_grid(image, labels, mask, voxel_size, model_voxel, magnify)
    if image2 is not image:
        print(f"training block resampled from {tuple(image.shape)} to {tuple(image2.shape)}: "
              f"{'×'.join(f'{v:g}' for v in meta['voxel_size_nm'])} nm per voxel"
              + (f" (magnified {magnify:g}x onto the model's grid)" if magnify != 1.0 else " (the model's grid)"),
              file=sys.stderr)
    return model, image2, labels2, mask2, meta


def _budget(args) -> tuple:
    """(iterations, time limit in seconds or None) from --iterations / --minutes."""
    from ..io import InputError
    from ..training.loop import NO_ITERATION_CAP

    minutes = getattr(args, "minutes", None)
    if minutes is None:
        return (args.iterations or 1000), None
    if not minutes > 0:
        raise InputError(f"--minutes must be positive, got {minutes}")
    # a pure time budget: the schedule follows the clock, no iteration cap
    return (args.iterations or NO_ITERATION_CAP), 60.0 * minutes


class _Announcing:
    """A progress bar that also prints the one-off set-up line (the precision probe) to stderr."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, done: int, total: int, message: str = "") -> None:
        from ..training.step_precision import PROBE_MESSAGE

        if message == PROBE_MESSAGE:
            print(message, file=sys.stderr)
        self.bar(done, total, message)

    def close(self) -> None:
        self.bar.close()


def run_pretrain(args) -> int:
    from ..training.pretrain import pretrain

    _check_out(args)
    images = [_read(p) for p in args.images]
    bar = _progress("pretrain")
    try:
        r = pretrain(images, kn=_kn(args.kn), iterations=args.iterations or 1000, batch_size=args.batch_size,
                     crop=args.crop, lr=args.lr, schedule=args.schedule, augment=_augment(args),
                     checkpoint=args.output, checkpoint_every=args.checkpoint_every, resume=args.resume,
                     device=None if args.device == "auto" else args.device, seed=args.seed, threads=args.threads,
                     progress=bar)
    finally:
        bar.close()
    print(f"wrote {r.checkpoint} after {r.iterations} iterations; finetune from it with --weights {r.checkpoint}")
    return 0
