"""Foreground-restricted waterz agglomeration with an instant threshold.

``agglomerate`` runs waterz once, up to ``max_threshold``, and records its merge history.
``Agglomeration.labels(t)`` then gives the segmentation waterz itself would give at ``t``
without calling waterz again:

- waterz pops region-graph edges cheapest first and stops at the first edge whose score
  is ``>= t`` (``t`` as float32).  Merge ``i`` of the recorded history is therefore part
  of the result at ``t`` exactly when the running maximum of the merge scores up to ``i``
  is ``< t``; that gives the number ``k`` of merges to replay.
- Replaying is not done merge by merge.  While the history is read once (in the worker),
  fragments are chained into one list so that every segment, at every ``k``, is a
  contiguous run of that list; each link remembers the merge that created it.  At ``k``
  the segments are the runs between links made by merges ``>= k``: one cumulative sum
  over the fragments gives a fragment -> label table, and one ``take`` over the fragment
  volume gives the labels.

Foreground restriction (as SegNeuron does it): every affinity channel is replaced by the
voxel-wise minimum of affinity and foreground probability; voxels with foreground below
``fg_threshold`` are background (label 0).  Two ways to make them background
(``background_mode``): "mask" lets waterz see every voxel and clears background voxels
from the result; "cut" (default) does the same after zeroing edges between two background
voxels, so background is never agglomerated with itself; "exclude" sets their edges to 0 so waterz's watershed leaves them
unlabelled (given fragments are cleared there) and waterz, which never merges label 0,
agglomerates the foreground only.  See the notes at DEFAULT_THRESHOLD for how they
compared on fib25_b predictions; "exclude" scored best on the SNEMI3D map.

Small segments: after the threshold is applied, segments with fewer than ``min_size``
voxels are merged (default, ``small="merge"``) into the touching segment they share the
most voxel faces with, repeatedly; small pieces that touch no other segment, and all small
segments with ``small="remove"``, become background 0.  (The metrics' default
``background="fill"`` scores background voxels as part of the nearest segment.)

waterz holds the GIL and prints to stdout, so by default it runs in a separate process
(multiprocessing "spawn"); volumes go through memory-mapped files in /dev/shm (shared
memory; on disk when /dev/shm is small), the merge history through a temporary ``.npz``.  A set ``CancelToken`` terminates that process.
"""
from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .cancel import CancelToken, Cancelled, check
from .io import InputError
from .metrics import (
    BACKGROUND_MODES,
    DEFAULT_BACKGROUND,
    Scores,
    adapted_rand_error,
    evaluate,
    _unique_inverse,
    pair_counts,
    scores_from_table,
    variation_of_information,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_FG_THRESHOLD",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_SMALL",
    "DEFAULT_MAX_THRESHOLD",
    "DEFAULT_SCORING",
    "DEFAULT_BACKGROUND_MODE",
    "SCORING_FUNCTIONS",
    "Agglomeration",
    "SweepResult",
    "Scores",
    "agglomerate",
    "affinities_from_boundaries",
    "restrict_to_foreground",
    "threshold_sweep",
    "segment_and_score",
    "compare_predictions",
    "variation_of_information",
    "adapted_rand_error",
    "evaluate",
]

# Defaults chosen on the validation crop fib25_b with affinities and foreground predicted
# by a checkpoint of the default model's training run (iteration ~300), scored with VI
# (predicted background filled; benchmarks/bench_quality.py).  VI by threshold:
#   t      0.46 0.48 0.50 0.52 0.54 0.56 0.58 0.60 0.62 0.64
#   cut    1.45 1.32 1.21 1.13 1.11 1.08 1.08 1.13 1.12 1.25
#   mask   1.04 1.02 1.02 1.14 1.26 1.61 1.91 2.47 3.35 3.92
#   plain waterz (no foreground): best 1.61 at 0.42; "exclude": best 1.32 at 0.34.
# - background_mode "cut": nearly the best VI of "mask" (1.08 vs 1.02) on a plateau
#   three times as wide (0.52-0.62 within 0.05 of the best), and on the 100x512x512
#   benchmark volume 120k instead of 657k fragments, 18 s instead of 93 s for the first
#   agglomeration, 1.4 instead of 1.9 GiB.  "exclude" moves the useful thresholds down
#   once the foreground head marks background (membrane contacts leave the graph).
# - threshold 0.56: the middle of that plateau.
# - fg_threshold 0.5: the probability cut (this checkpoint's foreground is >= 0.49
#   everywhere, so lower values change nothing yet).
# - scoring: see the re-check with the shipped model below (median since then).
# Checked on the iteration-600 checkpoint (14% of voxels background): "cut" best 1.105
# at 0.52, every threshold 0.46-0.68 within 0.08 of it (1.13 at 0.56); "mask" best 0.98
# at 0.46 but only 0.42-0.50 within 0.1; plain waterz best 1.31; "exclude" >= 1.94.
# On the SNEMI3D boundary map (foreground = 1 - boundary adds no information) the best
# settings differ (t 0.3, fg 0.45, "exclude").
# Re-checked with the shipped default model (iteration 2646, balanced loss, mirror padding):
#   t    0.56  0.60  0.62  0.64  0.66  0.68  0.70  0.72  0.74  0.76  0.78
#   VI   0.788 0.735 0.691 0.692 0.724 0.715 0.707 0.723 0.701 0.695 0.833
# - mean scoring: 0.68, the middle of the 0.62-0.76 plateau (held out: picked on z < 25, the
#   z >= 25 half scores 0.764 vs its own best 0.741).
# Median scoring (SegNeuron's choice), same prediction, fib25_b (benchmarks/bench_default_model.py):
#   mean:   best VI 0.691 (t 0.62), within 0.1 of it for t 0.56-0.76
#   median: best VI 0.520 (t 0.58), under 0.63 for every t 0.40-0.80; the classical baseline
#           gains less (1.085 -> 0.996, 0.02 threshold steps), so the model's ratio to it
#           drops from 0.64 to 0.52.
# Cost: a 256-bin histogram per region-graph edge. benchmarks/bench_threshold.py, 100x512x512,
#   mean vs median: first agglomeration 5.6 vs 7.2 s, peak PSS 1394 vs 1609 MiB; the slider's
#   replay is as fast (15 ms).  "mean" stays available (--scoring, the dock's "Edge score").
# Small segments: with median scoring most of the remaining VI is split (0.39 of 0.52), much of it
# in pieces of a few dozen voxels; merging segments < 100 voxels into their best-touching
# neighbour gives 0.446 (300 voxels: 0.441).  100 voxels at 10 nm is 1e-4 um^3 (a cube of
# ~46 nm side), smaller than a thin neurite's cross-section, so real objects are kept.
# With both (the shipped defaults), VI by threshold:
#   t    0.48  0.50  0.52  0.54  0.56  0.58  0.60  0.62  0.64  0.68  0.70
#   VI   0.479 0.481 0.451 0.450 0.447 0.446 0.491 0.520 0.507 0.507 0.535
# - threshold 0.56: the middle of the 0.52-0.58 plateau (held out: picked on z < 25 the
#   z >= 25 half scores 0.534 vs its own best 0.507; picked on z >= 25, z < 25 scores 0.352
#   vs 0.341).
DEFAULT_THRESHOLD = 0.56
DEFAULT_FG_THRESHOLD = 0.5
DEFAULT_MIN_SIZE = 100
SMALL_SEGMENTS = ("merge", "remove")
DEFAULT_SMALL = "merge"
DEFAULT_MAX_THRESHOLD = 1.0
DEFAULT_SCORING = "median"
DEFAULT_BACKGROUND_MODE = "cut"
BACKGROUND_MODES_AGG = ("cut", "mask", "exclude")

