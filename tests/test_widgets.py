"""GUI tests of the SegNeuron dock (make_napari_viewer + qtbot, under Xvfb via pytest-xvfb)."""
from __future__ import annotations

import numpy as np
import pytest

from napari_segneuron._widgets.segment import SegNeuronWidget

WAIT_MS = 180_000
CROP = (slice(0, 16), slice(0, 64), slice(0, 96))  # a corner of the sample: fast on 2 CPU cores
SMALL_TILE = (16, 64, 96)  # one tile covers the crop


def add_sample_crop(viewer):
    """Open the sample (EM + ground truth) and add a small crop of both, with a non-trivial geometry."""
    viewer.open_sample("napari-segneuron", "fib25_both")
    raw = viewer.layers["fib25 EM"].data
    gt = viewer.layers["fib25 ground truth"].data
    image = viewer.add_image(raw[CROP], name="crop EM", scale=(2.0, 1.0, 1.0), translate=(10.0, 5.0, -3.0))
    truth = viewer.add_labels(gt[CROP], name="crop ground truth", scale=(2.0, 1.0, 1.0), translate=(10.0, 5.0, -3.0))
    return image, truth


def wait_idle(qtbot, widget, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=timeout)


@pytest.fixture
def dock(make_napari_viewer, tiny_model_cpu):
    viewer = make_napari_viewer()
    widget = SegNeuronWidget(viewer)
    viewer.window.add_dock_widget(widget, name="SegNeuron")
    widget.tile.set_value(SMALL_TILE)
    widget.overlap.set_value((0, 0, 0))
    return viewer, widget


def test_workflow_predict_segment_slider_export_evaluate(dock, qtbot, tiny_checkpoint, tmp_path, notifications, monkeypatch):
    viewer, w = dock
    image, truth = add_sample_crop(viewer)
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

    # 2. predict (with the default test-time augmentation, the "min of 4 flips", which the CLI
    # shares): outputs keep the image's scale and translate
    from napari_segneuron._widgets.segment import DEFAULT_TTA as DOCK_TTA
    from napari_segneuron.inference import DEFAULT_TTA

    assert w.tta.currentData() == DOCK_TTA == DEFAULT_TTA == "min"
    w.predict()
    assert w.runner.busy  # off the GUI thread
    wait_idle(qtbot, w)
    aff_layer = viewer.layers["crop EM affinities"]
    fg_layer = viewer.layers["crop EM foreground"]
    assert aff_layer.data.shape == (16, 64, 96, 3)
    assert fg_layer.data.shape == (16, 64, 96)
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
    labels = viewer.layers["crop EM segmentation"]
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    agg = w.segmentation.agglomeration
    np.testing.assert_array_equal(labels.data, agg.labels(0.3))
    before = labels.data.copy()

    # the slider updates the same layer live, to exactly what .labels(t) gives
    w.set_threshold(0.7)
    qtbot.waitUntil(lambda: len(w.slider_latency_ms) > 0, timeout=5000)
    assert viewer.layers["crop EM segmentation"] is labels
    np.testing.assert_array_equal(labels.data, agg.labels(0.7))
    assert not np.array_equal(labels.data, before)
    assert labels.metadata["segneuron"]["segment"]["threshold"] == pytest.approx(0.7)
    assert w.slider_latency_ms[-1] < 1000

    # copy as CLI command
    cmd = w.copy_cli_command()
    from qtpy.QtWidgets import QApplication

    assert QApplication.clipboard().text() == cmd
    assert cmd.startswith("napari-segneuron segment") and "--threshold 0.7" in cmd
    import shlex

    from napari_segneuron.cli import build_parser

    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert args.threshold == pytest.approx(0.7) and args.fg_threshold == 0.0
    assert "--tta min" in cmd and args.tta == "min"
    assert tuple(args.tile) == SMALL_TILE

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
    gt = truth
    w.labels_combo.set_value(labels)
    w.gt_combo.set_value(gt)
    w.evaluate()
    wait_idle(qtbot, w)
    from napari_segneuron import segmentation

    expected = segmentation.evaluate(np.asarray(labels.data), np.asarray(gt.data))
    assert w.scores["vi_split"] == pytest.approx(expected.vi_split)
    assert w.scores["arand"] == pytest.approx(expected.arand)
    assert "ARAND" in w.eval_label.text() and "section by section" not in w.eval_label.text()
    # ground truth labelled section by section (2D ids) is scored per section, pieces against pieces
    from napari_segneuron.metrics import evaluate_sections, section_pieces

    gt2d = viewer.add_labels(section_pieces(np.asarray(gt.data)), name="truth 2D")
    w.gt_combo.set_value(gt2d)
    w._scroll.setFixedHeight(250)  # a short dock: the scores (at its bottom) must be scrolled into view
    w.evaluate()
    wait_idle(qtbot, w)
    from qtpy.QtCore import QPoint

    top = w.eval_label.mapTo(w._scroll.viewport(), QPoint(0, 0)).y()
    qtbot.waitUntil(lambda: 0 <= w.eval_label.mapTo(w._scroll.viewport(), QPoint(0, 0)).y()
                    < w._scroll.viewport().height(), timeout=2000)
    assert w._scroll.verticalScrollBar().value() > 0, top
    expected = evaluate_sections(np.asarray(labels.data), gt2d.data, rule="segments")
    pieces = evaluate_sections(np.asarray(labels.data), gt2d.data, rule="pieces")
    assert w.scores["vi_merge"] == pytest.approx(expected.vi_merge)
    assert "section by section" in w.eval_label.text() and f"VI {pieces.vi:.3f}" in w.eval_label.text()

    # re-running predict invalidates the agglomeration (the slider is disabled)
    w.predict()
    wait_idle(qtbot, w)
    assert w.segmentation is None and not w.slider.isEnabled()
    assert not [n for n in notifications if n[0] == "error"], notifications


