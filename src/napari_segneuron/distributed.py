"""Blockwise prediction on a dask.distributed cluster (or in this process), zarr in, zarr out.

``predict_blockwise`` cuts the volume into blocks (``blocks.BlockGrid``); one task per block
reads the block plus the context its tiles need, runs every tile of the *global* tile grid
that touches the block (the same tiles, weights and order as ``Predictor.predict`` on the
whole volume), and writes the block's core into a zarr group chunked with the block shape:
every chunk has exactly one writer, so no locks are needed. The result equals the in-memory
prediction up to float rounding (``tests/test_distributed.py``).

Memory per task: the block plus at most one tile on each side, times 4 output channels, plus
the model; independent of the volume (``benchmarks/bench_scale.py`` measures it).

Each worker process loads the model once (``_cached_predictor``, keyed by weights and
settings) and uses its GPU when it has one. A task that raises is retried (``retries``);
blocks that still fail are reported by id. Each finished block sets its cell of the
``blocks_done`` array (one chunk per block), so a rerun skips what is already written.

Clients: ``client(scheduler)`` accepts ``None`` (run here, one block after another),
``"local:N"`` (a ``LocalCluster`` of N single-threaded worker processes on 127.0.0.1), an
address such as ``tcp://host:8786`` (an existing cluster: dask-jobqueue, dask-gateway, ...)
or a ``distributed.Client``.
"""
from __future__ import annotations

import contextlib
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from .blocks import BlockGrid, as_triple, grid_for, normalise_region, predictor_plan, tiles_touching
from .cancel import CancelToken, Cancelled, check
from .io import InputError

ProgressFn = Optional[Callable[..., None]]
DEFAULT_BLOCK = (64, 256, 256)
DONE_ARRAY = "blocks_done"


def require_distributed():
    """Import ``distributed`` or explain how to get it."""
    try:
        import distributed
    except ImportError:  # pragma: no cover - it is a dependency
        raise InputError(
            "Running on a cluster needs the 'distributed' package: pip install distributed "
            "(or pip install 'napari-segneuron[distributed]')"
        ) from None
    return distributed


