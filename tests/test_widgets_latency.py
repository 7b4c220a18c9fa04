"""Slider latency in the viewer: moving the merge slider relabels via Agglomeration.labels(t).

CI runs a 32x192x192 volume with a generous bound (shared runners); the issue's target
size is measured with ``SEGNEURON_LATENCY_FULL=1`` (100x512x512, target <= 100 ms/update):
    SEGNEURON_LATENCY_FULL=1 pytest tests/test_widgets_latency.py -s
"""
from __future__ import annotations

import os
import time

import numpy as np

from napari_segneuron._widgets.segment import SegNeuronWidget

FULL = os.environ.get("SEGNEURON_LATENCY_FULL") == "1"
SHAPE = (100, 512, 512) if FULL else (32, 192, 192)


def synthetic_affinities(shape, cell=16, seed=0):
    """Voronoi 'neurons' (one seed per ~cell^3 voxels) with noisy affinities."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    f = 4
    small = tuple(s // f for s in shape)
    seeds = np.zeros(small, bool)
    n = max(8, int(np.prod(shape) / cell**3))
    seeds[tuple(rng.integers(0, s, n) for s in small)] = True
    ids = np.cumsum(seeds.ravel()).reshape(small) * seeds
    _, idx = ndimage.distance_transform_edt(~seeds, return_indices=True)
    lab = ids[tuple(idx)]
    lab = lab.repeat(f, 0).repeat(f, 1).repeat(f, 2)
    # blocky (8^3) noise: fragments of realistic size, merge scores spread over [0.05, 0.65]
    b = 8
    coarse = tuple(-(-s // b) for s in shape)
    crop = tuple(slice(0, s) for s in shape)

    def blocky(lo, hi):
        n = rng.uniform(lo, hi, coarse).astype(np.float32)
        return n.repeat(b, 0).repeat(b, 1).repeat(b, 2)[crop]

    aff = np.empty((3,) + shape, np.float32)
    for c in range(3):
        same = np.ones(shape, bool)
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[c] = slice(1, None)
        sl_b[c] = slice(None, -1)
        same[tuple(sl_a)] = lab[tuple(sl_a)] == lab[tuple(sl_b)]
        aff[c] = np.where(same, blocky(0.7, 0.95), blocky(0.05, 0.65))
    return aff


def test_slider_latency_in_viewer(make_napari_viewer, qtbot):
    from napari_segneuron import segmentation

    viewer = make_napari_viewer()
    w = SegNeuronWidget(viewer)
    viewer.window.add_dock_widget(w, name="SegNeuron")
    aff = synthetic_affinities(SHAPE)
    t0 = time.perf_counter()
    agg = segmentation.agglomerate(aff, None, worker=False)
    t_agg = time.perf_counter() - t0
    del aff
    viewer.add_image(np.zeros(SHAPE, np.uint8), name="em", scale=(2.0, 1.0, 1.0))
    w._install_segmentation(agg, agg.labels(0.5), "em segmentation", {"segment": {"threshold": 0.5}},
                            (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), False)
    layer = viewer.layers["em segmentation"]
    w.slider_latency_ms.clear()
    ends = []
    values = [0.1, 0.3, 0.45, 0.55, 0.7, 0.9, 0.6, 0.4, 0.2, 0.5]
    for v in values:
        t0 = time.perf_counter()
        w.set_threshold(v)
        qtbot.waitUntil(lambda n=len(ends) + 1: len(w.slider_latency_ms) >= n, timeout=30_000)
        # let the canvas redraw too: the user sees the new labels after this
        viewer.window._qt_viewer.canvas.native.update()
        qtbot.wait(1)
        ends.append((time.perf_counter() - t0) * 1000)
    np.testing.assert_array_equal(layer.data, agg.labels(0.5))
    med = float(np.median(w.slider_latency_ms))
    print(f"\nslider latency on {SHAPE} ({agg.n_fragments} fragments, agglomeration {t_agg:.1f} s): "
          f"labels(t) + layer update median {med:.0f} ms, max {max(w.slider_latency_ms):.0f} ms; "
          f"slider move to redraw median {np.median(ends):.0f} ms")
    assert med < (1000 if not FULL else 2000)


def test_slider_keeps_ids_and_colours_of_segments_it_does_not_merge(make_napari_viewer, qtbot):
    """napari colours labels by id: moving the slider up and back, a merge keeps one of its two
    ids, every other segment keeps its id and colour, and coming back restores every id."""
    from napari_segneuron import segmentation

    viewer = make_napari_viewer()
    w = SegNeuronWidget(viewer)
    viewer.window.add_dock_widget(w, name="SegNeuron")
    shape = (16, 96, 96)
    # waterz's fragments: this synthetic map has a few merges from 0.3 to 0.4 (36 -> 32 segments)
    agg = segmentation.agglomerate(synthetic_affinities(shape), None, min_size=0, fragments="waterz",
                                   scoring="median", worker=False)
    viewer.add_image(np.zeros(shape, np.uint8), name="em")
    w._install_segmentation(agg, agg.labels(0.3), "em segmentation", {"segment": {"threshold": 0.3}},
                            (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), False)
    layer = viewer.layers["em segmentation"]
    low = np.asarray(layer.data).copy()
    colours = {int(i): np.asarray(layer.get_color(int(i))) for i in np.unique(low[low > 0])}

    def move(t):
        n = len(w.slider_latency_ms)
        w.set_threshold(t)
        qtbot.waitUntil(lambda: len(w.slider_latency_ms) > n, timeout=30_000)
        return np.asarray(layer.data).copy()

    high = move(0.4)
    assert agg.n_merges(0.4) > agg.n_merges(0.3)
    kept = 0
    for i in colours:
        piece = low == i
        ids = np.unique(high[piece])
        assert len(ids) == 1 and int(ids[0]) in colours  # merged into a segment that has a lower id
        if (high == ids[0]).sum() == piece.sum():  # merged with nothing: same id, same colour
            assert ids[0] == i
            np.testing.assert_array_equal(np.asarray(layer.get_color(i)), colours[i])
            kept += 1
    assert 0 < kept < len(colours)
    np.testing.assert_array_equal(move(0.3), low)  # back down: every id restored
