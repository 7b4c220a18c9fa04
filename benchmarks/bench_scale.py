"""Blockwise prediction and segmentation on a dask LocalCluster: throughput with 1 and 2
workers, peak RSS per worker for two volume sizes, blockwise-vs-whole VI. Printed side by side.

    python benchmarks/bench_scale.py [--quick]

Data: crops of /work/shared/data/fib25_unlabeled_raw.tif (prediction) and the default model's
prediction of fib25_b (segmentation; validation data, never trained on). Everything runs on
this machine's CPU (single-threaded workers); numbers scale with cores and GPUs per worker.
The blocks (32x128x128) are smaller than the default tiles fitted to a 250-voxel axis
(2 tiles of 144): every block then runs every tile that covers it, so the blockwise time
measures that recomputation (4x here); blocks several tiles wide recompute only the tiles
across their faces (about (block + tile) / block per axis with Gaussian blending).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

DATA = Path("/work/shared/data")


def predict_run(volume, block, scheduler, tmp: Path, name: str) -> dict:
    from napari_segneuron.distributed import client, predict_blockwise

    with client(scheduler) as c:
        t0 = time.perf_counter()
        run = predict_blockwise(volume, str(tmp / f"{name}.zarr"), block=block, client=c, device="cpu", threads=1)
        seconds = time.perf_counter() - t0
    return dict(seconds=seconds, voxels_per_s=volume.size / seconds, rss_mib=max(run.peak_rss.values()) / 2**20,
                workers=len(run.peak_rss), blocks=len(run.done))


def print_prediction(rows: dict, small, large, block) -> None:
    print(f"\nprediction, default model, CPU, block {block} (volume voxels per second; peak RSS per worker)")
    print(f"{'run':<28} {'volume':>14} {'blocks':>6} {'seconds':>8} {'vox/s':>9} {'peak RSS MiB':>12}")
    for name, r in rows.items():
        vol = large if "large" in name else small
        vps = vol.size / r["seconds"]
        print(f"{name:<28} {str(vol.shape):>14} {r.get('blocks', '-'):>6} {r['seconds']:8.1f} {vps:9.0f} "
              f"{r.get('rss_mib', float('nan')):12.0f}")
    one, two = rows["large, 1 worker"], rows["large, 2 workers"]
    print(f"throughput 2 workers / 1 worker: {one['seconds'] / two['seconds']:.2f}x; "
          f"blockwise (1 worker) / in-memory time: {one['seconds'] / rows['in-memory Predictor, large']['seconds']:.2f}x")
    print(f"peak RSS per worker, large / small volume ({large.size / small.size:.0f}x the voxels): "
          f"{two['rss_mib'] / rows['small, 2 workers']['rss_mib']:.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller volumes")
    ap.add_argument("--part", choices=("all", "predict", "segment"), default="all")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    raw = tifffile.imread(DATA / "fib25_unlabeled_raw.tif")
    block = (32, 128, 128)
    small = raw[:32, :128, :128]
    large = raw[:64, :256, :256] if not args.quick else raw[:32, :256, :256]
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = {}
    if args.part != "segment":
        predict_part(rows, small, large, block, tmp)
    if args.part != "predict":
        segment_part(tmp)


def predict_part(rows: dict, small, large, block, tmp: Path) -> None:
    from napari_segneuron._model import load_named
    from napari_segneuron.inference import Predictor

    t0 = time.perf_counter()
    Predictor(load_named("default"), device="cpu").predict(large)
    rows["in-memory Predictor, large"] = dict(seconds=time.perf_counter() - t0)
    rows["large, 1 worker"] = predict_run(large, block, "local:1", tmp, "l1")
    rows["large, 2 workers"] = predict_run(large, block, "local:2", tmp, "l2")
    rows["small, 2 workers"] = predict_run(small, block, "local:2", tmp, "s2")
    print_prediction(rows, small, large, block)


def segment_part(tmp: Path) -> None:
    from napari_segneuron._model import load_named
    from napari_segneuron.inference import Predictor
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD, agglomerate, evaluate
    from napari_segneuron.segmentation.blockwise import segment_blockwise

    # segmentation: the default model's prediction of fib25_b, 8 blocks on 2 workers vs one block
    from napari_segneuron.distributed import client

    fib_b = tifffile.imread(DATA / "fib25_b_raw.tif")
    aff, fg = Predictor(load_named("default"), device="cpu").predict(fib_b)
    gt = tifffile.imread(DATA / "fib25_b_labels.tif")
    t0 = time.perf_counter()
    whole = segment_blockwise(aff, fg, str(tmp / "whole.zarr"), block=fg.shape)
    t_whole = time.perf_counter() - t0
    with client("local:2") as c:
        t0 = time.perf_counter()
        blocks = segment_blockwise(aff, fg, str(tmp / "blocks.zarr"), block=(25, 50, 100), client=c)
        t_blocks = time.perf_counter() - t0
    # agglomerate (waterz) on the whole volume, with the same (default) fragments
    waterz = agglomerate(aff, fg, worker=False)
    t = DEFAULT_THRESHOLD
    lw, lb, lz = whole.labels(t), blocks.labels(t), waterz.labels(t)

    print(f"\nsegmentation of fib25_b {fg.shape} (default model's prediction), threshold {t}")
    print(f"{'run':<34} {'seconds':>8} {'fragments':>9} {'VI vs whole':>11} {'VI vs gt':>8}")
    print(f"{'one block (whole volume)':<34} {t_whole:8.1f} {whole.n_fragments:9d} {0.0:11.4f} {evaluate(lw, gt).vi:8.4f}")
    print(f"{'8 blocks, 2 workers':<34} {t_blocks:8.1f} {blocks.n_fragments:9d} "
          f"{evaluate(lb, lw, ignore_gt=(), background='segment').vi:11.4f} {evaluate(lb, gt).vi:8.4f}")
    print(f"{'agglomerate (waterz), whole':<34} {waterz.info['seconds']:8.1f} {waterz.n_fragments:9d} "
          f"{evaluate(lz, lw, ignore_gt=(), background='segment').vi:11.4f} {evaluate(lz, gt).vi:8.4f}")
    print(f"merge graph: {blocks.info['n_edges']} edges, global merge {blocks.info['merge_seconds']:.1f} s; "
          f"{blocks.info['n_stitched']} fragments stitched across block faces")


if __name__ == "__main__":
    main()
