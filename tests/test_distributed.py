"""Blockwise prediction and segmentation on a dask.distributed LocalCluster (2 worker processes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

distributed = pytest.importorskip("distributed")

RAW_B = Path("/work/shared/data/fib25_b_raw.tif")
if not RAW_B.exists():
    RAW_B = Path(__file__).resolve().parents[1] / "src" / "napari_segneuron" / "data" / "fib25_b_raw.tif"


@pytest.fixture(scope="module")
def cluster_client():
    from napari_segneuron.distributed import client

    with client("local:2") as c:  # two single-threaded worker processes on 127.0.0.1
        yield c


@pytest.fixture(scope="module")
def real_prediction(tmp_path_factory):
    """The bundled default model's prediction of a fib25_b crop (validation data), as a zarr group."""
    import torch

    from napari_segneuron._model import load_named
    from napari_segneuron.inference import Predictor
    from napari_segneuron.io import write_prediction

    torch.set_num_threads(1)
    crop = tifffile.imread(RAW_B)[:32, :64, :128]
    aff, fg = Predictor(load_named("default"), device="cpu").predict(crop)
    path = tmp_path_factory.mktemp("pred") / "prediction.zarr"
    write_prediction(path, aff, fg)
    return str(path), aff, fg


def test_predict_on_the_cluster_equals_the_in_memory_predictor(tmp_path, cluster_client, tiny_checkpoint,
                                                               tiny_model_cpu):
    import zarr

    from napari_segneuron.distributed import predict_blockwise
    from napari_segneuron.inference import Predictor

    vol = tifffile.imread(RAW_B)[:16, :48, :80]
    aff, fg = Predictor(tiny_model_cpu, tile=(8, 32, 32), overlap=(2, 8, 8), device="cpu").predict(vol)
    out = str(tmp_path / "pred.zarr")
    run = predict_blockwise(vol, out, weights=str(tiny_checkpoint), block=(8, 48, 40), tile=(8, 32, 32),
                            overlap=(2, 8, 8), device="cpu", client=cluster_client)
    assert run.done == list(range(4)) and not run.failed
    assert all(w.startswith("tcp://127.0.0.1") for w in run.peak_rss)  # ran in the worker processes
    root = zarr.open_group(out, mode="r")
    np.testing.assert_allclose(root["affinities"][...], aff, atol=1e-5)
    np.testing.assert_allclose(root["foreground"][...], fg, atol=1e-5)


def test_segment_on_the_cluster_matches_the_whole_volume(tmp_path, cluster_client, real_prediction):
    from napari_segneuron.metrics import pair_counts
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD, agglomerate, evaluate
    from napari_segneuron.segmentation.blockwise import (
        labels_dask,
        load_agglomeration,
        segment_blockwise,
        write_labels_blockwise,
    )

    path, aff, fg = real_prediction
    # whole volume as one block, in this process: the reference with the same merge
    whole = segment_blockwise(aff, fg, str(tmp_path / "whole.zarr"), block=aff.shape[1:])
    blocks = segment_blockwise(path, None, str(tmp_path / "blocks.zarr"), block=(16, 32, 64),
                               client=cluster_client)
    assert blocks.info["n_blocks"] == 8 and blocks.info["n_stitched"] > 0
    # waterz's own fragments work the same way
    w_whole = segment_blockwise(aff, fg, str(tmp_path / "w_whole.zarr"), block=aff.shape[1:], fragments="waterz")
    w_blocks = segment_blockwise(path, None, str(tmp_path / "w_blocks.zarr"), block=(16, 32, 64), fragments="waterz",
                                 client=cluster_client)
    vi = evaluate(w_blocks.labels(DEFAULT_THRESHOLD), w_whole.labels(DEFAULT_THRESHOLD), ignore_gt=(),
                  background="segment").vi
    assert vi <= 0.01, vi
    for t in (0.3, DEFAULT_THRESHOLD, 0.7):
        for min_size in (0, 100):
            a, b = whole.labels(t, min_size=min_size), blocks.labels(t, min_size=min_size)
            vi = evaluate(b, a, ignore_gt=(), background="segment").vi
            assert vi <= 0.01, (t, min_size, vi)
    # small-segment merging on the global graph: what is left of small pieces touched nothing
    labels = blocks.labels(DEFAULT_THRESHOLD, min_size=100)
    sizes = np.bincount(labels.reshape(-1))[1:]
    assert sizes[sizes > 0].min() >= 100
    # against agglomerate (waterz) on the whole volume, same fragments: equal up to the order of
    # equal scores, which moves waterz itself by VI 0.02-0.06 when the fragments are renumbered
    ref = agglomerate(aff, fg, worker=False)
    assert evaluate(blocks.labels(DEFAULT_THRESHOLD), ref.labels(DEFAULT_THRESHOLD), ignore_gt=(),
                    background="segment").vi < 0.05
    # labels chunk by chunk (written by the workers, or lazily) equal labels(t)
    out = write_labels_blockwise(blocks, DEFAULT_THRESHOLD, str(tmp_path / "labels.zarr"), client=cluster_client)
    np.testing.assert_array_equal(out[...], labels)
    np.testing.assert_array_equal(labels_dask(blocks, DEFAULT_THRESHOLD).compute(), labels)
    # ids follow the merge hierarchy here too (and the chunked writers use the same ids):
    # raising the threshold, each segment is a union of lower segments and has one of their ids
    low, high = blocks.labels(0.3, min_size=0), blocks.labels(0.6, min_size=0)
    parts: dict = {}
    for a, b in zip(*(x.tolist() for x in pair_counts(low[low > 0], high[high > 0])[:2])):
        parts.setdefault(b, []).append(a)
    assert sum(map(len, parts.values())) == len(np.unique(low[low > 0]))  # no segment split
    assert all(b in members for b, members in parts.items()) and any(len(m) > 1 for m in parts.values())
    np.testing.assert_array_equal(labels_dask(blocks, 0.6).compute(), blocks.labels(0.6))
    # the stored history reopens with the same replay
    again = load_agglomeration(str(tmp_path / "blocks.zarr"))
    np.testing.assert_array_equal(again.labels(0.5), blocks.labels(0.5))


