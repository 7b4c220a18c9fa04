"""Instant threshold: one agglomeration, then per-threshold updates by replay vs fresh waterz.

Volume: 100×512×512 real-looking affinities made by mirror-tiling the SNEMI3D boundary
map in ../shared/data (a real boundary map; mirroring keeps membranes continuous) with a
little noise, foreground = 1 - boundary probability.

Run:  .venv/bin/python benchmarks/bench_threshold.py [--shape 100 512 512] [--fresh 3]
Targets: <= 100 ms per update, >= 20x faster than a fresh waterz run, peak RAM <= 2 GiB.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("SEGNEURON_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def realistic_boundaries(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    import tifffile

    p = tifffile.imread(DATA / "snemi_mini_boundary_probability.tif").astype(np.float32) / 255.0
    reps = [int(np.ceil(s / n)) for s, n in zip(shape, p.shape)]
    # mirror-tile: flip every other copy so boundaries stay continuous across seams
    tiles = p
    for ax, r in enumerate(reps):
        parts = [tiles if i % 2 == 0 else np.flip(tiles, axis=ax) for i in range(r)]
        tiles = np.concatenate(parts, axis=ax)
    b = tiles[: shape[0], : shape[1], : shape[2]].copy()
    rng = np.random.default_rng(seed)
    b += rng.normal(0, 0.02, size=b.shape).astype(np.float32)
    np.clip(b, 0, 1, out=b)
    return b


def maxrss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


def _pss_mib(pid: int) -> float:
    """Proportional set size: shared memory counted once across the processes sharing it."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class MemorySampler:
    """Samples PSS of this process plus its children every 20 ms; ``peak`` in MiB."""

    def __init__(self) -> None:
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from napari_segneuron.segmentation.worker import _active_workers

        while not self._stop.is_set():
            total = _pss_mib(os.getpid()) + sum(_pss_mib(pid) for pid in _active_workers())
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(100, 512, 512))
    ap.add_argument("--fresh", type=int, default=3, help="fresh waterz runs to time (each is slow)")
    ap.add_argument("--fg-threshold", type=float, default=None)
    ap.add_argument("--scoring", default=None, help="mean or median (default: the package default)")
    ap.add_argument("--fragments", default=None, help="distance (default) or waterz (waterz's own seeds)")
    ap.add_argument("--mode", default=None, help="background_mode: mask, cut or exclude (default: the package default)")
    args = ap.parse_args(argv)

    from napari_segneuron.segmentation import (
        DEFAULT_BACKGROUND_MODE, DEFAULT_FG_THRESHOLD, DEFAULT_SCORING, SCORING_FUNCTIONS, affinities_from_boundaries, agglomerate, restrict_to_foreground,
        _restore_stdout, _silence_stdout,
    )

    fg_thr = DEFAULT_FG_THRESHOLD if args.fg_threshold is None else args.fg_threshold
    scoring = args.scoring or DEFAULT_SCORING
    mode = args.mode or DEFAULT_BACKGROUND_MODE
    shape = tuple(args.shape)
    t0 = time.perf_counter()
    b = realistic_boundaries(shape)
    aff = affinities_from_boundaries(b, scale=1.0)
    fg = 1.0 - b
    del b
    print(f"volume {shape} = {np.prod(shape) / 1e6:.1f} Mvoxel, affinities {aff.nbytes / 2**20:.0f} MiB, "
          f"made in {time.perf_counter() - t0:.1f} s; foreground restriction, fg_threshold {fg_thr}, scoring {scoring}, background_mode {mode}")
    rss_inputs = maxrss_mib(resource.RUSAGE_SELF)

    sampler = MemorySampler()
    with sampler:
        t0 = time.perf_counter()
        # min_size 0: the replay is compared with fresh waterz, which merges no small segments
        # (their cost is measured separately below)
        agg = agglomerate(aff, fg, fg_threshold=fg_thr, max_threshold=1.0, scoring=scoring, background_mode=mode,
                          min_size=0, worker=True, fragments=args.fragments)
        t_first = time.perf_counter() - t0
    print(f"first agglomeration (worker process, up to threshold 1.0): {t_first:.2f} s, "
          f"{agg.n_fragments} fragments, {len(agg.merge_scores)} merges recorded")

    thresholds = [0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.8]
    out = np.empty(agg.shape, np.uint32)
    agg.labels(0.5, out=out)  # warm up (page in the output buffer)
    replay_ms = {}
    for t in thresholds:
        reps = []
        for _ in range(3):
            t1 = time.perf_counter()
            agg.labels(t, out=out)
            reps.append((time.perf_counter() - t1) * 1000)
        replay_ms[t] = min(reps)
    fresh_alloc: list[float] = []
    for t in thresholds[:3]:
        t1 = time.perf_counter()
        lab = agg.labels(t)
        fresh_alloc.append((time.perf_counter() - t1) * 1000)
        del lab

    # with small segments merged into their neighbours (min_size 100)
    t1 = time.perf_counter()
    agg._contact_table()
    contacts_s = time.perf_counter() - t1
    merge_ms = {}
    for t in (0.3, 0.4, 0.5):
        t1 = time.perf_counter()
        agg.labels(t, min_size=100, small="merge", out=out)
        merge_ms[t] = (time.perf_counter() - t1) * 1000
    rss_replay = maxrss_mib(resource.RUSAGE_SELF)
    # fresh waterz at a threshold: what a slider would cost without the replay
    import waterz

    prepared = np.empty_like(aff)
    bg = restrict_to_foreground(aff, fg, fg_thr, out=prepared, exclude_background=mode == "exclude",
                                cut_background=mode == "cut")
    del aff, fg
    pick = [thresholds[i] for i in np.linspace(0, len(thresholds) - 1, max(args.fresh, 1)).round().astype(int)]
    fresh_ms = {}
    for t in pick[: args.fresh]:
        saved = _silence_stdout(None)
        t1 = time.perf_counter()
        try:
            # from the same fragments (waterz's own watershed when the agglomeration used it)
            given = None if agg.info["fragments"] == "waterz" else agg.fragments.astype(np.uint64)
            seg = next(iter(waterz.agglomerate(prepared, [t], fragments=given,
                                               scoring_function=SCORING_FUNCTIONS[scoring])))
        finally:
            _restore_stdout(saved)
        fresh_ms[t] = (time.perf_counter() - t1) * 1000
        if mode != "exclude":
            seg[bg] = 0  # the foreground mask applied to waterz's own result
        same = _same_partition(seg, agg.labels(t))
        print(f"  fresh waterz at {t}: {fresh_ms[t]:.0f} ms; replay gives the same partition: {same}")
        del seg

    print()
    print(f"{'threshold':>9} {'replay ms':>10} {'fresh waterz ms':>16} {'ratio':>8} {'segments':>9}")
    for t in thresholds:
        f = fresh_ms.get(t)
        ratio = f"{f / replay_ms[t]:8.0f}x" if f else f"{'':>9}"
        fs = f"{f:16.0f}" if f else f"{'':>16}"
        print(f"{t:9.2f} {replay_ms[t]:10.1f} {fs} {ratio} {agg.n_segments(t):9d}")
    worst = max(replay_ms.values())
    mean_fresh = float(np.mean(list(fresh_ms.values()))) if fresh_ms else float("nan")
    print(f"replay into a reused buffer: worst {worst:.1f} ms, median {np.median(list(replay_ms.values())):.1f} ms; "
          f"with a newly allocated output: {np.median(fresh_alloc):.1f} ms")
    print(f"min_size 100 with small segments merged: contact table once {contacts_s:.2f} s, then per update "
          + ", ".join(f"t {t}: {v:.0f} ms" for t, v in merge_ms.items()))
    print(f"fresh waterz mean {mean_fresh:.0f} ms -> speed-up {mean_fresh / worst:.0f}x (worst replay)")
    self_mib = maxrss_mib(resource.RUSAGE_SELF)
    child_mib = maxrss_mib(resource.RUSAGE_CHILDREN)
    print(f"peak RSS of the replay workflow: this process {rss_replay:.0f} MiB (inputs alone {rss_inputs:.0f} MiB), "
          f"waterz worker process {child_mib:.0f} MiB")
    print(f"peak PSS during the agglomeration, this process + worker together (shared memory counted once): "
          f"{sampler.peak:.0f} MiB (sampled every 20 ms); target <= 2048 MiB: "
          f"{'met' if sampler.peak <= 2048 else 'NOT met'}")
    print(f"(this process later peaked at {self_mib:.0f} MiB running waterz in-process for the comparison)")
    print(f"targets: update <= 100 ms: {'met' if worst <= 100 else 'NOT met'}; >= 20x: "
          f"{'met' if mean_fresh / worst >= 20 else 'NOT met'}")
    return 0


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    from napari_segneuron.metrics import pair_counts

    if not np.array_equal(a == 0, b == 0):
        return False
    s, g, _ = pair_counts(a.ravel(), b.ravel())
    return len(s) == len(np.unique(s)) == len(np.unique(g))


if __name__ == "__main__":
    sys.exit(main())
