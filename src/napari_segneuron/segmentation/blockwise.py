"""Blockwise segmentation with one global merge graph (volumes beyond memory, or a cluster).

Three steps, the first two one task per block (``distributed.run_blocks``: here, or on a
``distributed.Client``), the last one in this process:

1. **fragments**: each block reads its affinities and foreground *with context* (``context``
   voxels on every side), restricts them to the foreground exactly as ``agglomerate`` does,
   computes the same fragments as ``agglomerate`` (``fragments``: "distance" by default, or
   waterz's own watershed) on block + context and keeps the core, numbered 1..n. Seeds and
   basins near a block face are therefore those of the whole-volume watershed (the context
   holds the same affinities), except where a basin reaches further than the context. For
   each face the block also records, voxel by voxel, whether its watershed put the two
   voxels across the face into one basin.
2. **graph**: block ids become global by adding the running count of the blocks before it;
   each block reads its core plus one voxel plane below it on each axis and reports every
   voxel face whose *upper* voxel is in its core: so every face, including those across
   block faces, is owned by exactly one block. It returns the region-graph statistics
   (``graph.edge_table``), the contact areas and fragment sizes after the foreground mask,
   and writes the final fragments (global ids, background 0) chunk by chunk. A fragment
   cut by a face is *stitched*: when both blocks' watersheds saw one basin across the face,
   the two pieces are joined before any merge (recorded first in the history, at score 0),
   and their region-graph edges are combined as waterz would have built them for the whole
   basin (max, sum and count over the union of the contacts).
3. **merge**: one ``graph.merge_graph`` over the whole graph (small next to the voxels), whose
   merge history becomes an ``Agglomeration`` over the zarr fragments: ``labels(t)`` is the
   same replay as for a whole-volume run (a lookup over the global fragments; use
   ``labels(t, region=...)`` or ``write_labels_blockwise`` / ``labels_dask`` to apply it
   per chunk), and small-segment merging uses the global contact table.

The zarr group written to ``output``: ``fragments`` (Z,Y,X uint32, chunked by block),
``merges``, ``merge_scores``, ``sizes``, ``contacts`` and the settings in its attributes
(``fragments_local`` and ``face_same`` are scratch, removed at the end);
``load_agglomeration`` reopens it. On the default model's prediction of fib25_b, 8 blocks
and the whole volume as one block give the same segmentation (distance fragments: VI 0.0000;
waterz's: 0.0000 without small-segment merging, <= 0.003 with it), and 8 blocks differ from
``agglomerate`` on the whole volume by VI 0.0014 at the default threshold (the order of equal
scores; ``tests/test_distributed.py``, ``benchmarks/bench_scale.py``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..blocks import BlockGrid, grid_for, read_region
from ..cancel import CancelToken, check
from ..io import InputError
from .agglomeration import Agglomeration
from .defaults import (
    BACKGROUND_MODES_AGG,
    DEFAULT_BACKGROUND_MODE,
    DEFAULT_FG_THRESHOLD,
    DEFAULT_MAX_THRESHOLD,
    DEFAULT_MEMBRANE_FILL,
    DEFAULT_MIN_SIZE,
    DEFAULT_SCORING,
    DEFAULT_SMALL,
    SMALL_SEGMENTS,
    _check_membrane_fill,
    check_scoring,
)
from .fragments import DEFAULT_FRAGMENTS
from .graph import SCORINGS, RegionGraph, combine_contacts, contact_table, edge_table, merge_graph
from .history import _chain_history
from .inputs import restrict_to_foreground

DEFAULT_SEG_BLOCK = (64, 256, 256)
#: context around each block for the fragments: with it, 8 blocks and one block give the same
#: segmentation of fib25_b (VI 0.0000; with 8x32x32 the distance fragments differed: 0.0126)
DEFAULT_CONTEXT = (16, 64, 64)


@dataclass(frozen=True)
class _SegJob:
    affinities: Any
    foreground: Any
    output: str
    grid: BlockGrid
    fg_threshold: float
    background_mode: str
    low: float
    high: float
    offsets: Optional[np.ndarray] = None
    fragments: str = "waterz"
    fragment_options: Optional[dict] = None
    histogram: bool = False  # median-all scoring: every block reports its contacts' histograms
    membrane_fill: int = 0  # background within this many voxels of a fragment joins it (membranes)


def _foreground(job: _SegJob, region: tuple[slice, ...]) -> np.ndarray:
    """Foreground probabilities of ``region`` as float32 in [0, 1] (uint8 scaled by 1/255), in a new
    array: a numpy foreground is read as a view, which clipping in place would change."""
    fg = read_region(job.foreground, region)
    fg = fg.astype(np.float32) / np.float32(255) if fg.dtype == np.uint8 else fg.astype(np.float32)
    return np.clip(fg, 0.0, 1.0, out=fg)


def _prepared(job: _SegJob, region: tuple[slice, slice, slice]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Foreground-restricted float32 affinities of ``region`` and its background mask."""
    aff = read_region(job.affinities, (slice(None),) + tuple(region))
    aff = aff.astype(np.float32) / np.float32(255) if aff.dtype == np.uint8 else aff.astype(np.float32, copy=True)
    bg = None
    if job.foreground is not None:
        fg = _foreground(job, region)
        bg = restrict_to_foreground(aff, fg, job.fg_threshold, out=aff,
                                    exclude_background=job.background_mode == "exclude",
                                    cut_background=job.background_mode == "cut")
    np.clip(aff, 0.0, 1.0, out=aff)
    return np.ascontiguousarray(aff), bg


