"""``--scheduler`` / ``--block`` for ``predict`` and ``segment``: the blockwise path.

Without either flag the subcommands run as before. With them, prediction and segmentation
run block by block (``distributed.predict_blockwise``, ``segmentation.blockwise``) in this
process (``--block`` alone), on a LocalCluster (``--scheduler local:N``) or on an existing
dask cluster (``--scheduler tcp://host:8786``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .common import TerminalProgress, magnify_of, triple
from ..io import InputError
from ..settings import SegmentSettings


def add_blockwise_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("blockwise / cluster (volumes larger than memory)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS|local:N",
                   help="run block by block on a dask.distributed cluster: an address (tcp://host:8786, e.g. from "
                        "dask-jobqueue or dask-gateway) or local:N for N worker processes on this machine")
    g.add_argument("--block", type=triple, default=None, metavar="Z,Y,X",
                   help="block size for blockwise processing (default 64,256,256 when --scheduler is given); "
                        "outputs are chunked with it, a rerun skips predicted blocks already written")


def wants_blockwise(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "scheduler", None) or getattr(args, "block", None))


def _predict_kwargs(args: argparse.Namespace) -> dict:
    if getattr(args, "official_tiling", False):
        from ..inference import OFFICIAL_TILING

        tile, overlap = OFFICIAL_TILING.tile, OFFICIAL_TILING.overlap
    else:
        tile, overlap = args.tile, args.overlap
    return dict(weights=args.weights, tile=tile, overlap=overlap, batch_size=args.batch_size,
                device=None if args.device == "auto" else args.device, half=args.half,
                tta=getattr(args, "tta", False), model_voxel_size=getattr(args, "model_voxel_size", None))


def _read_input(args: argparse.Namespace, meta: dict):
    from .common import apply_roi
    from ..io import as_volume, read_volume

    volume, voxel = read_volume(args.input)
    volume = as_volume(volume, name=args.input)
    volume = apply_roi(volume, args.roi, meta)
    if magnify_of(args) != 1.0:  # 'auto' counts as 1: blockwise prediction does not resample
        raise InputError("--magnify resamples the stack, which blockwise prediction (--block / --scheduler) does not do: "
                         "resample the volume first, or predict it whole")
    if getattr(args, "voxel_size", None) is not None or voxel is not None:
        print("note: blockwise prediction does not resample; the volume is predicted on its own grid",
              file=sys.stderr)
        meta["voxel_size_nm"] = [float(v) for v in (getattr(args, "voxel_size", None) or voxel)]
    return volume


def _block(args: argparse.Namespace, default) -> tuple:
    return tuple(args.block) if args.block else tuple(default)


def run_predict(args: argparse.Namespace) -> int:
    from ..distributed import DEFAULT_BLOCK, client, predict_blockwise

    if not str(args.output).rstrip("/").lower().endswith(".zarr"):
        raise InputError("blockwise prediction (--block / --scheduler) writes a .zarr output")
    meta = {"command": " ".join(["napari-segneuron"] + sys.argv[1:])}
    volume = _read_input(args, meta)
    dtype = "float16" if getattr(args, "float16", False) else "float32"
    with client(args.scheduler) as c:
        bar = TerminalProgress("predict", unit="block")
        try:
            run = predict_blockwise(volume, args.output, block=_block(args, DEFAULT_BLOCK), client=c, dtype=dtype,
                                    metadata=meta, overwrite=args.overwrite, resume=True, progress=bar,
                                    **_predict_kwargs(args))
        finally:
            bar.close()
    print(run.summary(), file=sys.stderr)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def run_segment(args: argparse.Namespace) -> int:
    """``segment`` blockwise: (predict blockwise,) fragments + graph per block, one merge,
    labels written chunk by chunk. Fragments and merge history go to ``LABELS.fragments.zarr``
    (reopen with ``segmentation.blockwise.load_agglomeration`` for other thresholds)."""
    from ..distributed import DEFAULT_BLOCK, client, predict_blockwise
    from ..io import write_labels
    from ..segmentation.blockwise import segment_blockwise, write_labels_blockwise

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it")
    stem = str(out)[: -len(out.suffix)] if out.suffix else str(out)
    frag_path = stem + ".fragments.zarr"
    block = _block(args, DEFAULT_BLOCK)
    t0 = time.perf_counter()
    meta: dict = {"source": str(args.input), "command": " ".join(["napari-segneuron"] + sys.argv[1:])}
    with client(args.scheduler) as c:
        if _is_prediction_zarr(args.input):
            prediction = str(args.input)
        else:
            prediction = args.save_prediction or stem + ".prediction.zarr"
            volume = _read_input(args, meta)
            bar = TerminalProgress("predict", unit="block")
            try:
                run = predict_blockwise(volume, prediction, block=block, client=c, metadata=meta,
                                        overwrite=False, resume=True, progress=bar, **_predict_kwargs(args))
            finally:
                bar.close()
            print(run.summary() + f"; prediction in {prediction}", file=sys.stderr)
        t1 = time.perf_counter()
        from .common import resolve_fg_threshold, resolve_scoring_arg
        from ..io import read_metadata

        provenance = read_metadata(prediction)
        resolve_fg_threshold(args, provenance)
        resolve_scoring_arg(args, getattr(args, "voxel_size", None) or meta.get("voxel_size_nm")
                            or provenance.get("voxel_size_nm"))
        bar = TerminalProgress("segment", unit="step")
        try:
            settings = SegmentSettings.from_args(args)
            agg = segment_blockwise(
                prediction, None, frag_path, block=block, client=c, max_threshold=1.0, overwrite=True, progress=bar,
                **settings.agglomerate_kwargs(),
                **({"fragments": args.fragments} if getattr(args, "fragments", None) in ("waterz", "distance", "distance2d")
                   else {}),
            ) if not args.no_foreground else _no_foreground()
        finally:
            bar.close()
        t2 = time.perf_counter()
        meta.update(threshold=args.threshold, fg_threshold=args.fg_threshold, min_size=args.min_size,
                    small=args.small, scoring=args.scoring, background_mode=args.background_mode,
                    membrane_fill=args.membrane_fill, blockwise=dict(block=list(block), fragments=frag_path),
                    segment=SegmentSettings.from_args(args).provenance())
        if str(out).rstrip("/").lower().endswith(".zarr"):
            import shutil

            import zarr

            if out.exists():
                shutil.rmtree(out) if out.is_dir() else os.remove(out)
            root = zarr.open_group(str(out), mode="w")
            root.attrs["napari_segneuron"] = meta
            arr = root.create_array("labels", shape=agg.shape, dtype="uint32", chunks=block[:3], fill_value=0)
            arr.attrs["napari_segneuron"] = meta
            write_labels_blockwise(agg, args.threshold, arr, client=c)
            n = int(agg.n_segments(args.threshold))
        else:
            labels = agg.labels(args.threshold)
            write_labels(args.output, labels, metadata=meta, overwrite=args.overwrite)
            n = int(agg.n_segments(args.threshold))
    print(f"wrote {args.output}: {n} segments (threshold {args.threshold}); {agg.n_fragments} fragments in "
          f"{agg.info.get('n_blocks')} blocks, merge graph {agg.info.get('n_edges')} edges "
          f"({agg.info.get('merge_seconds', 0):.1f} s); predict {t1 - t0:.1f} s, segment {t2 - t1:.1f} s; "
          f"fragments and merge history in {frag_path}", file=sys.stderr)
    return 0


def _no_foreground():
    raise InputError("--no-foreground is not available with --block / --scheduler")


def _is_prediction_zarr(path: str) -> bool:
    p = Path(path)
    if not p.is_dir():
        return False
    try:
        import zarr

        node = zarr.open(str(p), mode="r")
        return isinstance(node, zarr.Group) and "affinities" in node and "foreground" in node
    except Exception:  # noqa: BLE001 - not a zarr group
        return False
