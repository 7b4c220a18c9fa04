"""GUI tests of the SegNeuron dock (make_napari_viewer + qtbot, under Xvfb via pytest-xvfb)."""
from __future__ import annotations

import numpy as np
import pytest

from napari_segneuron._widgets.segment import SegNeuronWidget

WAIT_MS = 60_000
SMALL_TILE = (32, 112, 208)  # one tile in y/x for the 50x100x200 sample: fast on CPU


def wait_idle(qtbot, widget, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=timeout)


@pytest.fixture
def dock(make_napari_viewer, tiny_model_cpu):
    viewer = make_napari_viewer()
    widget = SegNeuronWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SegNeuron")
    widget.tile.set_value(SMALL_TILE)
    widget.overlap.set_value((8, 0, 0))
    return viewer, widget


def test_workflow_predict_segment_slider_export_evaluate(dock, qtbot, tiny_checkpoint, tmp_path, notifications, monkeypatch):
    viewer, w = dock
    viewer.open_sample("napari-segneuron", "fib25_both")
    image = viewer.layers["fib25 EM"]
    image.scale = (2.0, 1.0, 1.0)
    image.translate = (10.0, 5.0, -3.0)
    w.image_combo.set_value(image)

    # 1. load the tiny checkpoint through the widget (runs in the worker)
    w.weights_combo.setCurrentText("Checkpoint file…")
    assert w.path_row.isVisibleTo(w)
    w.weights_path.setText(str(tiny_checkpoint))
    w.device_combo.setCurrentText("cpu")
    w.load_weights()
    wait_idle(qtbot, w)
    assert w.model is not None, notifications
    assert "tiny" in w.model_label.text() and "parameters" in w.model_label.text()

    # 2. predict: outputs keep the image's scale and translate
    w.predict()
    assert w.runner.busy  # off the GUI thread
    wait_idle(qtbot, w)
    aff_layer = viewer.layers["fib25 EM affinities"]
    fg_layer = viewer.layers["fib25 EM foreground"]
    assert aff_layer.data.shape == (50, 100, 200, 3)
    assert fg_layer.data.shape == (50, 100, 200)
    for lay in (aff_layer, fg_layer):
        np.testing.assert_allclose(lay.scale, image.scale)
        np.testing.assert_allclose(lay.translate, image.translate)
    prov = fg_layer.metadata["segneuron"]
    assert prov["weights"]["sha256"] == w.model.info["sha256"]
    assert prov["plugin_version"]

    # 3. segment (random weights: keep every voxel foreground)
    w.fg_threshold.setValue(0.0)
    w.min_size.setValue(0)
    w.set_threshold(0.3)
    w.segment()
    wait_idle(qtbot, w)
    assert w.segmentation is not None, notifications
    labels = viewer.layers["fib25 EM segmentation"]
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    agg = w.segmentation.agglomeration
    np.testing.assert_array_equal(labels.data, agg.labels(0.3))
    before = labels.data.copy()

    # the slider updates the same layer live, to exactly what .labels(t) gives
    w.set_threshold(0.7)
    qtbot.waitUntil(lambda: len(w.slider_latency_ms) > 0, timeout=5000)
    assert viewer.layers["fib25 EM segmentation"] is labels
    np.testing.assert_array_equal(labels.data, agg.labels(0.7))
    assert not np.array_equal(labels.data, before)
    assert labels.metadata["segneuron"]["segment"]["threshold"] == pytest.approx(0.7)
    assert w.slider_latency_ms[-1] < 1000

    # copy as CLI command
    cmd = w.copy_cli_command()
    from qtpy.QtWidgets import QApplication

    assert QApplication.clipboard().text() == cmd
    assert cmd.startswith("napari-segneuron segment") and "--threshold 0.7" in cmd

    # 5. export to tif, read back with provenance; never overwrite without asking
    from napari_segneuron import io

    out = tmp_path / "seg.tif"
    w.labels_combo.set_value(labels)
    assert w.export(str(out))
    wait_idle(qtbot, w)
    back, _ = io.read_volume(out)
    np.testing.assert_array_equal(back, labels.data)
    assert io.read_metadata(out)["segneuron"]["weights"]["sha256"] == w.model.info["sha256"]
    asked = []
    monkeypatch.setattr(w, "ask_overwrite", lambda p: asked.append(p) or False)
    mtime = out.stat().st_mtime_ns
    assert not w.export(str(out))
    assert asked and out.stat().st_mtime_ns == mtime

    # zarr too, readable by the plugin's reader with scale/translate
    zout = tmp_path / "seg.zarr"
    assert w.export(str(zout))
    wait_idle(qtbot, w)
    layers = viewer.open(str(zout), plugin="napari-segneuron")
    np.testing.assert_array_equal(np.asarray(layers[0].data), labels.data)
    np.testing.assert_allclose(layers[0].scale, image.scale)

    # 6. evaluate against the ground-truth sample
    gt = viewer.layers["fib25 ground truth"]
    w.labels_combo.set_value(labels)
    w.gt_combo.set_value(gt)
    w.evaluate()
    wait_idle(qtbot, w)
    from napari_segneuron import segmentation

    expected = segmentation.evaluate(np.asarray(labels.data), np.asarray(gt.data))
    assert w.scores["vi_split"] == pytest.approx(expected.vi_split)
    assert w.scores["arand"] == pytest.approx(expected.arand)
    assert "ARAND" in w.eval_label.text()

    # re-running predict invalidates the agglomeration (the slider is disabled)
    w.predict()
    wait_idle(qtbot, w)
    assert w.segmentation is None and not w.slider.isEnabled()
    assert not [n for n in notifications if n[0] == "error"], notifications