def errors(notes):
    return [m for level, m in notes if level == "error"]


def test_bad_inputs_become_notifications(dock, qtbot, notifications, tiny_model_cpu):
    viewer, w = dock
    # no image layer
    w.set_model(tiny_model_cpu)
    w.predict()
    assert "no image layer" in errors(notifications)[-1].lower()
    # no weights loaded
    w.model = None
    viewer.add_image(np.zeros((4, 32, 32), np.uint8), name="em")
    w.predict()
    assert "no model" in errors(notifications)[-1].lower()
    w.preview()
    assert "no model" in errors(notifications)[-1].lower()
    w.set_model(tiny_model_cpu)
    # RGB image
    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
    w.image_combo.set_value(rgb)
    w.predict()
    assert "rgb" in errors(notifications)[-1].lower()
    # 4D image
    four = viewer.add_image(np.zeros((2, 3, 32, 32), np.uint8), name="timeseries")
    w.image_combo.set_value(four)
    w.predict()
    assert "dimensions" in errors(notifications)[-1].lower()
    # segment before predict
    w.segment()
    assert "predict" in errors(notifications)[-1].lower()
    # labels of another shape
    a = viewer.add_labels(np.zeros((4, 32, 32), np.uint32), name="a")
    b = viewer.add_labels(np.zeros((4, 16, 16), np.uint32), name="b")
    w.labels_combo.set_value(a)
    w.gt_combo.set_value(b)
    w.evaluate()
    assert "different shapes" in errors(notifications)[-1]
    # export to an unknown format, copy CLI without a SegNeuron layer
    assert not w.export("/tmp/x.png", layer=a)
    assert ".tif or .zarr" in errors(notifications)[-1]
    assert w.copy_cli_command() is None
    # a missing checkpoint file
    w.weights_combo.setCurrentText("Checkpoint file…")
    w.weights_path.setText("/nonexistent/weights.pt")
    w.load_weights()
    wait_idle(qtbot, w)
    assert "not found" in errors(notifications)[-1].lower()
    assert w.model is tiny_model_cpu  # the loaded model is kept


def test_offline_download_and_cancel(dock, qtbot, notifications, monkeypatch, tiny_model_cpu, tmp_path):
    viewer, w = dock
    import socket
    import threading

    from napari_segneuron._model import registry

    with socket.socket() as s:  # a hub address where nobody listens: the real download code fails
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path / "cache"))
    w.weights_combo.setCurrentText("segneuron")
    w.load_weights()
    wait_idle(qtbot, w)
    assert "offline" in errors(notifications)[-1] and str(tmp_path / "cache") in errors(notifications)[-1]

    # a cancelled run: a warning, nothing changed
    release = threading.Event()

    def slow(name, progress=None, cancel=None):
        for i in range(200):
            progress(i, 200, "downloading")
            cancel.raise_if_cancelled()
            release.wait(0.02)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(registry, "fetch_weights", slow)
    w.set_model(tiny_model_cpu)
    w.load_weights()
    qtbot.waitUntil(lambda: w.progress_bar.maximum() == 200, timeout=5000)
    assert w.cancel_button.isEnabled()
    # napari's activity dock shows a progress bar with the real total
    assert w.runner._pbar is not None and w.runner._pbar.total == 200
    w.cancel_button.click()
    wait_idle(qtbot, w)
    assert any(level == "warning" and "cancelled" in m for level, m in notifications)
    assert w.model is tiny_model_cpu
    assert not w.cancel_button.isEnabled()