def test_median_all_blockwise_matches_the_whole_volume(tmp_path, cluster_client, real_prediction):
    """median-all (the score "auto" picks for serial sections) in the blockwise merge: the contacts'
    histograms are summed over blocks and stitched fragments; the same as one block and as waterz."""
    from napari_segneuron.segmentation import agglomerate, evaluate
    from napari_segneuron.segmentation.blockwise import segment_blockwise

    path, aff, fg = real_prediction
    whole = segment_blockwise(aff, fg, str(tmp_path / "whole.zarr"), block=aff.shape[1:], scoring="median-all")
    blocks = segment_blockwise(path, None, str(tmp_path / "blocks.zarr"), block=(16, 32, 64), client=cluster_client,
                               scoring="median-all")
    assert blocks.info["scoring"] == "median-all" and blocks.info["n_stitched"] > 0
    ref = agglomerate(aff, fg, worker=False, scoring="median-all")
    median = agglomerate(aff, fg, worker=False)
    for t in (0.3, 0.48, 0.7):
        a, b = whole.labels(t), blocks.labels(t)
        assert evaluate(b, a, ignore_gt=(), background="segment").vi <= 0.01, t
        # waterz: equal up to the order of equal scores (see the median test above)
        assert evaluate(b, ref.labels(t), ignore_gt=(), background="segment").vi < 0.05, t
    # and it is another segmentation than median's
    assert evaluate(ref.labels(0.48), median.labels(0.48), ignore_gt=(), background="segment").vi > 0.05


def test_cli_segment_on_an_existing_cluster(tmp_path, cluster_client, real_prediction):
    import zarr

    from napari_segneuron.cli import main
    from napari_segneuron.segmentation.blockwise import load_agglomeration

    path, _, _ = real_prediction
    out = tmp_path / "labels.zarr"
    address = cluster_client.scheduler.address
    assert main(["segment", path, "-o", str(out), "--block", "16,32,64", "--scheduler", address]) == 0
    labels = zarr.open_group(str(out), mode="r")["labels"]
    assert labels.chunks == (16, 32, 64)
    agg = load_agglomeration(str(tmp_path / "labels.fragments.zarr"))
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD

    np.testing.assert_array_equal(labels[...], agg.labels(DEFAULT_THRESHOLD))  # the CLI's default threshold
    # a bad scheduler spec is refused with a message, not a traceback
    assert main(["segment", path, "-o", str(tmp_path / "x.zarr"), "--block", "16,32,64", "--scheduler", "local:zero"]) == 2


@pytest.mark.parametrize("fast", [False, True])
def test_cli_segment_blockwise_into_a_tif_on_both_sides_of_the_fast_gather(tmp_path, cluster_client, real_prediction,
                                                                          monkeypatch, capsys, fast):
    """``segment pred.zarr -o labels.tif --block ... --scheduler ...`` gathers the labels from the
    zarr fragments in this process at the end: from ``FAST_GATHER_VOXELS`` voxels on through the
    fast path (on 250^3 it asked the zarr array for numpy's flags and crashed), below it numpy."""
    from napari_segneuron.cli import main
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD
    from napari_segneuron.segmentation import agglomeration as agg_mod
    from napari_segneuron.segmentation.blockwise import load_agglomeration

    monkeypatch.setattr(agg_mod, "FAST_GATHER_VOXELS", 1 if fast else 1 << 40)
    path, _, _ = real_prediction
    out = tmp_path / "labels.tif"
    address = cluster_client.scheduler.address
    assert main(["segment", path, "-o", str(out), "--block", "16,32,64", "--scheduler", address]) == 0
    agg = load_agglomeration(str(tmp_path / "labels.fragments.zarr"))
    labels = tifffile.imread(out)
    np.testing.assert_array_equal(labels, agg.labels(DEFAULT_THRESHOLD))
    n = agg.n_segments(DEFAULT_THRESHOLD)
    assert n == len(np.unique(labels[labels > 0])) and f": {n} segments" in capsys.readouterr().err
