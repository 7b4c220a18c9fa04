"""Predictor speed against an official-style tiling loop, side by side in one run.

The official-style loop is re-implemented here from the published setting: 20x128x128
crops, stride 10x64x64, reflect padding so the tiles fit, a radial Gaussian weight, fp32,
batch 1, PyTorch's default threads. Every row uses the same weights (the bundled ``default``
weights, and a randomly initialised kn=(16,32,48,64,128) MNet as in issue 15).

Prints the CPU (model, flags, PyTorch's vector unit), the autotune probe's choice and its µs
per voxel for every candidate, then for each stack the median time of each row over
``--repeats`` interleaved runs (rows take turns, so load from other processes on a shared
machine hits all of them alike) and the ratio to the official-style loop:

- official-style loop, released forward (in process, the loop only): the network run as the
  released code runs it (``MNet.forward_reference``: plain PyTorch modules, so PyTorch picks its
  own, on CPU often reference, 3D convolution kernel; two decoders that each upsample and merge
  on their own; glibc's default allocator). This is the baseline every speed-up is against;
- official-style loop, our forward: the same loop with our forward pass and allocator setting,
  to show what the tiling alone buys (last column);
- ours, fixed settings (32x192x192 tiles fitted per stack, 8x32x32 halo, contiguous, no probe);
- ours, tuned (this machine's probe result; tiles chosen per stack);
- the CLI, whole process (``napari-segneuron predict`` in a subprocess: imports, model
  loading, reading, predicting, writing; the probe result cached beforehand).

``--vi`` adds the segmentation check on fib25_b (default model, default threshold): VI of
ours vs the official-style loop's (target: ours at most 0.02 worse, issue 15 item 4).

    python benchmarks/bench_inference.py [--stacks 40x256x256,250x250x250] [--models default,kn16]
                                         [--repeats 3] [--official-tiles N] [--vi]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_segneuron._model import MNet, fetch_weights, load_model, save_checkpoint
from napari_segneuron.allocator import release_freed_memory, retain_freed_memory
from napari_segneuron.autotune import tuning_for
from napari_segneuron.inference import DEFAULT_TILING, Predictor
from napari_segneuron.precision import cpu_capability, cpu_model, cpu_has_native_bf16, reported_flags

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")
OLD_DEFAULT = dict(tile=DEFAULT_TILING.tile, overlap=DEFAULT_TILING.overlap, channels_last=False)


def official_counts(shape, crop=(20, 128, 128), stride=(10, 64, 64)) -> list[int]:
    """Tiles per axis of the official loop (it pads the volume so that they fit)."""
    return [(s - c) // st + 2 for s, c, st in zip(shape, crop, stride)]


def official_style_predict(model, volume: np.ndarray, crop=(20, 128, 128), stride=(10, 64, 64), sigma=0.5,
                           floor=1e-3, max_tiles: int | None = None, released_forward: bool = True):
    """The official tiling loop (x and y kept in their places). Returns ``(aff, fg, seconds, tiles)``;
    with ``max_tiles`` only that many tiles run and ``seconds`` is extrapolated to all of them.

    ``released_forward``: run the network as the released code does (``MNet.forward_reference``:
    plain PyTorch modules, so PyTorch picks its own convolution kernels, two independent
    decoders, glibc's default allocator); else with our forward, to separate what the tiling
    buys from what the forward buys."""
    forward = model.forward_reference if released_forward else model
    retain_freed_memory(not released_forward)
    shape = volume.shape
    counts = official_counts(shape, crop, stride)
    pads = [((n - 1) * st + c - s) // 2 for n, st, c, s in zip(counts, stride, crop, shape)]
    pads = [max(p, 0) for p in pads]
    t0 = time.perf_counter()
    padded = np.pad(volume, [(p, p) for p in pads], mode="reflect").astype(np.float32) / 255.0
    grids = np.meshgrid(*[np.linspace(-1, 1, c, dtype=np.float32) for c in crop], indexing="ij")
    dist2 = sum(g * g for g in grids)
    weight = np.maximum(np.exp(-dist2 / (2 * sigma**2)), floor)
    out = np.zeros((4,) + padded.shape, np.float32)
    wsum = np.zeros(padded.shape, np.float32)
    total = int(np.prod(counts))
    done = 0
    for iz in range(counts[0]):
        for iy in range(counts[1]):
            for ix in range(counts[2]):
                if max_tiles is not None and done >= max_tiles:
                    continue
                start = []
                for i, n in zip((iz, iy, ix), range(3)):
                    s0 = i * stride[n]
                    if s0 + crop[n] > padded.shape[n]:
                        s0 = padded.shape[n] - crop[n]
                    start.append(s0)
                sl = tuple(slice(s, s + c) for s, c in zip(start, crop))
                x = torch.from_numpy(np.ascontiguousarray(padded[sl])[None, None])
                with torch.no_grad():
                    aff, fg = forward(x)
                out[(slice(None),) + sl] += torch.cat([aff, fg], 1)[0].numpy() * weight
                wsum[sl] += weight
                done += 1
    out /= np.maximum(wsum, 1e-12)
    seconds = (time.perf_counter() - t0) * total / max(done, 1)
    inner = tuple(slice(p, p + s) for p, s in zip(pads, shape))
    return out[(slice(None),) + inner][:3], out[(slice(None),) + inner][3], seconds, total


def cli_seconds(weights: str, stack: Path, out_dir: Path, extra: list[str]) -> float:
    # this process keeps its freed memory (retain_freed_memory, as the CLI does); hand it back
    # first, or the child's fresh pages cost more (a 40x256x256 kn16 run: 18 s beside 8 GB held
    # by another process, 9-10 s alone)
    gc.collect()
    release_freed_memory()
    exe = Path(sys.executable).with_name("napari-segneuron")
    cmd = [str(exe) if exe.exists() else "napari-segneuron", "predict", str(stack), "-o",
           str(out_dir / f"pred_{time.monotonic_ns()}.zarr"), "--weights", weights, "--overwrite"] + extra
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volume", default=str(DATA / "fib25_unlabeled_raw.tif"))
    ap.add_argument("--stacks", default="40x256x256,250x250x250", help="Z x Y x X crops from the volume's corner")
    ap.add_argument("--models", default="default,kn16", help="'default' (bundled weights) and/or 'kn16' "
                    "(random kn=(16,32,48,64,128), the issue's architecture)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--official-tiles", type=int, default=None,
                    help="time only this many official-style tiles and extrapolate (for slow machines; says so)")
    ap.add_argument("--no-cli", action="store_true", help="skip the whole-process CLI rows")
    ap.add_argument("--skip-fixed", action="store_true", help="skip the fixed-settings rows")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the official-style loop and the fixed rows (default: PyTorch's); on a "
                         "loaded shared machine 1 keeps oversubscription from dominating the comparison")
    ap.add_argument("--vi", action="store_true", help="also compare segmentations on fib25_b (default model)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = tempfile.mkdtemp(prefix="segneuron_bench_")
    os.environ["NAPARI_SEGNEURON_CACHE"] = cache  # the CLI subprocesses see this probe result
    os.environ.pop("NAPARI_SEGNEURON_AUTOTUNE", None)
    print(f"CPU: {cpu_model()}; PyTorch {torch.__version__} vector unit {cpu_capability()}; "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"flags: {' '.join(reported_flags()) or '(none read)'}; native bf16: {cpu_has_native_bf16()}")
    print("timings: medians over interleaved repeats; the machine may be shared, so absolute times are noisy, "
          "the side-by-side ratios less so\n")
    volume = tifffile.imread(args.volume)
    work = Path(cache)
    models = {}
    for name in args.models.split(","):
        if name == "default":
            models[name] = (load_model(fetch_weights("default"), device="cpu"), "default")
        elif name == "kn16":
            torch.manual_seed(0)
            path = save_checkpoint(MNet(kn=(16, 32, 48, 64, 128)), work / "kn16.pt", metadata={"name": "kn16"})
            models[name] = (load_model(path, device="cpu"), str(path))
        else:
            raise SystemExit(f"unknown model {name!r}")

    for name, (model, weights) in models.items():
        print(f"=== model {name}: {model.describe()}")
        tuning = tuning_for(model, torch.device("cpu"), force=True, quiet=True)
        print(f"autotune probe ({tuning.seconds:.1f} s): {tuning.summary()}")
        for m in tuning.measurements:
            print(f"    {m['config']:<40} tile {'x'.join(map(str, m['tile'])):<12} {m['us_per_voxel']:7.2f} µs/voxel")
        for spec in args.stacks.split(","):
            crop = tuple(int(c) for c in spec.lower().split("x"))
            stack = np.ascontiguousarray(volume[: crop[0], : crop[1], : crop[2]])
            path = work / f"stack_{spec}.tif"
            tifffile.imwrite(path, stack)
            tuned = Predictor(model, device="cpu", tune=tuning)
            plan = tuned.plan(stack.shape)
            old = Predictor(model, device="cpu", **OLD_DEFAULT)
            old_plan = old.plan(stack.shape)
            official_overcompute = np.prod(official_counts(stack.shape)) * 20 * 128 * 128 / stack.size
            print(f"\n--- stack {stack.shape}: tuned plan {plan.n_tiles} tiles of {plan.tile} "
                  f"(voxels computed per output voxel {plan.overcompute:.2f}); fixed {old_plan.n_tiles} x "
                  f"{old_plan.tile} ({old_plan.overcompute:.2f}); official-style loop {official_overcompute:.2f}")
            old.predict(stack[: min(8, crop[0]), :64, :64])  # warm up oneDNN kernels once
            official = "official-style loop, released forward (in process)"
            rows = {official: [], "official-style loop, our forward (in process)": [],
                    "ours, fixed 32x192x192 tiles (no probe)": [], "ours, tuned (in process)": []}
            if args.skip_fixed:
                del rows["ours, fixed 32x192x192 tiles (no probe)"]
            if not args.no_cli:
                rows["CLI predict, whole process (tuned)"] = []
            extrapolated = False
            for r in range(args.repeats):
                secs = official_style_predict(model, stack, max_tiles=args.official_tiles)[2]
                extrapolated = args.official_tiles is not None
                rows[official].append(secs)
                secs = official_style_predict(model, stack, max_tiles=args.official_tiles, released_forward=False)[2]
                rows["official-style loop, our forward (in process)"].append(secs)
                retain_freed_memory()  # as the CLI does (napari_segneuron._cli_common.make_predictor)
                if not args.skip_fixed:
                    t0 = time.perf_counter()
                    old.predict(stack)
                    rows["ours, fixed 32x192x192 tiles (no probe)"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                tuned.predict(stack)
                rows["ours, tuned (in process)"].append(time.perf_counter() - t0)
                if not args.no_cli:
                    rows["CLI predict, whole process (tuned)"].append(cli_seconds(weights, path, work, []))
                print(f"  repeat {r + 1}: " + ", ".join(f"{v[-1]:.1f}" for v in rows.values()), flush=True)
            ref = statistics.median(rows[official])
            ref_ours = statistics.median(rows["official-style loop, our forward (in process)"])
            print(f"\n  {'row':<52} {'median s':>9} {'µs/out voxel':>13} {'speed-up':>9} {'vs loop w/ our fwd':>19}")
            for label, times in rows.items():
                med = statistics.median(times)
                note = " (extrapolated from sampled tiles)" if extrapolated and label.startswith("official") else ""
                print(f"  {label:<52} {med:9.1f} {med / stack.size * 1e6:13.2f} {ref / med:8.2f}x "
                      f"{ref_ours / med:18.2f}x{note}")
            print()

    if args.vi:
        from napari_segneuron.segmentation import foreground_threshold_for, segment_and_score

        model = models.get("default", (load_model(fetch_weights("default"), device="cpu"),))[0]
        raw = tifffile.imread(DATA / "fib25_b_raw.tif")
        gt = tifffile.imread(DATA / "fib25_b_labels.tif")
        aff, fg, _, _ = official_style_predict(model, raw)
        retain_freed_memory()
        fg_t = foreground_threshold_for(model)  # what the weights declare, as the plugin does
        ref = segment_and_score(aff, fg, gt, fg_threshold=fg_t)
        print(f"fib25_b {raw.shape}, default model, default threshold {ref['threshold']}: official-style VI "
              f"{ref['vi']:.4f}")
        tuning = tuning_for(model, torch.device("cpu"), quiet=True)
        for label, kw in [("ours, fixed settings", OLD_DEFAULT), ("ours, tuned", {"tune": tuning})]:
            a, f = Predictor(model, device="cpu", **kw).predict(raw)
            r = segment_and_score(a, f, gt, fg_threshold=fg_t)
            print(f"  {label:<22} VI {r['vi']:.4f} (difference {r['vi'] - ref['vi']:+.4f}, target d <= +0.02: ours no worse than the official tiling)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
