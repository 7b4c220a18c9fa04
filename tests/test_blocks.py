"""Block geometry, blockwise prediction (in this process) and the region-graph merge."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_segneuron.blocks import BlockGrid, grid_for, tiles_run, tiles_touching
from napari_segneuron.inference import Tiling, plan_tiles
from napari_segneuron.io import InputError

DATA = Path("/work/shared/data")
RAW_B = DATA / "fib25_b_raw.tif"
if not RAW_B.exists():  # the copy packaged with the plugin
    RAW_B = Path(__file__).resolve().parents[1] / "src" / "napari_segneuron" / "data" / "fib25_b_raw.tif"


def test_block_grid_partitions_the_volume():
    grid = BlockGrid((10, 33, 17), (4, 16, 8), (1, 2, 3))
    assert grid.grid_shape == (3, 3, 3) and len(grid) == 27
    seen = np.zeros(grid.shape, np.int32)
    for i, b in enumerate(grid):
        assert b.id == i and grid.block_at(b.index).id == i
        seen[b.core] += 1
        for c, o, h, n in zip(b.core, b.outer, grid.halo, grid.shape):
            assert o.start == max(c.start - h, 0) and o.stop == min(c.stop + h, n)
        inner = np.zeros(tuple(s.stop - s.start for s in b.outer), bool)
        inner[b.core_in_outer] = True
        assert inner.sum() == np.prod(b.shape)
    assert (seen == 1).all()  # every voxel owned by exactly one block
    assert grid_for((5, 6, 7), (64, 256, 256)).block == (5, 6, 7)  # clipped: one block
    with pytest.raises(InputError):
        BlockGrid((5, 6, 7), (0, 4, 4))
    with pytest.raises(IndexError):
        grid[27]


def test_tile_grid_blocks_need_only_touching_tiles():
    tiles = plan_tiles((40, 100, 130), Tiling(tile=(16, 64, 64), overlap=(4, 16, 16)))  # gaussian: whole tiles written
    assert tiles.starts[1][-1] + tiles.tile[1] == 100  # the last tile sits flush with the border
    grid = BlockGrid((40, 100, 130), (16, 48, 48))
    for b in grid:
        index, region = tiles_touching(tiles, b.core)
        for axis, (c, r) in enumerate(zip(b.core, region)):
            assert r.start <= c.start and r.stop >= c.stop
            t, starts = tiles.tile[axis], tiles.starts[axis]
            touching = [i for i, s in enumerate(starts) if s < c.stop and s + t > c.start]
            assert index[axis] == touching
    assert tiles_run(tiles, grid) >= tiles.n_tiles


@pytest.fixture(scope="module")
def crop():
    return tifffile.imread(RAW_B)[:20, :48, :80]


def test_predict_blockwise_equals_the_in_memory_predictor(tmp_path, tiny_checkpoint, tiny_model_cpu, crop):
    import zarr

    from napari_segneuron.distributed import done_blocks, predict_blockwise
    from napari_segneuron.inference import Predictor

    aff, fg = Predictor(tiny_model_cpu, tile=(8, 32, 32), overlap=(2, 8, 8), device="cpu").predict(crop)
    out = tmp_path / "pred.zarr"
    run = predict_blockwise(crop, str(out), weights=str(tiny_checkpoint), block=(8, 24, 40), tile=(8, 32, 32),
                            overlap=(2, 8, 8), device="cpu")
    assert run.done == list(range(12)) and not run.failed and not run.skipped
    root = zarr.open_group(str(out), mode="r")
    assert root["foreground"].chunks == (8, 24, 40)  # one chunk per block: one writer each
    np.testing.assert_allclose(root["affinities"][...], aff, atol=1e-5)
    np.testing.assert_allclose(root["foreground"][...], fg, atol=1e-5)
    assert list(done_blocks(str(out))) == list(range(12))
    # the same path again resumes: nothing left to do
    again = predict_blockwise(crop, str(out), weights=str(tiny_checkpoint), block=(8, 24, 40), tile=(8, 32, 32),
                              overlap=(2, 8, 8), device="cpu")
    assert again.done == [] and again.skipped == list(range(12))
    with pytest.raises(InputError, match="block"):  # another block size cannot resume this output
        predict_blockwise(crop, str(out), weights=str(tiny_checkpoint), block=(10, 24, 40), tile=(8, 32, 32),
                          overlap=(2, 8, 8), device="cpu")


class _Failing:
    """An array whose reads touching ``bad_z`` fail (a broken disk region)."""

    def __init__(self, data: np.ndarray, bad_z: int):
        self.data, self.bad_z = data, bad_z
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        z = key[0] if isinstance(key, tuple) else key
        if isinstance(z, slice) and z.start is not None and z.start <= self.bad_z < z.stop:
            raise OSError(f"read error at z={self.bad_z}")
        return self.data[key]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.data, dtype=dtype)


def test_failed_blocks_are_retried_reported_by_id_and_resumed(tmp_path, tiny_checkpoint, tiny_model_cpu, crop):
    import zarr

    from napari_segneuron.distributed import done_blocks, predict_blockwise
    from napari_segneuron.inference import Predictor

    vol = crop[:16, :32, :64]
    kw = dict(weights=str(tiny_checkpoint), block=(8, 32, 32), tile=(8, 32, 32), overlap=(2, 8, 8), device="cpu")
    out = str(tmp_path / "pred.zarr")
    broken = _Failing(vol, bad_z=12)  # only the blocks of the upper z half read z=12 (tiles 8..16)
    with pytest.raises(RuntimeError, match=r"2 of 4 blocks failed after retries \(ids \[2, 3\]\).*read error"):
        predict_blockwise(broken, out, retries=1, **kw)
    assert list(done_blocks(out)) == [0, 1]
    run = predict_blockwise(vol, out, **kw)  # the rerun does only what failed
    assert run.skipped == [0, 1] and run.done == [2, 3]
    aff, fg = Predictor(tiny_model_cpu, tile=(8, 32, 32), overlap=(2, 8, 8), device="cpu").predict(vol)
    np.testing.assert_allclose(zarr.open_group(out, mode="r")["foreground"][...], fg, atol=1e-5)


@pytest.mark.parametrize("scoring", ["mean", "median", "median-all"])
def test_graph_merge_replays_like_waterz(scoring):
    """On fragments with distinct scores the Python merge gives waterz's segmentation at every threshold."""
    import waterz

    from napari_segneuron.segmentation import SCORING_FUNCTIONS, evaluate
    from napari_segneuron.segmentation.blockwise import _agglomeration
    from napari_segneuron.segmentation.graph import RegionGraph, edge_table, merge_graph
    from napari_segneuron.segmentation.worker import _restore_stdout, _silence_stdout

    rng = np.random.default_rng(3)
    shape = (6, 12, 18)
    cells = rng.permutation(2 * 4 * 6) + 1  # 3x3x3 cubes, numbered at random
    frag = np.kron(cells.reshape(2, 4, 6), np.ones((3, 3, 3), np.int64)).astype(np.uint64)
    aff = rng.uniform(0.0, 1.0, (3,) + shape).astype(np.float32)
    if scoring == "median-all":
        # medians of random faces tie (9 values per contact, 256 bins), and ties break in another
        # order than waterz's heap. Instead each touching pair gets two bins of its own: one bright
        # face (what "median" starts from) and all its other faces darker (what median-all sees)
        faces = []
        for d in range(3):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[d], hi[d] = slice(1, None), slice(None, -1)
            a, b = frag[tuple(lo)].astype(np.int64), frag[tuple(hi)].astype(np.int64)
            faces.append((d, tuple(lo), a != b, np.minimum(a, b) * 1000 + np.maximum(a, b)))
        flat = np.concatenate([p.ravel() for _, _, _, p in faces])
        touching = np.concatenate([m.ravel() for _, _, m, _ in faces])
        pairs, first = np.unique(np.where(touching, flat, -1), return_index=True)
        pairs, first = pairs[1:], first[1:]  # -1: faces inside one fragment
        assert 2 * len(pairs) <= 256
        order = rng.permutation(256)
        dark, bright = np.sort(order[: 2 * len(pairs)].reshape(-1, 2), axis=1).T
        value = (dark[np.minimum(np.searchsorted(pairs, flat), len(pairs) - 1)] + 0.5) / 256
        value[first] = (bright + 0.5) / 256
        value = np.where(touching, value, np.concatenate([aff[d][lo].ravel() for d, lo, _, _ in faces]))
        offset = 0
        for d, lo, m, _ in faces:
            aff[d][lo] = value[offset:offset + m.size].reshape(m.shape).astype(np.float32)
            offset += m.size
    table = edge_table(frag, aff, histogram=scoring == "median-all")
    graph = RegionGraph.combine([table], int(frag.max()) + 1)
    kept, gone, scores = merge_graph(graph, scoring)
    agg = _agglomeration(frag.astype(np.uint32), kept, gone, scores, np.bincount(frag.reshape(-1)).astype(np.int64),
                         (np.zeros(0, np.int64),) * 3, 1.0, 0, "merge", {})
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9]
    saved = _silence_stdout(None)
    try:
        ref = [np.array(s) for s in waterz.agglomerate(aff, thresholds, fragments=frag.copy(),
                                                       scoring_function=SCORING_FUNCTIONS[scoring])]
    finally:
        _restore_stdout(saved)
    for t, r in zip(thresholds, ref):
        mine = agg.labels(t)
        assert evaluate(mine, r, ignore_gt=(), background="segment").vi < 1e-9, t
    assert len(np.unique(ref[-1])) < len(np.unique(ref[0]))  # the thresholds did merge something
    if scoring == "median-all":  # and not as "median" would (it starts from the bright faces)
        median = merge_graph(graph, "median")[2]
        assert not np.array_equal(np.sort(median), np.sort(scores))
