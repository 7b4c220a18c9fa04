"""The Proofread step of the SegNeuron dock on a tiny-weights prediction of the sample corner:
merge, split, undo and mark-as-done through the click handler, kept under the global slider,
written in the layer's provenance and beside the exported labels."""
from __future__ import annotations

import json

import numpy as np
import pytest

WAIT_MS = 180_000


def wait_idle(qtbot, w, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=timeout)


@pytest.fixture
def segmented(make_napari_viewer, tiny_model_cpu, qtbot, sample_raw):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    w.set_model(tiny_model_cpu)
    w.tile.set_value((16, 64, 96))
    w.overlap.set_value((0, 0, 0))
    w.tta.setCurrentIndex(w.tta.findData(False))
    viewer.add_image(np.ascontiguousarray(sample_raw[:16, :64, :96]), name="em")
    w.predict()
    wait_idle(qtbot, w)
    w.fg_threshold.setValue(0.0)
    w.min_size.setValue(0)
    w.set_threshold(0.3)
    w.segment()
    wait_idle(qtbot, w)
    assert w.segmentation is not None
    return viewer, w


def _touching(lab):
    a, b = lab[:, :, :-1], lab[:, :, 1:]
    m = (a != b) & (a > 0) & (b > 0)
    i = np.argwhere(m)[0]
    return tuple(int(c) for c in i), (int(i[0]), int(i[1]), int(i[2]) + 1)


def test_merge_split_undo_done_and_slider(segmented, qtbot, tmp_path):
    viewer, w = segmented
    step = w.proofread_step
    layer = w.segmentation.layer
    assert "Ctrl+click" in step.help_label.text()
    before = np.array(layer.data)
    p, q = _touching(before)
    a, b = int(before[p]), int(before[q])
    step.click(p, "merge")
    step.click(q, "merge")
    assert layer.data[q] == a and (np.asarray(layer.data) == b).sum() == 0
    assert "1 edit" in step.count_label.text()
    assert layer.metadata["segneuron"]["proofreading"]["edits"][0]["op"] == "merge"
    # split the merged segment again at the two voxels
    step.click(p, "split")
    step.click(q, "split")
    assert layer.data[p] != layer.data[q]
    # Ctrl+Z with the segmentation selected undoes the edit (not napari's paint undo)
    viewer.layers.selection.active = layer
    keys = viewer.window._qt_viewer._key_map_handler

    def press(combo: str) -> None:
        keys.press_key(combo)
        keys.release_key(combo)

    press("Control-Z")
    assert layer.data[p] == layer.data[q]
    step.undo()
    assert np.array_equal(np.asarray(layer.data), before)
    press("Control-Shift-Z")
    assert layer.data[p] == layer.data[q] == a
    # mark the merged segment done: a global threshold change leaves it (and the merge) alone
    step.click(p, "merge")  # selects it (a lone pick merges nothing)
    step._merge_pick = []
    step.mark_done()
    done = np.asarray(layer.data) == a
    for t in (0.05, 0.8):
        w.set_threshold(t)
        qtbot.waitUntil(lambda: w.segmentation.provenance["segment"]["threshold"] == t, timeout=10_000)
        assert np.array_equal(np.asarray(w.segmentation.layer.data) == a, done)
    assert max(step.edit_ms) < 1000
    # the edit log goes beside the exported labels
    out = tmp_path / "seg.tif"
    w.export(str(out), w.segmentation.layer)
    wait_idle(qtbot, w)
    log = json.loads((tmp_path / "seg.tif.edits.json").read_text())
    assert [e["op"] for e in log["edits"]] == ["merge", "lock"]


def test_selected_segment_threshold_slider(segmented, qtbot):
    _, w = segmented
    w.set_threshold(0.6)  # the tiny model's merges start at 0.36
    qtbot.waitUntil(lambda: w.segmentation.provenance["segment"]["threshold"] == 0.6, timeout=10_000)
    step = w.proofread_step
    layer = w.segmentation.layer
    step.attach()
    assert step.proofreader.threshold == 0.6
    before = np.array(layer.data)
    low = w.segmentation.agglomeration.labels(0.6 * 0.85)
    ids, counts = np.unique(before[before > 0], return_counts=True)
    seg = next(int(i) for i in ids[np.argsort(-counts)] if len(np.unique(low[before == i])) > 1)
    step.click(tuple(int(c) for c in np.argwhere(before == seg)[0]), "merge")  # selects it
    step._merge_pick = []
    step.segment_slider.setValue(85)
    step.apply_segment_threshold()
    after = np.asarray(layer.data)
    inside = before == seg
    assert len(np.unique(after[inside])) > 1 and seg in np.unique(after[inside])
    assert np.array_equal(after[~inside], before[~inside])
    assert w.segmentation.layer.metadata["segneuron"]["proofreading"]["edits"][-1]["op"] == "segment_threshold"
    step.segment_slider.setValue(100)  # back to the global threshold: the segment is whole again, one edit
    step.apply_segment_threshold()
    assert np.array_equal(np.asarray(layer.data), before) and len(step.proofreader.edits) == 1
    step.undo()
    assert np.array_equal(np.asarray(layer.data), before) and not step.proofreader.edits