def watershed_fragments(aff: np.ndarray, low: float = 0.0001, high: float = 0.9999) -> np.ndarray:
    """waterz's initial fragments (its watershed) for (3,Z,Y,X) float32 affinities, uint32."""
    import waterz

    from .worker import _restore_stdout, _silence_stdout

    saved = _silence_stdout(None)
    try:
        gen = waterz.agglomerate(aff, [0.0], aff_threshold_low=low, aff_threshold_high=high,
                                 scoring_function="OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>")
        seg = next(gen)
        if isinstance(seg, tuple):
            seg = seg[0]
        seg = np.array(seg, dtype=np.uint64)
        for _ in gen:
            pass
    finally:
        _restore_stdout(saved)
    return seg


def _fragments_block(block_id: int, job: _SegJob) -> int:
    import fastremap
    import zarr

    block = job.grid[block_id]
    aff, bg = _prepared(job, block.outer)
    if job.fragments == "waterz":
        ws = watershed_fragments(aff, job.low, job.high)
    else:  # as agglomerate does it: over every voxel, or the foreground only in "exclude" mode
        from .fragments import distance_fragments

        mask = ~bg if bg is not None and job.background_mode == "exclude" else None
        ws = distance_fragments(aff, mask, per_slice=job.fragments == "distance2d", **(job.fragment_options or {}))
    seg = ws[block.core_in_outer]
    seg, _ = fastremap.renumber(np.ascontiguousarray(seg), preserve_zero=True)
    n = int(seg.max(initial=0))
    if n >= 2**32 - 1:
        raise InputError(f"block {block.name} has more than 2**32 fragments")
    root = zarr.open_group(job.output, mode="r+")
    root["fragments_local"][block.core] = seg.astype(np.uint32)
    # how this block's watershed sees its faces: are the voxels on both sides one basin?
    # channel d: the core's first plane along d with the plane below it; 3 + d: the core's
    # last plane with the plane above it (both written into this block's own chunk)
    same = np.zeros((6,) + block.shape, np.uint8)
    cio = block.core_in_outer
    for d in range(3):
        c = cio[d]
        if c.start > 0:
            p = list(cio)
            q = list(cio)
            p[d] = slice(c.start, c.start + 1)
            q[d] = slice(c.start - 1, c.start)
            a, b = ws[tuple(p)], ws[tuple(q)]
            plane = [slice(None)] * 3
            plane[d] = slice(0, 1)
            same[d][tuple(plane)] = (a == b) & (a != 0)
        if c.stop < ws.shape[d]:
            p = list(cio)
            q = list(cio)
            p[d] = slice(c.stop - 1, c.stop)
            q[d] = slice(c.stop, c.stop + 1)
            a, b = ws[tuple(p)], ws[tuple(q)]
            plane = [slice(None)] * 3
            plane[d] = slice(block.shape[d] - 1, block.shape[d])
            same[3 + d][tuple(plane)] = (a == b) & (a != 0)
    root["face_same"][(slice(None),) + block.core] = same
    return n