def test_preview_region_in_view(dock, qtbot, notifications, tiny_model_cpu):
    viewer, w = dock
    w.agglomerate_in_worker = False
    w.set_model(tiny_model_cpu)
    image = viewer.add_image(
        np.random.default_rng(0).integers(0, 255, (40, 128, 160), dtype=np.uint8), name="em",
        scale=(3.0, 2.0, 2.0), translate=(1.0, 2.0, 3.0),
    )
    w.image_combo.set_value(image)
    viewer.dims.set_point(0, 1.0 + 3.0 * 20)  # world z of slice 20
    w.preview_depth.setValue(4)
    w.preview_size.setValue(64)
    w.fg_threshold.setValue(0.0)
    region = w.preview_region(image, (40, 128, 160))
    assert region[0] == slice(16, 25)
    assert region[1].stop - region[1].start <= 64 and region[2].stop - region[2].start <= 64
    w.preview()
    wait_idle(qtbot, w)
    prev = viewer.layers["em preview"]
    assert prev.data.shape == tuple(s.stop - s.start for s in region)
    np.testing.assert_allclose(prev.scale, image.scale)
    expected = [t + s * r.start for t, s, r in zip(image.translate, image.scale, region)]
    np.testing.assert_allclose(prev.translate, expected)
    assert prev.metadata["segneuron"]["region"]["start"][0] == 16
    # the slider drives the preview
    w.set_threshold(0.9)
    qtbot.waitUntil(lambda: len(w.slider_latency_ms) > 0, timeout=5000)
    np.testing.assert_array_equal(prev.data, w.segmentation.agglomeration.labels(0.9))
    # a preview is scored against the same region of a full-size ground truth
    gt = viewer.add_labels(np.arange(40 * 128 * 160, dtype=np.uint32).reshape(40, 128, 160) // 500, name="gt")
    w.labels_combo.set_value(prev)
    w.gt_combo.set_value(gt)
    w.evaluate()
    wait_idle(qtbot, w)
    assert 0 <= w.scores["arand"] <= 1
    # painting protects the layer: the slider then writes to a new layer
    prev.paint((0, 0, 0), 12345, refresh=True)
    painted = prev.data.copy()
    assert any("edited" in m for lvl, m in notifications if lvl == "info"), notifications
    w.set_threshold(0.5)
    qtbot.waitUntil(lambda: len(w.slider_latency_ms) > 1, timeout=5000)
    np.testing.assert_array_equal(prev.data, painted)
    assert w.segmentation.layer is not prev and w.segmentation.layer.name.startswith("em preview t=0.50")
    # a rectangle drawn by the user sets the y/x box
    shapes = viewer.add_shapes([[[20, 10], [20, 50], [40, 50], [40, 10]]], shape_type="rectangle", name="box",
                               scale=(2.0, 2.0), translate=(2.0, 3.0))
    viewer.layers.selection.active = shapes
    region = w.preview_region(image, (40, 128, 160))
    assert (region[1].start, region[2].start) == (20, 10)
    assert not errors(notifications), notifications


def test_2d_image_is_one_slice(dock, qtbot, notifications, tiny_model_cpu):
    viewer, w = dock
    w.agglomerate_in_worker = False
    w.set_model(tiny_model_cpu)
    w.tile.set_value((1, 64, 64))
    image = viewer.add_image(np.random.default_rng(1).random((64, 64), dtype=np.float32), name="slice",
                             scale=(4.0, 4.0))
    w.image_combo.set_value(image)
    w.predict()
    wait_idle(qtbot, w)
    fg = viewer.layers["slice foreground"]
    assert fg.data.shape == (64, 64)
    np.testing.assert_allclose(fg.scale, (4.0, 4.0))
    w.fg_threshold.setValue(0.0)
    w.segment()
    wait_idle(qtbot, w)
    assert viewer.layers["slice segmentation"].data.shape == (64, 64)
    assert not errors(notifications), notifications