@contextlib.contextmanager
def client(scheduler: Any = None, threads_per_worker: int = 1) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (see the module docstring), closed on exit
    when it was started here; ``None`` yields ``None`` (run in this process)."""
    if scheduler is None or scheduler == "":
        yield None
        return
    distributed = require_distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    text = str(scheduler).strip()
    if text.startswith("local"):
        n_text = text.partition(":")[2] or str(max(1, (os.cpu_count() or 2) // 2))
        try:
            n = int(n_text)
            if n < 1:
                raise ValueError
        except ValueError:
            raise InputError(f"--scheduler local:N needs a positive number of workers, got {text!r}") from None
        cluster = distributed.LocalCluster(
            n_workers=n, threads_per_worker=int(threads_per_worker), processes=True, host="127.0.0.1",
            dashboard_address=None, memory_limit=0,
        )
        c = distributed.Client(cluster)
        try:
            yield c
        finally:
            c.close()
            cluster.close()
        return
    try:
        c = distributed.Client(text, timeout="20s")
    except (OSError, TimeoutError) as err:
        raise InputError(f"Could not connect to the dask scheduler at {text!r}: {err}") from None
    try:
        yield c
    finally:
        c.close()


# ---------------------------------------------------------------------------------------
# running one task per block, with retries, progress, cancel and a report


@dataclass
class BlockRun:
    """What happened to the blocks of one step."""

    step: str
    n_blocks: int
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already written by an earlier run
    failed: dict[int, str] = field(default_factory=dict)  # block id -> last error line
    results: dict[int, Any] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss: dict[str, int] = field(default_factory=dict)  # worker -> peak RSS in bytes

    def raise_for_failures(self) -> None:
        if self.failed:
            ids = sorted(self.failed)
            first = ids[0]
            raise RuntimeError(
                f"{self.step}: {len(ids)} of {self.n_blocks} blocks failed after retries (ids {ids[:20]}"
                f"{' ...' if len(ids) > 20 else ''}); block {first}: {self.failed[first]}. "
                "Rerun the same command to retry only those blocks."
            )

    def summary(self) -> str:
        rss = max(self.peak_rss.values()) / 2**20 if self.peak_rss else 0.0
        return (f"{self.step}: {len(self.done)} blocks done, {len(self.skipped)} skipped (already written), "
                f"{len(self.failed)} failed, {self.seconds:.1f} s, peak RSS per worker {rss:.0f} MiB")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if sys.platform == "darwin" else 1024)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _call(fn: Callable, block_id: int, *args: Any) -> dict:
    """Task wrapper: the function's result plus this worker's peak RSS."""
    result = fn(block_id, *args)
    return {"result": result, "worker": _worker_name(), "rss": peak_rss_bytes()}


def run_blocks(
    step: str,
    fn: Callable[..., Any],
    block_ids: Sequence[int],
    args: tuple = (),
    *,
    client: Any = None,
    retries: int = 2,
    progress: ProgressFn = None,
    cancel: Optional[CancelToken] = None,
    n_blocks: Optional[int] = None,
) -> BlockRun:
    """Run ``fn(block_id, *args)`` for every id, on ``client`` or here. ``fn`` returns a
    (picklable) result, or ``None`` for a block it skipped (already done)."""
    run = BlockRun(step, n_blocks if n_blocks is not None else len(block_ids))
    total = len(block_ids)
    t0 = time.perf_counter()

    def record(bid: int, out: dict) -> None:
        if out["result"] is None:
            run.skipped.append(bid)
        else:
            run.done.append(bid)
            run.results[bid] = out["result"]
        run.peak_rss[out["worker"]] = max(run.peak_rss.get(out["worker"], 0), int(out["rss"]))

    count = 0
    if client is None:
        for bid in block_ids:
            check(cancel)
            for attempt in range(retries + 1):
                try:
                    record(bid, _call(fn, bid, *args))
                    break
                except (Cancelled, KeyboardInterrupt, InputError):
                    raise
                except Exception as err:  # noqa: BLE001 - reported by block id
                    if attempt == retries:
                        run.failed[bid] = _last_line(err)
            count += 1
            if progress is not None:
                progress(count, total, f"{step}: block {count}/{total}")
    else:
        distributed = require_distributed()
        # arguments travel once per worker, not once per task
        args = tuple(client.scatter(a, broadcast=True, hash=False) for a in args)
        futures = {}
        for bid in block_ids:
            fut = client.submit(_call, fn, int(bid), *args, key=f"{step}-{bid}-{time.time_ns()}", retries=retries,
                                pure=False)
            futures[fut] = int(bid)
        try:
            for fut in distributed.as_completed(list(futures)):
                if cancel is not None and cancel.cancelled:
                    client.cancel(list(futures))
                    raise Cancelled("cancelled by the user")
                bid = futures[fut]
                if fut.status == "finished":
                    record(bid, fut.result())
                else:
                    try:
                        fut.result()
                    except Exception as err:  # noqa: BLE001 - reported by block id
                        run.failed[bid] = _last_line(err)
                count += 1
                if progress is not None:
                    progress(count, total, f"{step}: block {count}/{total}")
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                client.cancel(pending)
    run.seconds = time.perf_counter() - t0
    run.done.sort()
    run.skipped.sort()
    return run


def _last_line(err: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(err), err)).strip()
    if "KilledWorker" in type(err).__name__:
        text += " (the worker process died: killed by a signal, likely out of memory; try a smaller --block)"
    return text.splitlines()[-1] if text else repr(err)


# ---------------------------------------------------------------------------------------
# zarr outputs with per-block done markers


def open_blockwise_group(path: str, arrays: dict[str, tuple[tuple[int, ...], Any, tuple[int, ...]]],
                         grid: BlockGrid, metadata: dict, *, overwrite: bool = False, resume: bool = True):
    """Create (or reopen for resuming) a zarr group holding ``arrays`` (name -> (shape, dtype,
    chunks)) and the ``blocks_done`` marker array (one uint8 chunk per block)."""
    import zarr

    path = str(path)
    key = {"shape": list(grid.shape), "block": list(grid.block)}
    if os.path.exists(path) and not overwrite:
        if not resume:
            raise InputError(f"{path} already exists; choose another name or allow overwriting")
        try:
            root = zarr.open_group(path, mode="r+")
            found = dict(root.attrs.get("blockwise", {}))
            ok = all(n in root and tuple(root[n].shape) == tuple(a[0]) for n, a in arrays.items()) and DONE_ARRAY in root
        except Exception:  # noqa: BLE001 - not a group of ours
            found, ok = {}, False
        if not ok or {k: found.get(k) for k in key} != key:
            raise InputError(
                f"{path} exists but was not written by a blockwise run with this volume shape and block "
                f"{tuple(grid.block)} (found {found or 'something else'}); pass overwrite or another path"
            )
        return root
    if os.path.exists(path):
        import shutil

        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    root = zarr.open_group(path, mode="w")
    root.attrs["napari_segneuron"] = metadata
    root.attrs["blockwise"] = key
    for name, (shape, dtype, chunks) in arrays.items():
        root.create_array(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=0)
    root.create_array(DONE_ARRAY, shape=grid.grid_shape, dtype="uint8", chunks=(1, 1, 1), fill_value=0)
    return root


def block_done(root, grid: BlockGrid, block_id: int) -> bool:
    index = grid[block_id].index
    return bool(root[DONE_ARRAY][index])


def mark_done(root, grid: BlockGrid, block_id: int) -> None:
    root[DONE_ARRAY][grid[block_id].index] = 1


def done_blocks(path: str) -> np.ndarray:
    """Ids of the blocks a blockwise group records as written."""
    import zarr

    return np.flatnonzero(np.asarray(zarr.open_group(str(path), mode="r")[DONE_ARRAY][...]).reshape(-1))


# ---------------------------------------------------------------------------------------
# prediction


_PREDICTORS: dict = {}


def _cached_predictor(settings: dict):
    """One Predictor per worker process and settings: the model is loaded on first use."""
    key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
    pred = _PREDICTORS.get(key)
    if pred is None:
        import torch

        from ._model import load_named
        from .inference import Predictor

        if settings.get("threads"):
            torch.set_num_threads(int(settings["threads"]))
        model = load_named(settings["weights"], settings.get("device"))
        extra = {"blend": settings["blend"]} if settings.get("blend") else {}
        pred = Predictor(model, tile=settings["tile"], overlap=settings["overlap"], batch_size=settings.get("batch_size"),
                         device=settings.get("device"), half=settings.get("half", False), tta=settings.get("tta", False),
                         model_voxel_size=settings.get("model_voxel_size"), **extra)
        _PREDICTORS.clear()  # one model per worker
        _PREDICTORS[key] = pred
    return pred


@dataclass(frozen=True)
class _PredictJob:
    volume: Any
    output: str
    grid: BlockGrid
    settings: dict
    offset: float
    scale: float


def _predict_block(block_id: int, job: _PredictJob) -> Optional[dict]:
    import torch
    import zarr

    root = zarr.open_group(job.output, mode="r+")
    if block_done(root, job.grid, block_id):
        return None
    t0 = time.perf_counter()
    predictor = _cached_predictor(job.settings)
    block = job.grid[block_id]
    plan = predictor_plan(predictor, job.grid.shape)
    index, region = tiles_touching(plan, block.core)
    data = normalise_region(job.volume, region, job.grid.shape, job.offset, job.scale)
    from .inference import gaussian_weight

    tz, ty, tx = plan.tile
    blend = getattr(plan, "blend", "gaussian")
    weight = gaussian_weight(plan.tile, plan.sigma, plan.floor) if blend == "gaussian" else None
    r0 = tuple(r.start for r in region)
    # accumulate only the core: a tile's part outside the block is another block's business
    core = tuple(slice(c.start - r, c.stop - r) for c, r in zip(block.core, r0))
    acc: Optional[np.ndarray] = None
    wsum = np.zeros(block.shape, np.float32)
    positions = [(iz, iy, ix) for iz in index[0] for iy in index[1] for ix in index[2]]
    bs = predictor.batch_size or 1
    for i in range(0, len(positions), bs):
        chunk = positions[i : i + bs]
        starts = [tuple(plan.starts[a][j] - r0[a] for a, j in enumerate(idx)) for idx in chunk]
        batch = np.stack([data[z : z + tz, y : y + ty, x : x + tx] for z, y, x in starts])[:, None]
        result = predictor._forward_with_backoff(torch.from_numpy(batch).to(predictor.device)).cpu().numpy()
        if acc is None:
            if result.shape[1] != 4:
                raise InputError(f"blockwise prediction needs a network with 4 output channels, got {result.shape[1]}")
            acc = np.zeros((result.shape[1],) + block.shape, np.float32)
        for idx, start, pred in zip(chunk, starts, result):
            box = plan.box(idx)
            # the tile's written part that lies in the core, in tile and in core coordinates
            lo, hi = [], []
            for a in range(3):
                b0, b1, _ = box[a].indices(plan.tile[a])
                lo.append(max(start[a] + b0, core[a].start))
                hi.append(min(start[a] + b1, core[a].stop))
            if any(h <= l for l, h in zip(lo, hi)):
                continue
            in_tile = tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))
            in_core = tuple(slice(l - c.start, h - c.start) for l, h, c in zip(lo, hi, core))
            if weight is None:
                acc[(slice(None),) + in_core] += pred[(slice(None),) + in_tile]
                wsum[in_core] += 1.0
            else:
                w = weight[in_tile]
                acc[(slice(None),) + in_core] += pred[(slice(None),) + in_tile] * w
                wsum[in_core] += w
    del data
    pred = acc / wsum[None]
    root["affinities"][(slice(None),) + block.core] = pred[:3]
    root["foreground"][block.core] = pred[3]
    mark_done(root, job.grid, block_id)
    return {"seconds": time.perf_counter() - t0, "tiles": len(positions), "device": str(predictor.device)}


def predict_blockwise(
    volume: Any,
    output: str,
    *,
    weights: str = "default",
    block: Sequence[int] | int = DEFAULT_BLOCK,
    client: Any = None,
    tile: Optional[Sequence[int]] = None,
    overlap: Optional[Sequence[int]] = None,
    batch_size: Optional[int] = None,
    device: Optional[str] = None,
    half: bool = False,
    tta: Union[bool, str, None] = False,
    model_voxel_size: Optional[Sequence[float]] = None,
    blend: Optional[str] = None,
    threads: Optional[int] = None,
    dtype: Any = np.float32,
    metadata: Optional[dict] = None,
    overwrite: bool = False,
    resume: bool = True,
    retries: int = 2,
    progress: ProgressFn = None,
    cancel: Optional[CancelToken] = None,
) -> BlockRun:
    """Predict ``volume`` (zarr/dask/numpy array or a path, (Z,Y,X)) block by block into the zarr
    group ``output`` (``affinities`` (3,Z,Y,X), ``foreground`` (Z,Y,X), chunked by ``block``).

    Tiling as ``Predictor`` (default tiles 32x192x192, overlap 8x32x32; the tile grid is the
    whole volume's, so the result equals ``Predictor.predict``). No resampling: give a volume
    on the model's voxel size. Returns a ``BlockRun`` (done / skipped / failed ids, peak RSS
    per worker); raises when blocks still fail after ``retries`` (rerun to resume).
    """
    from .inference import DEFAULT_TILING, intensity_scale, tta_mode
    from .io import as_volume, read_volume

    if isinstance(volume, (str, os.PathLike)):
        volume, _ = read_volume(volume)
    volume = as_volume(volume)
    shape = tuple(int(s) for s in volume.shape)
    tile_t = as_triple(tile, "tile") if tile is not None else DEFAULT_TILING.tile
    overlap_t = tuple(int(o) for o in overlap) if overlap is not None else (
        DEFAULT_TILING.overlap if tile is None else tuple(t // 4 for t in tile_t))
    settings = dict(weights=str(weights), tile=tuple(tile_t), overlap=tuple(overlap_t), batch_size=batch_size,
                    device=device, half=bool(half), tta=tta_mode(tta), threads=threads, blend=blend,
                    model_voxel_size=tuple(model_voxel_size) if model_voxel_size else None)
    grid = grid_for(shape, block)
    offset, scale = intensity_scale(volume)
    from ._model.registry import declared_fg_threshold

    meta = dict(metadata or {}, blockwise_block=list(grid.block), tile=list(tile_t), overlap=list(overlap_t),
                weights=str(weights), model_fg_threshold=declared_fg_threshold(weights))
    arrays = {
        "affinities": ((3,) + shape, dtype, (3,) + grid.block),
        "foreground": (shape, dtype, grid.block),
    }
    open_blockwise_group(output, arrays, grid, meta, overwrite=overwrite, resume=resume)
    job = _PredictJob(volume, str(output), grid, settings, float(offset), float(scale))
    todo = [b for b in range(len(grid))]
    run = run_blocks("predict", _predict_block, todo, (job,), client=client, retries=retries, progress=progress,
                     cancel=cancel, n_blocks=len(grid))
    run.raise_for_failures()
    return run