def _global_ids(job: _SegJob, local: np.ndarray, region: Sequence[slice]) -> np.ndarray:
    """Local fragment ids of ``region`` (which may reach into lower neighbour blocks) made global."""
    idx = [np.minimum(np.arange(r.start, r.stop) // b, g - 1) for r, b, g in zip(region, job.grid.block, job.grid.grid_shape)]
    bid = np.ravel_multi_index(np.meshgrid(*idx, indexing="ij"), job.grid.grid_shape)
    out = local.astype(np.uint64) + job.offsets[bid].astype(np.uint64)
    out[local == 0] = 0
    return out


def _graph_block(block_id: int, job: _SegJob) -> dict:
    import zarr

    block = job.grid[block_id]
    region = tuple(slice(max(c.start - 1, 0), c.stop) for c in block.core)
    core = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(block.core, region))
    root = zarr.open_group(job.output, mode="r+")
    frag = _global_ids(job, np.asarray(root["fragments_local"][region]), region)
    aff, bg = _prepared(job, region)
    origin = tuple(r.start for r in region)
    edges = edge_table(frag, aff, core, origin=origin, volume_shape=job.grid.shape, histogram=job.histogram)
    del aff
    # fragments cut by a lower face: one basin seen from both blocks -> stitched
    unions = []
    for d in range(3):
        if block.core[d].start == 0:
            continue
        p = list(core)
        q = list(core)
        p[d] = slice(core[d].start, core[d].start + 1)
        q[d] = slice(core[d].start - 1, core[d].start)
        gp = list(block.core)
        gq = list(block.core)
        gp[d] = slice(block.core[d].start, block.core[d].start + 1)
        gq[d] = slice(block.core[d].start - 1, block.core[d].start)
        mine = np.asarray(root["face_same"][(d,) + tuple(gp)]).astype(bool)
        theirs = np.asarray(root["face_same"][(3 + d,) + tuple(gq)]).astype(bool)
        a, b = frag[tuple(p)], frag[tuple(q)]
        both = mine & theirs & (a != 0) & (b != 0) & (a != b)
        if both.any():
            unions.append(np.unique(np.stack([a[both], b[both]], axis=1), axis=0))
    if bg is not None and job.membrane_fill:
        frag = _filled_fragments(job, region, root)
    elif bg is not None:
        frag[bg] = 0
    contacts = contact_table(frag, core)
    final = frag[core]
    ids, counts = np.unique(final, return_counts=True)
    root["fragments"][block.core] = final.astype(np.uint32)
    unions_arr = np.concatenate(unions).astype(np.int64) if unions else np.zeros((0, 2), np.int64)
    return dict(edges=edges, contacts=contacts, ids=ids.astype(np.int64), counts=counts.astype(np.int64),
                unions=unions_arr)


def _filled_fragments(job: _SegJob, region: tuple[slice, ...], root: Any) -> np.ndarray:
    """Global fragments of ``region`` with background cut out and membranes filled
    (``membranes.fill_membranes``), computed on the region plus ``2 * membrane_fill + 2`` voxels
    on every side, so that blocks agree with a whole-volume fill except where a membrane's flood
    reaches further than that."""
    from .membranes import fill_membranes

    m = 2 * job.membrane_fill + 2
    wide = tuple(slice(max(r.start - m, 0), min(r.stop + m, n)) for r, n in zip(region, job.grid.shape))
    inner = tuple(slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, wide))
    frag = _global_ids(job, np.asarray(root["fragments_local"][wide]), wide)
    fg = _foreground(job, wide)
    bg = fg < np.float32(job.fg_threshold)
    frag[bg] = 0
    fill_membranes(frag, fg, bg, job.membrane_fill)
    return np.ascontiguousarray(frag[inner])


