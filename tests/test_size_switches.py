"""Both sides of the size switches in the segmentation path (issue 33: a fast path that only
large volumes reach crashed on zarr fragments). Each switch's constant is lowered or raised
here so that a small input takes either side, and both sides must agree.

Covered elsewhere: ``agglomeration.FAST_GATHER_VOXELS`` / ``GATHER_SLAB_VOXELS``
(test_segmentation, test_distributed), ``membranes._SLAB_VOXELS`` (test_membranes),
``fragments.N_BUCKETS`` (test_segmentation), ``_widgets._large.LARGE_VOXELS``
(test_widgets_large), the waterz memory estimate and /dev/shm fallback (test_segmentation).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]


def _reference_pairs(s: np.ndarray, g: np.ndarray, w=None):
    pairs, inv = np.unique(np.stack([s, g], axis=1), axis=0, return_inverse=True)
    counts = np.bincount(inv.reshape(-1), weights=w)
    return pairs[:, 0], pairs[:, 1], np.rint(counts).astype(np.int64)


@pytest.mark.parametrize("dense", [True, False])
def test_pair_counts_dense_and_hashed_tables_agree(monkeypatch: pytest.MonkeyPatch, dense: bool) -> None:
    from napari_segneuron import metrics

    rng = np.random.default_rng(0)
    # root-fragment ids (large, not consecutive) against a truth with many ids
    s = rng.choice(np.arange(1, 2**31, 7919, dtype=np.int64), 20_000).astype(np.uint32)
    g = rng.integers(0, 3_000, 20_000).astype(np.uint32)
    w = rng.integers(1, 5, 20_000).astype(np.float64)
    su, gu = len(np.unique(s)), len(np.unique(g))
    monkeypatch.setattr(metrics, "DENSE_PAIR_TABLE", su * gu if dense else 1)
    assert (su * gu <= max(4 * s.size, metrics.DENSE_PAIR_TABLE)) == dense
    for weights in (None, w):
        got = metrics.pair_counts(s, g, weights)
        ref = _reference_pairs(s, g, weights)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)


def test_distance_fragments_with_a_sampled_inside_quantile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weak affinities (never above the boundary threshold): the inside level is a quantile,
    taken over every voxel of a small volume and over a strided sample of a large one."""
    from napari_segneuron.segmentation import affinities_from_boundaries
    from napari_segneuron.segmentation import fragments as F

    data = ROOT / ".." / "shared" / "data"
    if not data.exists():
        data = Path("/work/shared/data")
    b = 255 - tifffile.imread(data / "snemi_mini_boundary_probability.tif")
    aff = 0.9 * affinities_from_boundaries(b)  # never reaches 0.995
    whole = F.distance_fragments(aff)
    monkeypatch.setattr(F, "QUANTILE_SAMPLE_VOXELS", aff[0].size // 7)  # every 7th voxel
    sampled = F.distance_fragments(aff)
    assert whole.max() > 50
    assert abs(int(sampled.max()) - int(whole.max())) <= 0.05 * int(whole.max())
    assert (sampled == whole).mean() > 0.95  # identical here (2072 fragments both ways)


def test_preview_tiling_and_process_on_both_sides_of_their_sizes(make_napari_viewer, qtbot, tiny_model_cpu,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A preview region up to ``PREVIEW_ONE_TILE_VOXELS`` is one tile without overlap (larger:
    the advanced tiling), and up to ``PREVIEW_IN_PROCESS_VOXELS`` it is agglomerated in this
    process (larger: the worker process the dock uses)."""
    from napari_segneuron._widgets import segment as dock_module
    from napari_segneuron._widgets.segment import SegNeuronWidget

    viewer = make_napari_viewer()
    w = SegNeuronWidget(viewer)
    viewer.window.add_dock_widget(w, name="SegNeuron")
    w.set_model(tiny_model_cpu)
    region = (slice(0, 9), slice(10, 70), slice(0, 50))
    one = w._preview_settings(region)
    assert one["tile"] == [9, 64, 64] and one["overlap"] == [0, 0, 0]
    advanced = w._predict_settings()
    monkeypatch.setattr(dock_module, "PREVIEW_ONE_TILE_VOXELS", 9 * 64 * 64 - 1)
    tiled = w._preview_settings(region)
    assert tiled["tile"] == advanced["tile"] and tiled["overlap"] == advanced["overlap"]

    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (20, 64, 64), dtype=np.uint8), name="em")
    w.image_combo.set_value(image)
    seen = []

    def fake(predictor, volume, voxel, settings, progress, cancel, worker=None):
        seen.append(worker)
        raise RuntimeError("stop here")

    monkeypatch.setattr(w, "_predict_and_segment", fake)
    for limit, expected in ((dock_module.PREVIEW_IN_PROCESS_VOXELS, False), (0, None)):
        monkeypatch.setattr(dock_module, "PREVIEW_IN_PROCESS_VOXELS", limit)
        w.preview()
        qtbot.waitUntil(lambda: not w.runner.busy, timeout=60_000)
        assert seen[-1] is expected  # False: in this process; None: the dock's worker setting
    assert len(seen) == 2