SCORING_FUNCTIONS = {
    # waterz's default: 1 - mean affinity along the boundary of two regions
    "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    # 1 - median (256-bin histogram) affinity, the function SegNeuron's waterz script uses
    "median": "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256>>",
}

ProgressFn = Optional[Callable[..., None]]

# waterz's own log lines, mapped to progress steps (for the worker's progress reports)
_STAGES = (
    ("performing initial watershed", "watershed"),
    ("counting regions", "reading fragments"),
    ("extracting region graph", "building the region graph"),
    ("computing initial scores", "scoring edges"),
    ("merging until", "merging"),
)
_TOTAL_STEPS = len(_STAGES) + 3


# ---------------------------------------------------------------------------------------
# inputs


def affinities_from_boundaries(boundary: np.ndarray, scale: Optional[float] = None) -> np.ndarray:
    """Affinities (3,Z,Y,X) float32 from a boundary-probability map.

    The edge between a voxel and its lower neighbour along z, y or x gets
    ``1 - max(p(voxel), p(neighbour))``; edges leaving the volume get ``1 - p(voxel)``.
    ``scale`` divides ``boundary`` first (default: 255 for uint8 maps, else 1).
    """
    b = np.asarray(boundary)
    if b.ndim != 3:
        raise InputError(f"A boundary map must be 3-D (z, y, x), not {b.shape}")
    if scale is None:
        scale = 255.0 if b.dtype == np.uint8 else 1.0
    p = b.astype(np.float32) / np.float32(scale)
    aff = np.empty((3,) + p.shape, np.float32)
    for c in range(3):
        m = p.copy()
        lead = [slice(None)] * 3
        prev = [slice(None)] * 3
        lead[c] = slice(1, None)
        prev[c] = slice(None, -1)
        np.maximum(m[tuple(lead)], p[tuple(prev)], out=m[tuple(lead)])
        np.subtract(1.0, m, out=aff[c])
    return aff


def _as_affinities(affinities: Any) -> np.ndarray:
    aff = np.asarray(affinities)
    if aff.ndim != 4 or aff.shape[0] != 3:
        raise InputError(
            f"Affinities must have the shape (3, Z, Y, X) with channels z, y, x; got {aff.shape}"
        )
    if min(aff.shape[1:]) < 1:
        raise InputError(f"Affinities are empty: {aff.shape}")
    if aff.dtype.kind not in "fiub":
        raise InputError(f"Affinities must be numbers, not {aff.dtype}")
    if aff.dtype == np.uint8:
        aff = aff.astype(np.float32) / np.float32(255)
    return aff


def _check_unit_range(arr: np.ndarray, name: str) -> bool:
    """Raise for NaN or values clearly outside [0, 1]; True if rounding noise needs clipping."""
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if math.isnan(lo) or math.isnan(hi):
        raise InputError(f"The {name} contain NaN values")
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise InputError(
            f"The {name} must be probabilities in [0, 1]; found values in [{lo:.3g}, {hi:.3g}] "
            "(logits? apply a sigmoid first)"
        )
    return lo < 0.0 or hi > 1.0


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..N (0 stays 0) as uint64, the form waterz wants for fragments."""
    try:
        import fastremap
    except ImportError:  # pragma: no cover - fastremap is a dependency
        u, inv = np.unique(labels, return_inverse=True)
        if u[0] != 0:
            inv = inv + 1
        return inv.reshape(labels.shape).astype(np.uint64)
    out, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True)
    return out.astype(np.uint64, copy=False)


def _check_threshold(value: float, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, 1], not {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise InputError(f"{name} must lie in [0, 1], not {v}")
    return v


def restrict_to_foreground(
    affinities: np.ndarray,
    foreground: np.ndarray,
    fg_threshold: float,
    out: Optional[np.ndarray] = None,
    exclude_background: bool = True,
    cut_background: bool = False,
) -> np.ndarray:
    """SegNeuron's foreground restriction; returns the background mask (foreground < fg_threshold).

    ``out`` (3,Z,Y,X) float32 receives ``min(affinity, foreground)`` per channel (``out``
    may be ``affinities`` itself when that is float32).  Then, for background voxels:
    ``exclude_background`` sets every edge touching one to 0 (waterz's watershed leaves
    them at 0); otherwise ``cut_background`` sets only edges between two background voxels
    (or leaving the volume from one) to 0, so membranes still separate regions in the graph
    but are not agglomerated among themselves.
    """
    if out is None:
        out = np.empty(affinities.shape, np.float32)
    fg = np.asarray(foreground, dtype=np.float32)
    for c in range(3):
        np.minimum(affinities[c], fg, out=out[c])
    bg = fg < np.float32(fg_threshold)
    if (exclude_background or cut_background) and bg.any():
        for c in range(3):
            lead = [slice(None)] * 3
            prev = [slice(None)] * 3
            lead[c] = slice(1, None)
            prev[c] = slice(None, -1)
            if exclude_background:
                np.copyto(out[c], 0, where=bg)
                np.copyto(out[c][tuple(lead)], 0, where=bg[tuple(prev)])
            else:
                first = [slice(None)] * 3
                first[c] = slice(0, 1)
                np.copyto(out[c][tuple(first)], 0, where=bg[tuple(first)])
                np.copyto(out[c][tuple(lead)], 0, where=bg[tuple(lead)] & bg[tuple(prev)])
    return bg


# ---------------------------------------------------------------------------------------
# the waterz run (in a worker process or in this one)


def _silence_stdout(log_path: Optional[str]) -> tuple:
    """Send fd 1 and 2 (C++ ``std::cout``) and ``sys.stdout``/``sys.stderr`` (waterz's
    Cython ``print``) to ``log_path`` or /dev/null; returns what ``_restore_stdout`` needs.
    Processes without usable fds 1/2 (e.g. pythonw) only get the Python-level swap."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        fds: Optional[tuple[int, int]] = (os.dup(1), os.dup(2))
    except OSError:
        fds = None
    if fds is not None:
        fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    py = open(log_path or os.devnull, "a", buffering=1)
    old = (sys.stdout, sys.stderr)
    sys.stdout = sys.stderr = py
    return fds, old, py