def segment_blockwise(
    affinities: Any,
    foreground: Any = None,
    output: Optional[str] = None,
    *,
    block: Sequence[int] | int = DEFAULT_SEG_BLOCK,
    context: Sequence[int] | int = DEFAULT_CONTEXT,
    client: Any = None,
    fg_threshold: float = DEFAULT_FG_THRESHOLD,
    min_size: int = DEFAULT_MIN_SIZE,
    small: str = DEFAULT_SMALL,
    max_threshold: float = DEFAULT_MAX_THRESHOLD,
    scoring: str = DEFAULT_SCORING,
    background_mode: str = DEFAULT_BACKGROUND_MODE,
    membrane_fill: int = DEFAULT_MEMBRANE_FILL,
    aff_threshold_low: float = 0.0001,
    aff_threshold_high: float = 0.9999,
    fragments: str = DEFAULT_FRAGMENTS,
    fragment_options: Optional[dict] = None,
    retries: int = 2,
    overwrite: bool = False,
    progress: Any = None,
    cancel: Optional[CancelToken] = None,
) -> Agglomeration:
    """Fragments per block, one global region graph, one agglomeration (see the module docstring).

    affinities (3,Z,Y,X) and foreground (Z,Y,X): zarr, dask or numpy arrays, or ``affinities``
    a path to a prediction zarr group (``foreground`` then None: read from it). ``output``: the
    zarr group for fragments and merge history (required: the fragments live there). Returns an
    ``Agglomeration`` whose ``fragments`` is the zarr array; ``labels(t)`` works as usual.
    """
    import zarr

    from ..distributed import run_blocks

    if output is None:
        raise InputError("segment_blockwise needs an output zarr path for the fragments")
    if isinstance(affinities, (str,)) or hasattr(affinities, "__fspath__"):
        group = zarr.open_group(str(affinities), mode="r")
        if "affinities" not in group:
            raise InputError(f"{affinities} has no 'affinities' array; is it a prediction?")
        affinities = group["affinities"]
        if foreground is None and "foreground" in group:
            foreground = group["foreground"]
    if len(affinities.shape) != 4 or affinities.shape[0] != 3:
        raise InputError(f"Affinities must have the shape (3, Z, Y, X), got {tuple(affinities.shape)}")
    shape = tuple(int(s) for s in affinities.shape[1:])
    if foreground is not None and tuple(foreground.shape) != shape:
        raise InputError(f"The foreground {tuple(foreground.shape)} must have the shape {shape}")
    check_scoring(scoring, custom=False, allowed=SCORINGS)
    if background_mode not in BACKGROUND_MODES_AGG:
        raise InputError(f"background_mode must be one of {BACKGROUND_MODES_AGG}, not {background_mode!r}")
    if small not in SMALL_SEGMENTS:
        raise InputError(f"small must be one of {SMALL_SEGMENTS}, not {small!r}")
    membrane_fill = _check_membrane_fill(membrane_fill) if foreground is not None else 0
    grid0 = grid_for(shape, block)
    ctx = (int(context),) * 3 if isinstance(context, (int, np.integer)) else tuple(int(c) for c in context)
    grid = BlockGrid(grid0.shape, grid0.block, ctx)  # type: ignore[arg-type]
    if isinstance(affinities, np.ndarray) and client is not None:
        pass  # scattered once by run_blocks with the job
    t0 = time.perf_counter()
    out = _open_output(str(output), grid, overwrite)
    out.attrs["blockwise_segmentation"] = dict(
        block=list(grid.block), context=list(ctx), fg_threshold=float(fg_threshold), scoring=scoring, fragments=fragments,
        background_mode=background_mode, max_threshold=float(max_threshold), min_size=int(min_size), small=small,
        membrane_fill=membrane_fill)
    if fragments not in ("waterz", "distance", "distance2d"):
        raise InputError(f"fragments must be 'waterz', 'distance' or 'distance2d', not {fragments!r}")
    job = _SegJob(affinities, foreground, str(output), grid, float(fg_threshold), background_mode,
                  float(aff_threshold_low), float(aff_threshold_high), None, fragments, fragment_options)
    ids = list(range(len(grid)))

    def stage(name: str, offset: int):
        if progress is None:
            return None
        return lambda done, total, msg="": progress(offset * len(grid) + done, 2 * len(grid) + 1, msg)

    run1 = run_blocks("fragments", _fragments_block, ids, (job,), client=client, retries=retries,
                      progress=stage("fragments", 0), cancel=cancel)
    run1.raise_for_failures()
    counts = np.array([run1.results[i] for i in ids], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())
    if total == 0:
        raise InputError("no fragments: every affinity is below aff_threshold_low or every voxel is background")
    if total >= 2**32 - 1:
        raise InputError(f"{total} fragments do not fit uint32 ids; use larger fragments")
    job = _SegJob(affinities, foreground, str(output), grid, float(fg_threshold), background_mode,
                  float(aff_threshold_low), float(aff_threshold_high), offsets, fragments, fragment_options,
                  histogram=scoring == "median-all", membrane_fill=membrane_fill)
    run2 = run_blocks("graph", _graph_block, ids, (job,), client=client, retries=retries,
                      progress=stage("graph", 1), cancel=cancel)
    run2.raise_for_failures()
    check(cancel)
    parts = [run2.results[i] for i in ids]
    n_nodes = total + 1
    t1 = time.perf_counter()
    root, k0, g0 = _stitch(np.concatenate([p["unions"] for p in parts]), n_nodes)
    graph = RegionGraph.combine([p["edges"] for p in parts], n_nodes, root=root)
    kept, gone, scores = merge_graph(graph, scoring, max_threshold, cancel=cancel)
    # the stitching comes first in the history, at score 0: one fragment for any threshold > 0
    kept = np.concatenate([k0, kept])
    gone = np.concatenate([g0, gone])
    scores = np.concatenate([np.zeros(len(k0), np.float32), scores])
    sizes = np.zeros(n_nodes, np.int64)
    for p in parts:
        np.add.at(sizes, p["ids"], p["counts"])
    sizes[0] = 0
    contacts = combine_contacts([p["contacts"] for p in parts], root=root)
    merge_seconds = time.perf_counter() - t1
    if progress is not None:
        progress(2 * len(grid) + 1, 2 * len(grid) + 1, "agglomeration done")
    info = dict(seconds=time.perf_counter() - t0, merge_seconds=merge_seconds, scoring=scoring,
                fg_threshold=float(fg_threshold) if foreground is not None else None,
                restricted=foreground is not None, background_mode=background_mode, membrane_fill=membrane_fill,
                blockwise=True,
                block=list(grid.block), context=list(ctx), n_blocks=len(grid), n_edges=graph.n_edges,
                n_stitched=int(len(k0)),
                peak_rss_per_worker=max(list(run1.peak_rss.values()) + list(run2.peak_rss.values())))
    _save_history(out, kept, gone, scores, sizes, contacts, info)
    del out["fragments_local"]
    del out["face_same"]
    return _agglomeration(zarr.open_group(str(output), mode="r")["fragments"], kept, gone, scores, sizes, contacts,
                          float(max_threshold), int(min_size), small, info)