def _restore_stdout(saved: tuple) -> None:
    fds, (out, err), py = saved
    sys.stdout, sys.stderr = out, err
    py.close()
    if fds is not None:
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        os.close(fds[0])
        os.close(fds[1])


def _chain_history(n_nodes: int, a: np.ndarray, b: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """List order of the fragments and, per list position, the merge that linked it to the
    previous position (``len(a)`` for positions that start a final segment)."""
    m = len(a)
    nxt = [-1] * n_nodes
    tail = list(range(n_nodes))
    joined = [m] * n_nodes
    is_child = [False] * n_nodes
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        nxt[tail[x]] = y
        tail[x] = tail[y]
        joined[y] = i
        is_child[y] = True
    order: list[int] = []
    for r in np.flatnonzero(present).tolist():
        if is_child[r]:
            continue
        while r != -1:
            order.append(r)
            r = nxt[r]
    order_arr = np.asarray(order, dtype=np.int64)
    join_arr = np.asarray(joined, dtype=np.int64)[order_arr]
    return order_arr, join_arr


def _waterz_job(
    aff: np.ndarray,
    fragments: Optional[np.ndarray],
    frag_out: np.ndarray,
    scoring: str,
    discretize_queue: int,
    max_threshold: float,
    low: float,
    high: float,
) -> dict[str, np.ndarray]:
    """Run waterz to ``max_threshold`` and turn its history into the replay tables.

    ``frag_out`` (uint32, volume shape) receives the fragments.  ``fragments``, if given,
    must already be uint64 with background 0 (it is overwritten by waterz)."""
    import waterz

    thresholds = [0.0, max_threshold] if max_threshold > 0 else [0.0]
    gen = waterz.agglomerate(
        aff,
        thresholds,
        fragments=fragments,
        aff_threshold_low=low,
        aff_threshold_high=high,
        return_merge_history=True,
        scoring_function=SCORING_FUNCTIONS.get(scoring, scoring),
        discretize_queue=discretize_queue,
    )
    seg, _ = next(gen)  # threshold 0: nothing merged yet, these are the fragments
    if seg.size and int(seg.max()) >= 2**31 - 1:
        raise RuntimeError("more than 2**31 fragments; split the volume")
    np.copyto(frag_out, seg, casting="unsafe")
    del seg
    history: list = []
    if len(thresholds) > 1:
        _, history = next(gen)
    for _ in gen:
        pass
    m = len(history)
    a = np.fromiter((h["a"] for h in history), np.int64, count=m)
    b = np.fromiter((h["b"] for h in history), np.int64, count=m)
    scores = np.fromiter((h["score"] for h in history), np.float32, count=m)
    del history
    n_nodes = int(frag_out.max()) + 1
    sizes = np.bincount(frag_out.reshape(-1), minlength=n_nodes).astype(np.int64)
    present = sizes > 0
    present[0] = False
    order, join = _chain_history(n_nodes, a, b, present)
    return {
        "order": order,
        "join": join,
        "scores": scores,
        "sizes": sizes,
        "merges": np.stack([a, b], axis=1) if m else np.zeros((0, 2), np.int64),
    }


def _worker_main(spec: dict) -> None:
    """Entry point of the worker process (must stay importable at module level)."""
    saved = _silence_stdout(spec["log"])
    try:
        shape = tuple(spec["shape"])
        aff = np.memmap(spec["aff"], np.float32, mode="r", shape=(3,) + shape)
        frag_out = np.memmap(spec["frag"], np.uint32, mode="r+", shape=shape)
        fragments = frag_out.astype(np.uint64) if spec["given_fragments"] else None
        result = _waterz_job(
            aff, fragments, frag_out, spec["scoring"], spec["queue"], spec["max_threshold"], spec["low"], spec["high"],
        )
        frag_out.flush()
        del aff, frag_out, fragments
        np.savez(spec["result"] + ".tmp.npz", **result)
        os.replace(spec["result"] + ".tmp.npz", spec["result"])
    except BaseException:  # reported to the parent through a file
        with open(spec["error"], "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        _restore_stdout(saved)


def _scratch_dir(nbytes: int) -> str:
    """A private temp directory in RAM (/dev/shm) when it has room, else on disk.

    Containers often give /dev/shm only 64 MB; writing past that would kill the process
    (SIGBUS), so the disk (page cache) is used then."""
    shm = "/dev/shm"
    try:
        if os.path.isdir(shm) and shutil.disk_usage(shm).free > nbytes + (256 << 20):
            return tempfile.mkdtemp(prefix="segneuron-waterz-", dir=shm)
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="segneuron-waterz-")


def _stage(log_path: str) -> int:
    """How far the worker got, read from waterz's log lines."""
    try:
        with open(log_path, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return 0
    step = 0
    for i, (needle, _) in enumerate(_STAGES):
        if needle in text:
            step = i + 1
    return step


def _run_in_worker(
    aff_writer: Callable[[np.ndarray], np.ndarray],
    shape: tuple[int, int, int],
    fragments: Optional[np.ndarray],
    opts: dict,
    progress: ProgressFn,
    cancel: Optional[CancelToken],
) -> tuple[np.ndarray, dict]:
    nvox = int(np.prod(shape))
    tmp = _scratch_dir(nvox * 16)
    proc = None
    try:
        aff_path, frag_path = os.path.join(tmp, "affinities.f32"), os.path.join(tmp, "fragments.u32")
        aff_view = np.memmap(aff_path, np.float32, mode="w+", shape=(3,) + shape)
        frag_view = np.memmap(frag_path, np.uint32, mode="w+", shape=shape)
        bg = aff_writer(aff_view)
        if fragments is not None:
            np.copyto(frag_view, fragments, casting="unsafe")
            if bg is not None:
                frag_view[bg] = 0
        aff_view.flush()
        frag_view.flush()
        del aff_view, bg
        spec = dict(
            opts, shape=list(shape), aff=aff_path, frag=frag_path, given_fragments=fragments is not None,
            log=os.path.join(tmp, "waterz.log"), result=os.path.join(tmp, "result.npz"),
            error=os.path.join(tmp, "error.txt"),
        )
        ctx = mp.get_context("spawn")
        proc = ctx.Process(target=_worker_main, args=(spec,), daemon=True, name="segneuron-waterz")
        proc.start()
        last = -1
        while proc.is_alive():
            if cancel is not None and cancel.cancelled:
                proc.terminate()
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                raise Cancelled("cancelled by the user")
            if progress is not None:
                step = _stage(spec["log"])
                if step != last:
                    last = step
                    progress(1 + step, _TOTAL_STEPS, "waterz: " + (_STAGES[step - 1][1] if step else "starting"))
            proc.join(0.05)
        if progress is not None and proc.exitcode == 0:  # a fast run can finish between two polls
            step = _stage(spec["log"])
            if step != last:
                progress(1 + step, _TOTAL_STEPS, "waterz: " + (_STAGES[step - 1][1] if step else "starting"))
        if proc.exitcode != 0 or not os.path.exists(spec["result"]):
            if os.path.exists(spec["error"]):
                with open(spec["error"]) as f:
                    detail = f.read().strip().splitlines()[-1]
            else:  # died before running our code: usually an unguarded __main__ under "spawn"
                detail = (
                    "It stopped before starting; when calling agglomerate from a script, put the call under "
                    "`if __name__ == '__main__':`, or pass worker=False."
                )
            raise RuntimeError(f"The waterz worker failed (exit code {proc.exitcode}). {detail}".strip())
        with np.load(spec["result"]) as z:
            result = {k: z[k] for k in z.files}
        frags = np.array(frag_view)
        del frag_view
        return frags, result
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# the result


def _gather(lut: np.ndarray, frag: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``lut[frag]`` as fast as this machine allows.

    numpy's ``take`` converts uint32 indices to intp first (about 5 ns per voxel);
    torch's ``index_select`` reads int32 indices directly and uses all cores (about 1 ns
    per voxel on real fragments), so it is used when torch is importable and the ids fit.
    """
    if out is not None:
        if out.shape != frag.shape or out.dtype != lut.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {lut.dtype} array of shape {frag.shape}")
    if frag.size >= 1 << 22 and frag.dtype == np.uint32 and len(lut) < 2**31 and frag.flags.c_contiguous:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            torch = None
        if torch is not None:
            if out is None:
                out = np.empty(frag.shape, lut.dtype)
            index = torch.from_numpy(frag.reshape(-1).view(np.int32))
            table = torch.from_numpy(lut.view(np.int32))
            torch.index_select(table, 0, index, out=torch.from_numpy(out.reshape(-1).view(np.int32)))
            return out
    return np.take(lut, frag, out=out)




@dataclass
class Agglomeration:
    """One waterz agglomeration up to ``max_threshold``; ``labels(t)`` replays it to ``t``.

    ``fragments`` (Z,Y,X, uint32, 0 = background) are waterz's initial regions.
    """

    fragments: np.ndarray
    max_threshold: float
    min_size: int
    merge_scores: np.ndarray  # (M,) float32, waterz's score of each merge, in order
    merges: np.ndarray  # (M, 2) the (kept, absorbed) fragment-tree ids of each merge
    _order: np.ndarray = field(repr=False)
    _join: np.ndarray = field(repr=False)
    _sizes: np.ndarray = field(repr=False)
    _stop: np.ndarray = field(repr=False, default=None)  # running max of merge_scores
    _size_in_order: np.ndarray = field(repr=False, default=None)
    _has_empty: bool = field(repr=False, default=False)
    _contacts: Optional[tuple] = field(repr=False, default=None)
    small: str = "remove"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = np.maximum.accumulate(self.merge_scores) if len(self.merge_scores) else self.merge_scores
        self._size_in_order = self._sizes[self._order]
        # fragments emptied by the foreground mask ("mask" mode): their segments are dropped
        self._has_empty = bool((self._size_in_order == 0).any())
        self.info.setdefault("n_fragments", int(len(self._order)))
        self.info.setdefault("n_merges", int(len(self.merge_scores)))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.fragments.shape

    @property
    def n_fragments(self) -> int:
        return int(len(self._order))

    def n_merges(self, threshold: float) -> int:
        """How many recorded merges waterz performs at ``threshold``."""
        t = self._threshold(threshold)
        return int(np.searchsorted(self._stop, np.float32(t), side="left"))

    def _threshold(self, threshold: float) -> float:
        t = _check_threshold(threshold, "threshold")
        if t > self.max_threshold + 1e-7:
            raise InputError(
                f"threshold {t} is above {self.max_threshold}, the highest threshold this agglomeration was run to"
            )
        return t

    def lookup_table(
        self, threshold: float, min_size: Optional[int] = None, small: Optional[str] = None
    ) -> np.ndarray:
        """Fragment id -> label at ``threshold`` (labels 1..K, 0 = background), as uint32."""
        k = self.n_merges(threshold)
        min_size = self.min_size if min_size is None else int(min_size)
        small = self.small if small is None else small
        if small not in SMALL_SEGMENTS:
            raise InputError(f"small must be one of {SMALL_SEGMENTS}, not {small!r}")
        starts = self._join >= k  # a position starts a segment unless merged before k
        if len(starts):
            starts[0] = True
        seg = np.cumsum(starts, dtype=np.uint32)
        n_nodes = len(self._sizes)
        if (min_size > 1 or self._has_empty) and len(seg):
            first = np.flatnonzero(starts)
            sizes = np.add.reduceat(self._size_in_order, first)
            if small == "merge" and min_size > 1 and (sizes < min_size).any():
                lut = np.zeros(n_nodes, np.uint32)
                lut[self._order] = seg
                new_id = self._merge_small(lut, np.concatenate([[0], sizes]), min_size)
            else:
                keep = sizes >= max(min_size, 1)
                new_id = np.zeros(len(keep) + 1, np.uint32)
                new_id[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
            seg = new_id[seg]
        lut = np.zeros(n_nodes, np.uint32)
        lut[self._order] = seg
        return lut

    def _contact_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Touching fragment pairs ``(u, v)`` (u < v, both non-zero) and their contact areas
        in voxel faces; computed once, on first use."""
        if self._contacts is None:
            frag = self.fragments
            keys = []
            for axis in range(3):
                hi = [slice(None)] * 3
                lo = [slice(None)] * 3
                hi[axis] = slice(1, None)
                lo[axis] = slice(None, -1)
                a, b = frag[tuple(hi)], frag[tuple(lo)]
                m = a != b
                m &= a != 0
                m &= b != 0
                u, v = a[m].astype(np.uint64), b[m].astype(np.uint64)
                del m
                keys.append((np.minimum(u, v) << np.uint64(32)) | np.maximum(u, v))
                del u, v
            key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
            del keys
            try:
                import fastremap

                uniq, area = fastremap.unique(key, return_counts=True)
            except ImportError:  # pragma: no cover
                uniq, area = np.unique(key, return_counts=True)
            uniq = np.asarray(uniq, np.uint64)
            self._contacts = (
                (uniq >> np.uint64(32)).astype(np.int64),
                (uniq & np.uint64(0xFFFFFFFF)).astype(np.int64),
                np.asarray(area, np.int64),
            )
        return self._contacts

    def _merge_small(self, lut: np.ndarray, sizes: np.ndarray, min_size: int) -> np.ndarray:
        """Segment id -> new id, merging every segment below ``min_size`` into the touching
        segment it shares the most voxel faces with (repeated while that helps); small
        segments touching no other segment become 0.  ``sizes`` is indexed by segment id."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        fu, fv, area = self._contact_table()
        n = len(sizes)
        ids = np.arange(n, dtype=np.int64)  # segment id -> current group
        su, sv = lut[fu].astype(np.int64), lut[fv].astype(np.int64)
        cur_sizes = sizes.astype(np.int64)
        # ties in contact area go to the segment holding the lowest fragment id, so that the
        # result does not depend on how segments happen to be numbered (e.g. on max_threshold)
        canon = np.full(n, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(canon, lut.astype(np.int64), np.arange(len(lut), dtype=np.int64))
        for _ in range(8):
            a, b = ids[su], ids[sv]
            m = (a != b) & (a != 0) & (b != 0)
            if not m.any():
                break
            a, b, w = a[m], b[m], area[m]
            small = cur_sizes < min_size
            src = np.concatenate([a[small[a]], b[small[b]]])
            if src.size == 0:
                break
            dst = np.concatenate([b[small[a]], a[small[b]]])
            wt = np.concatenate([w[small[a]], w[small[b]]])
            # total contact per (src, dst) pair, then the largest per src (one sort: src
            # ascending, contact descending, ties by lowest fragment id)
            up, inv = _unique_inverse(src * n + dst)
            tot = np.bincount(inv, weights=wt).astype(np.int64)
            ps, pd = up // n, up % n
            group_canon = np.full(n, np.iinfo(np.int64).max, np.int64)
            np.minimum.at(group_canon, ids, canon)
            order = np.lexsort((group_canon[pd], -tot, ps))
            ps, pd = ps[order], pd[order]
            first = np.ones(len(order), bool)
            first[1:] = ps[1:] != ps[:-1]
            choose_s, choose_d = ps[first], pd[first]
            graph = coo_matrix((np.ones(len(choose_s)), (choose_s, choose_d)), shape=(n, n))
            _, comp = connected_components(graph, directed=False)
            comp = comp.astype(np.int64)
            c0 = comp[0]  # keep background at 0
            comp = np.where(comp == c0, 0, np.where(comp == 0, c0, comp))
            cur_sizes = np.bincount(comp, weights=cur_sizes, minlength=n).astype(np.int64)
            ids = comp[ids]
        # what is still small touches nothing (or only other small pieces): background
        keep = cur_sizes >= min_size
        keep[0] = False
        final = np.zeros(n, np.uint32)
        final[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
        return final[ids]

    def labels(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        region: Optional[tuple[slice, ...]] = None,
        min_size: Optional[int] = None,
        small: Optional[str] = None,
        out: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        """Label volume (uint32, 0 = background) of waterz's result at ``threshold``.

        ``region``: a tuple of slices to compute only part of the volume (e.g. a
        ground-truth crop); ``out``: an array to write into (reused between calls);
        ``min_size``/``small`` override the agglomeration's settings."""
        lut = self.lookup_table(threshold, min_size, small)
        frag = self.fragments if region is None else self.fragments[region]
        return _gather(lut, frag, out)

    def n_segments(self, threshold: float, min_size: Optional[int] = None, small: Optional[str] = None) -> int:
        """Number of segments (labels 1..K) at ``threshold``."""
        lut = self.lookup_table(threshold, min_size, small)
        return int(lut.max()) if len(lut) else 0

    def on_grid(self, shape: Sequence[int], min_size: Optional[int] = None) -> "Agglomeration":
        """The same agglomeration carried to another grid of the same extent (e.g. the input grid
        when it was run on the model's grid): fragments resized by nearest neighbour, so every
        ``labels(t)`` equals the model-grid labels resized, at the cost of one lookup per voxel.
        ``min_size`` is in voxels of the new grid (default: the current one scaled by the voxel volume)."""
        from .resample import resize_labels

        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"on_grid needs a 3-D shape, not {shape}")
        if shape == self.shape and min_size is None:
            return self
        frag = resize_labels(self.fragments, shape)
        sizes = np.bincount(frag.reshape(-1), minlength=len(self._sizes)).astype(np.int64)
        # a min_size counts voxels of the grid the labels live on: rescale it with the voxel volume
        ratio = float(np.prod(shape)) / float(np.prod(self.shape))
        min_size = int(round(self.min_size * ratio)) if min_size is None else int(min_size)
        return dataclasses.replace(
            self, fragments=frag, _sizes=sizes, _contacts=None, min_size=min_size,
            info=dict(self.info, grid_of_agglomeration=list(self.shape)),
        )

    def change_points(self) -> np.ndarray:
        """The thresholds (float32, ascending) just above which the segmentation changes:
        ``labels(t)`` is constant for ``t`` between two consecutive values."""
        return np.unique(self._stop)


def agglomerate(
    affinities: Any,
    foreground: Any = None,
    *,
    fg_threshold: float = DEFAULT_FG_THRESHOLD,
    fragments: Any = None,
    min_size: int = DEFAULT_MIN_SIZE,
    small: str = DEFAULT_SMALL,
    max_threshold: float = DEFAULT_MAX_THRESHOLD,
    scoring: str = DEFAULT_SCORING,
    background_mode: str = DEFAULT_BACKGROUND_MODE,
    discretize_queue: int = 0,
    aff_threshold_low: float = 0.0001,
    aff_threshold_high: float = 0.9999,
    worker: bool = True,
    output_shape: Optional[Sequence[int]] = None,
    progress: ProgressFn = None,
    cancel: Optional[CancelToken] = None,
) -> Agglomeration:
    """Agglomerate affinities with waterz once, up to ``max_threshold``.

    affinities: (3,Z,Y,X) probabilities, channels z, y, x (edge to the lower neighbour).
    foreground: (Z,Y,X) probabilities or None (plain waterz).  With a foreground each
      channel is limited to it (voxel-wise minimum) and voxels below ``fg_threshold``
      become background 0.
    background_mode: "mask" lets waterz agglomerate every voxel on the min-restricted
      affinities and sets background voxels to 0 afterwards (SegNeuron's post-processing
      followed by a foreground mask); "cut" (default) does the same but first sets edges
      between two background voxels to 0 (background is not agglomerated with itself: far
      fewer fragments, a much cheaper run, a wider range of good thresholds); "exclude" takes background voxels out of waterz's graph
      (every edge touching them is 0, the watershed leaves them unlabelled, regions only
      touch through foreground), which shifts the useful thresholds down.
    fragments: (Z,Y,X) non-negative integer initial regions (0 = background) instead of
      waterz's watershed.
    min_size, small: segments smaller than ``min_size`` voxels are, by ``labels``, either
      merged into the touching segment they share the most voxel faces with ("merge",
      repeated while pieces stay small; pieces touching nothing become 0) or removed
      (become background 0, "remove").
    scoring: "mean", "median" (see ``SCORING_FUNCTIONS``) or a waterz C++ scoring type.
      ``labels(t)`` equals a direct waterz run at every ``t`` with the exact priority
      queue (``discretize_queue=0``); with a bin queue it is exact at bin edges only.
    worker: run waterz in a spawned process (default; cancellable, keeps a GUI
      responsive); False runs it here, with waterz's output silenced.
    output_shape: the labels' grid when the affinities are on another grid of the same
      extent (the model's, after resampling): waterz runs on the affinities' grid and the
      result is carried over (``Agglomeration.on_grid``); ``min_size`` counts voxels of
      ``output_shape``.
    """
    check(cancel)
    aff = _as_affinities(affinities)
    shape = tuple(int(s) for s in aff.shape[1:])
    clip_aff = _check_unit_range(aff, "affinities")
    fg_threshold = _check_threshold(fg_threshold, "fg_threshold")
    max_threshold = _check_threshold(max_threshold, "max_threshold")
    if int(min_size) < 0:
        raise InputError(f"min_size must be >= 0, not {min_size}")
    if small not in SMALL_SEGMENTS:
        raise InputError(f"small must be one of {SMALL_SEGMENTS}, not {small!r}")
    if background_mode not in BACKGROUND_MODES_AGG:
        raise InputError(f"background_mode must be one of {BACKGROUND_MODES_AGG}, not {background_mode!r}")
    if scoring not in SCORING_FUNCTIONS and "<" not in scoring:
        raise InputError(f"scoring must be one of {sorted(SCORING_FUNCTIONS)} or a waterz scoring type, not {scoring!r}")
    fg = None
    if foreground is not None:
        fg = np.asarray(foreground)
        if fg.ndim == 4 and fg.shape[0] == 1:
            fg = fg[0]
        if fg.shape != shape:
            raise InputError(f"The foreground {fg.shape} must have the shape of the affinities' volume {shape}")
        if fg.dtype == np.uint8:
            fg = fg.astype(np.float32) / np.float32(255)
        if _check_unit_range(fg, "foreground probabilities"):
            fg = np.clip(fg, 0.0, 1.0)
        if not (fg >= np.float32(fg_threshold)).any():
            raise InputError(
                f"Every voxel is background: no foreground probability reaches fg_threshold={fg_threshold} "
                f"(highest is {float(fg.max()):.3f}); lower fg_threshold"
            )
    frag_in = None
    if fragments is not None:
        frag_in = np.asarray(fragments)
        if frag_in.shape != shape:
            raise InputError(f"The fragments {frag_in.shape} must have the shape of the affinities' volume {shape}")
        if frag_in.dtype.kind not in "biu" or (frag_in.dtype.kind == "i" and frag_in.min() < 0):
            raise InputError("Fragments must be non-negative integer labels")
        frag_in = _renumber(frag_in)

    if progress is not None:
        progress(0, _TOTAL_STEPS, "preparing affinities")

    exclude = background_mode == "exclude"

    def write_affinities(out: np.ndarray) -> Optional[np.ndarray]:
        if fg is None:
            np.copyto(out, aff, casting="same_kind")
            bg = None
        else:
            bg = restrict_to_foreground(aff, fg, fg_threshold, out=out, exclude_background=exclude,
                                        cut_background=background_mode == "cut")
        if clip_aff:  # rounding noise of blended tiles, e.g. 1.0000001
            np.clip(out, 0.0, 1.0, out=out)
        return bg if exclude else None

    opts = dict(
        scoring=scoring, queue=int(discretize_queue), max_threshold=max_threshold,
        low=float(aff_threshold_low), high=float(aff_threshold_high),
    )
    t0 = time.perf_counter()
    if worker:
        frags, result = _run_in_worker(write_affinities, shape, frag_in, opts, progress, cancel)
    else:
        prepared = np.empty((3,) + shape, np.float32)
        bg = write_affinities(prepared)
        frag_out = np.empty(shape, np.uint32)
        given = None
        if frag_in is not None:
            given = frag_in.copy()
            if bg is not None:
                given[bg] = 0
        saved = _silence_stdout(None)
        try:
            result = _waterz_job(prepared, given, frag_out, scoring, opts["queue"], max_threshold,
                                 opts["low"], opts["high"])
        finally:
            _restore_stdout(saved)
        del prepared, given
        frags = frag_out
    check(cancel)
    if fg is not None and not exclude:
        # "mask": waterz saw every voxel; background is cut out of the fragments afterwards
        bg = fg < np.float32(fg_threshold)
        frags[bg] = 0
        del bg
        result["sizes"] = np.bincount(frags.reshape(-1), minlength=len(result["sizes"])).astype(np.int64)
    if len(result["order"]) == 0:
        raise InputError(
            "waterz found no fragments: every affinity is below aff_threshold_low or every voxel is background"
        )
    agg = Agglomeration(
        fragments=frags,
        max_threshold=max_threshold,
        min_size=int(min_size),
        small=small,
        merge_scores=result["scores"],
        merges=result["merges"],
        _order=result["order"],
        _join=result["join"],
        _sizes=result["sizes"],
        info=dict(
            seconds=time.perf_counter() - t0, scoring=scoring, fg_threshold=fg_threshold if fg is not None else None,
            restricted=fg is not None, discretize_queue=int(discretize_queue), background_mode=background_mode,
        ),
    )
    if progress is not None:
        progress(_TOTAL_STEPS, _TOTAL_STEPS, "agglomeration done")
    if output_shape is not None:
        agg = agg.on_grid(output_shape, min_size=int(min_size))
    return agg


# ---------------------------------------------------------------------------------------
# threshold sweep against ground truth


@dataclass
class SweepResult:
    """Scores for each threshold of one agglomeration against a ground-truth crop."""

    thresholds: np.ndarray
    vi_split: np.ndarray
    vi_merge: np.ndarray
    arand: np.ndarray
    n_segments: np.ndarray
    background: str
    scored: np.ndarray  # fraction of the non-ignored ground-truth voxels that were scored


    @property
    def vi(self) -> np.ndarray:
        return self.vi_split + self.vi_merge

    @property
    def best_index(self) -> int:
        return int(np.argmin(self.vi))

    @property
    def best_threshold(self) -> float:
        """The suggested threshold: lowest VI (split + merge)."""
        return float(self.thresholds[self.best_index])

    def rows(self) -> list[dict]:
        return [
            dict(threshold=float(t), vi_split=float(s), vi_merge=float(m), vi=float(s + m), arand=float(a),
                 n_segments=int(n), scored=float(c))
            for t, s, m, a, n, c in zip(self.thresholds, self.vi_split, self.vi_merge, self.arand, self.n_segments,
                                        self.scored)
        ]

    def table(self) -> str:
        lines = [f"{'threshold':>9} {'VI split':>9} {'VI merge':>9} {'VI':>8} {'ARAND':>7} {'segments':>8} "
                 f"{'scored':>7}"]
        best = self.best_index
        for i, r in enumerate(self.rows()):
            mark = "  <- lowest VI" if i == best else ""
            lines.append(
                f"{r['threshold']:9.3f} {r['vi_split']:9.4f} {r['vi_merge']:9.4f} {r['vi']:8.4f} "
                f"{r['arand']:7.4f} {r['n_segments']:8d} {100 * r['scored']:6.1f}%{mark}"
            )
        return "\n".join(lines)


def _region_slices(region: Any, shape: tuple[int, ...], gt_shape: tuple[int, ...]) -> tuple[slice, ...]:
    if region is None:
        if tuple(gt_shape) != tuple(shape):
            raise InputError(
                f"The ground truth {tuple(gt_shape)} is smaller than the volume {tuple(shape)}: "
                "say where it lies (region=(slice, slice, slice) or offset)"
            )
        return (slice(None),) * 3
    if all(isinstance(r, (int, np.integer)) for r in region):  # an offset
        region = tuple(slice(int(o), int(o) + s) for o, s in zip(region, gt_shape))
    region = tuple(region)
    sizes = tuple(len(range(*r.indices(n))) for r, n in zip(region, shape))
    if sizes != tuple(gt_shape):
        raise InputError(f"The region {region} covers {sizes} voxels, the ground truth is {tuple(gt_shape)}")
    return region


def threshold_sweep(
    agglomeration: Agglomeration,
    gt: np.ndarray,
    thresholds: Optional[Sequence[float]] = None,
    *,
    region: Any = None,
    background: str = DEFAULT_BACKGROUND,
    ignore_gt: Sequence[int] = (0,),
    progress: ProgressFn = None,
    cancel: Optional[CancelToken] = None,
) -> SweepResult:
    """VI split/merge and ARAND at every threshold from one agglomeration.

    gt: ground-truth labels of the whole volume or of a crop; for a crop give ``region``
    (tuple of slices, or the crop's (z, y, x) offset).  Default thresholds: 0.02 to
    ``max_threshold`` in steps of 0.02.  Background handling as in ``metrics``; with
    ``background="ignore"`` watch ``scored``: dropping voxels can flatter a segmentation.

    The (fragment, gt) contingency table is built once; every threshold only relabels its
    rows, so a sweep costs about one evaluation plus a little per threshold.
    """
    gt = np.asarray(gt)
    if gt.ndim != 3:
        raise InputError(f"The ground truth must be 3-D (z, y, x), not {gt.shape}")
    if gt.dtype.kind not in "biu":
        raise InputError(f"The ground truth must hold integer labels, not {gt.dtype}")
    if background not in BACKGROUND_MODES:
        raise InputError(f"background must be one of {BACKGROUND_MODES}, not {background!r}")
    region = _region_slices(region, agglomeration.shape, gt.shape)
    if thresholds is None:
        top = agglomeration.max_threshold
        thresholds = np.round(np.arange(0.02, top + 1e-9, 0.02), 4)
    thresholds = np.asarray([agglomeration._threshold(t) for t in thresholds], dtype=np.float64)
    if thresholds.size == 0:
        raise InputError("No thresholds to sweep")

    frag = agglomeration.fragments[region]
    g = gt.reshape(-1)
    keep = ~np.isin(g, np.asarray(list(ignore_gt), dtype=g.dtype)) if len(ignore_gt) else None
    fill_idx = None
    if background == "fill" and (frag == 0).any():
        if not (frag != 0).any():
            raise InputError("The ground-truth region holds no fragment (all background)")
        from scipy import ndimage

        fill_idx = ndimage.distance_transform_edt(frag == 0, return_distances=False, return_indices=True)
        frag_filled = frag[tuple(fill_idx)]
    else:
        frag_filled = frag
    f = frag_filled.reshape(-1)
    if keep is not None:
        f, g = f[keep], g[keep]
    f_ids, g_ids, counts = pair_counts(f, g)
    total = float(counts.sum())

    present = f_ids[f_ids != 0] if background != "fill" else np.unique(frag[frag != 0])
    vs, vm, ar, ns, cov = [], [], [], [], []
    for i, t in enumerate(thresholds):
        check(cancel)
        lut = agglomeration.lookup_table(float(t))
        removed = agglomeration.min_size > 1 and bool((lut[present] == 0).any())
        if removed and background == "fill":
            # min_size removed segments here: fill them too (voxel-level, rare)
            sc = evaluate(lut[frag], gt, ignore_gt=ignore_gt, background=background)
        else:
            s_ids = lut[f_ids]
            if background == "ignore":
                nz = s_ids != 0
                sc = scores_from_table(*pair_counts(s_ids[nz], g_ids[nz], counts[nz].astype(np.float64)))
            else:
                sc = scores_from_table(*pair_counts(s_ids, g_ids, counts.astype(np.float64)))
        cov.append(sc.n_voxels / total if total else 0.0)
        vs.append(sc.vi_split)
        vm.append(sc.vi_merge)
        ar.append(sc.arand)
        ns.append(int(lut.max()) if len(lut) else 0)
        if progress is not None:
            progress(i + 1, len(thresholds), f"threshold {t:.3f}")
    return SweepResult(thresholds, np.array(vs), np.array(vm), np.array(ar), np.array(ns), background, np.array(cov))


def segment_and_score(
    affinities: np.ndarray,
    foreground: Optional[np.ndarray],
    gt: np.ndarray,
    *,
    threshold: Optional[float] = None,
    fg_threshold: float = DEFAULT_FG_THRESHOLD,
    min_size: int = DEFAULT_MIN_SIZE,
    scoring: str = DEFAULT_SCORING,
    background: str = DEFAULT_BACKGROUND,
    worker: bool = False,
    output_shape: Optional[Sequence[int]] = None,
) -> dict:
    """Agglomerate and score in one call (for benchmarks comparing predictors).

    ``output_shape``: the prediction is on another grid (the model's) than ``gt``;
    agglomerate there and score the labels carried to ``output_shape`` (see ``agglomerate``).

    Returns a dict: ``threshold`` (default ``DEFAULT_THRESHOLD``) with ``vi_split``,
    ``vi_merge``, ``vi``, ``arand`` and ``labels`` there; ``best_threshold`` (lowest VI of
    the default sweep) with ``best_vi``, ``best_arand``; the ``sweep`` and the
    ``agglomeration`` themselves.
    """
    agg = agglomerate(affinities, foreground, fg_threshold=fg_threshold, min_size=min_size, scoring=scoring,
                      worker=worker, output_shape=output_shape)
    sweep = threshold_sweep(agg, gt, background=background)
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    labels = agg.labels(t)
    at = evaluate(labels, gt, background=background)
    b = sweep.best_index
    return dict(
        threshold=t, vi_split=at.vi_split, vi_merge=at.vi_merge, vi=at.vi, arand=at.arand, labels=labels,
        best_threshold=sweep.best_threshold, best_vi=float(sweep.vi[b]), best_arand=float(sweep.arand[b]),
        sweep=sweep, agglomeration=agg,
    )


def compare_predictions(
    prediction_a: tuple[np.ndarray, Optional[np.ndarray]],
    prediction_b: tuple[np.ndarray, Optional[np.ndarray]],
    gt: Optional[np.ndarray] = None,
    *,
    threshold: Optional[float] = None,
    **kwargs: Any,
) -> dict:
    """How much two predictions (``(affinities, foreground)`` each) differ after segmentation.

    ``vi_between``: VI of segmentation A against B as reference (nothing ignored,
    background as a segment) at ``threshold``; with ``gt`` also ``vi_a``, ``vi_b`` and
    ``vi_difference`` = |VI_a - VI_b| against the ground truth.  ``kwargs`` go to
    ``agglomerate`` (fg_threshold, min_size, scoring, ...).
    """
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    kwargs.setdefault("worker", False)
    la = agglomerate(*prediction_a, **kwargs).labels(t)
    lb = agglomerate(*prediction_b, **kwargs).labels(t)
    between = evaluate(la, lb, ignore_gt=(), background="segment")
    out: dict = dict(threshold=t, vi_between=between.vi, vi_between_split=between.vi_split,
                     vi_between_merge=between.vi_merge, arand_between=between.arand)
    if gt is not None:
        sa, sb = evaluate(la, gt), evaluate(lb, gt)
        out.update(vi_a=sa.vi, vi_b=sb.vi, arand_a=sa.arand, arand_b=sb.arand, vi_difference=abs(sa.vi - sb.vi))
    return out