def _stitch(pairs: np.ndarray, n_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of the stitched pairs: ``root`` (id -> smallest id of its group) and the unions as
    merges ``(kept, absorbed)`` in an order where both are roots when merged."""
    root = np.arange(n_nodes, dtype=np.int64)
    if len(pairs) == 0:
        z = np.zeros(0, np.int64)
        return root, z, z
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n_nodes, n_nodes))
    _, comp = connected_components(g, directed=False)
    smallest = np.full(comp.max() + 1, n_nodes, np.int64)
    np.minimum.at(smallest, comp, np.arange(n_nodes, dtype=np.int64))
    root = smallest[comp]
    gone = np.flatnonzero(root != np.arange(n_nodes))
    return root, root[gone], gone


def _open_output(path: str, grid: BlockGrid, overwrite: bool):
    import os
    import shutil

    import zarr

    if os.path.exists(path):
        if not overwrite:
            raise InputError(f"{path} already exists; choose another name or allow overwriting")
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    root = zarr.open_group(path, mode="w")
    for name in ("fragments", "fragments_local"):
        root.create_array(name, shape=grid.shape, dtype="uint32", chunks=grid.block, fill_value=0)
    root.create_array("face_same", shape=(6,) + grid.shape, dtype="uint8", chunks=(6,) + grid.block, fill_value=0)
    return root


def _save_history(root, kept, gone, scores, sizes, contacts, info) -> None:
    def put(name: str, data: np.ndarray) -> None:
        root.create_array(name, shape=data.shape, dtype=data.dtype, chunks=data.shape if data.size else None,
                          overwrite=True)[...] = data

    put("merges", np.stack([kept, gone], axis=1) if len(kept) else np.zeros((0, 2), np.int64))
    put("merge_scores", scores.astype(np.float32))
    put("sizes", sizes.astype(np.int64))
    put("contacts", np.stack(contacts, axis=0).astype(np.int64))
    root.attrs["agglomeration"] = {k: v for k, v in info.items() if isinstance(v, (int, float, str, list, bool, type(None)))}


def _agglomeration(fragments, kept, gone, scores, sizes, contacts, max_threshold, min_size, small, info) -> Agglomeration:
    n_nodes = len(sizes)
    present = np.ones(n_nodes, bool)
    present[0] = False
    order, join = _chain_history(n_nodes, kept, gone, present)
    return Agglomeration(
        fragments=fragments, max_threshold=max_threshold, min_size=min_size, small=small, merge_scores=scores,
        merges=np.stack([kept, gone], axis=1) if len(kept) else np.zeros((0, 2), np.int64),
        _order=order, _join=join, _sizes=sizes, _contacts=tuple(np.asarray(c, np.int64) for c in contacts),
        info=dict(info),
    )


def load_agglomeration(path: str, min_size: Optional[int] = None, small: Optional[str] = None) -> Agglomeration:
    """Reopen what ``segment_blockwise`` wrote at ``path`` (fragments stay on disk)."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    if "merges" not in root or "fragments" not in root:
        raise InputError(f"{path} holds no blockwise agglomeration (no 'fragments' and 'merges')")
    settings = dict(root.attrs.get("blockwise_segmentation", {}))
    merges = np.asarray(root["merges"][...])
    contacts = np.asarray(root["contacts"][...])
    return _agglomeration(
        root["fragments"], merges[:, 0].astype(np.int64), merges[:, 1].astype(np.int64),
        np.asarray(root["merge_scores"][...], np.float32), np.asarray(root["sizes"][...], np.int64),
        (contacts[0], contacts[1], contacts[2]), float(settings.get("max_threshold", DEFAULT_MAX_THRESHOLD)),
        int(settings.get("min_size", DEFAULT_MIN_SIZE) if min_size is None else min_size),
        small or settings.get("small", DEFAULT_SMALL), dict(root.attrs.get("agglomeration", {})),
    )


# ---------------------------------------------------------------------------------------
# labels, chunk by chunk


@dataclass(frozen=True)
class _LabelJob:
    lut: np.ndarray
    fragments: Any
    output: Any  # zarr array
    grid: BlockGrid


def _labels_block(block_id: int, job: _LabelJob) -> int:
    block = job.grid[block_id]
    frag = np.asarray(job.fragments[block.core])
    job.output[block.core] = job.lut[frag]
    return int(frag.size)


def write_labels_blockwise(
    agglomeration: Agglomeration,
    threshold: float,
    output: Any,
    *,
    client: Any = None,
    progress: Any = None,
    cancel: Optional[CancelToken] = None,
) -> Any:
    """Write ``agglomeration.labels(threshold)`` into ``output`` (a zarr array of the volume's
    shape, or a path: a new zarr array chunked like the fragments) one chunk per task."""
    import zarr

    from ..distributed import run_blocks

    frag = agglomeration.fragments
    chunks = tuple(getattr(frag, "chunks", None) or DEFAULT_SEG_BLOCK)
    grid = grid_for(frag.shape, chunks)
    if isinstance(output, (str,)) or hasattr(output, "__fspath__"):
        output = zarr.create_array(str(output), shape=frag.shape, dtype="uint32", chunks=grid.block, fill_value=0,
                                   overwrite=True)
    lut = agglomeration.lookup_table(threshold)
    run = run_blocks("labels", _labels_block, list(range(len(grid))), (_LabelJob(lut, frag, output, grid),),
                     client=client, progress=progress, cancel=cancel)
    run.raise_for_failures()
    return output


def labels_dask(agglomeration: Agglomeration, threshold: float):
    """``labels(threshold)`` as a lazy dask array: each chunk is one lookup when it is read
    (for napari: only what is on screen is relabelled)."""
    import dask.array as da

    frag = agglomeration.fragments
    arr = da.from_zarr(frag) if hasattr(frag, "store") else da.from_array(frag, chunks=DEFAULT_SEG_BLOCK)
    lut = agglomeration.lookup_table(threshold)
    return arr.map_blocks(lambda f: lut[f], dtype=np.uint32)
