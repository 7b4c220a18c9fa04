"""The docks as a user meets them: added through the plugin manifest (Plugins menu), so each
dock gets its own proxy of the viewer, with the sample data opened from File > Open Sample."""
from __future__ import annotations

import shlex
import time

import numpy as np
import pytest

from napari_segneuron._widgets.segment import CHECKPOINT_ITEM
from napari_segneuron._widgets.train import START_FRESH, START_LOADED, find_segneuron_dock

CROP = (slice(0, 16), slice(0, 64), slice(0, 96))
WAIT_MS = 180_000


def wait_idle(qtbot, widget, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=timeout)


def errors(notes):
    return [m for level, m in notes if level == "error"]


@pytest.fixture
def plugin_docks(make_napari_viewer):
    """Both docks through the manifest, as Plugins > SegNeuron / SegNeuron training does."""
    viewer = make_napari_viewer(show=True)
    _, seg = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    _, train = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron training", tabify=True)
    return viewer, seg, train


# -- training dock ------------------------------------------------------------------------
def test_training_dock_finds_the_model_loaded_in_the_segneuron_dock(plugin_docks, qtbot, tmp_path, notifications,
                                                                    tiny_checkpoint, small_training_setup):
    viewer, seg, train = plugin_docks
    # napari hands each plugin dock its own proxy: an identity test on the viewer fails
    assert train.viewer is not seg.viewer
    assert find_segneuron_dock(train.viewer) is seg
    # load weights the way a user does: Weights > Checkpoint file..., Load model
    seg.weights_combo.setCurrentText(CHECKPOINT_ITEM)
    seg.weights_path.setText(str(tiny_checkpoint))
    seg.device_combo.setCurrentText("cpu")
    seg.load_weights()
    wait_idle(qtbot, seg)
    loaded = seg.model
    assert loaded is not None and find_segneuron_dock(train.viewer).model is loaded

    small_training_setup(viewer, train)
    train.set_start_choice(START_LOADED)
    train.settings.iterations.value = 2
    ckpt = tmp_path / "mine.pt"
    train.settings.save_to.value = str(ckpt)
    train.train()
    wait_idle(qtbot, train)
    assert not errors(notifications), notifications  # no "No model is loaded"
    assert train.last_result.iterations == 2 and ckpt.exists()
    # the new weights replace the loaded model, and the SegNeuron dock says so
    assert seg.model is not loaded and seg.model.info["path"] == str(ckpt)
    assert seg.weights_combo.currentText() == CHECKPOINT_ITEM and seg.weights_path.text() == str(ckpt)
    assert seg.path_row.isVisibleTo(seg)
    assert "mine" in seg.model_label.text() and str(ckpt) in seg.status_label.text()
    told = [m for lvl, m in notifications if lvl == "info" and str(ckpt) in m]
    assert told and "SegNeuron dock now uses" in told[-1], notifications
    assert str(ckpt) in train.status_label.text()


def test_fresh_weights_build_the_compact_default_architecture(plugin_docks, qtbot, tmp_path, notifications,
                                                              small_training_setup):
    from napari_segneuron._model import fetch_weights, load_model

    viewer, seg, train = plugin_docks
    small_training_setup(viewer, train)
    train.set_start_choice(START_FRESH)
    train.settings.iterations.value = 1
    train.settings.save_to.value = str(tmp_path / "fresh.pt")
    train.train()
    wait_idle(qtbot, train)
    assert not errors(notifications), notifications
    default = load_model(fetch_weights("default"), device="cpu")
    trained = train.last_result.model
    assert tuple(trained.kn) == tuple(default.kn)
    n = sum(p.numel() for p in trained.parameters())
    assert n == sum(p.numel() for p in default.parameters()) and n < 4_000_000  # not the 10 M-parameter MNet
    assert tuple(seg.model.kn) == tuple(default.kn)


def test_cancel_stops_within_an_iteration_and_the_bar_says_cancelled(plugin_docks, qtbot, tmp_path, notifications,
                                                                     tiny_model_cpu, small_training_setup):
    viewer, seg, train = plugin_docks
    seg.set_model(tiny_model_cpu)
    small_training_setup(viewer, train)
    train.settings.crop.value = (16, 64, 96)  # iterations of ~0.5-2 s on 2 cores
    train.settings.batch_size.value = 2
    train.settings.iterations.value = 100_000
    ckpt = tmp_path / "long.pt"
    train.settings.save_to.value = str(ckpt)
    stamps = []
    train.loss_plot.add = (lambda add: lambda it, lv: (stamps.append(time.perf_counter()), add(it, lv)))(
        train.loss_plot.add)
    train._loss_bridge.loss.disconnect()
    train._loss_bridge.loss.connect(train.loss_plot.add)
    train.train()
    qtbot.waitUntil(lambda: len(stamps) >= 4, timeout=60_000)
    iteration_s = float(np.median(np.diff(stamps)))
    # cancel in the middle of an iteration
    time.sleep(iteration_s / 2)
    t0 = time.perf_counter()
    train.cancel_button.click()
    wait_idle(qtbot, train)
    latency = time.perf_counter() - t0
    assert latency < 0.5 * iteration_s + 0.2, (latency, iteration_s)
    assert train.last_result.cancelled and ckpt.exists()
    assert "cancelled" in train.progress_bar.text() and "100%" not in train.progress_bar.text()
    assert "cancelled" in train.status_label.text()
    assert seg.model.info["path"] == str(ckpt)
    # the returned model carries no cancel hooks (it predicts normally afterwards)
    net = train.last_result.model
    assert not any(m._forward_pre_hooks for m in net.modules())


def test_cancel_inside_a_forward_pass_stops_that_pass(tmp_path):
    """The core behind the dock's Cancel: a token set during a forward pass stops it there."""
    import torch

    from napari_segneuron.samples import load_labels, load_raw
    from napari_segneuron.cancel import CancelToken
    from napari_segneuron.training.finetune import build_mnet, finetune
    from napari_segneuron.training.loop import TrainingCancelled

    net = build_mnet((4, 8, 12, 16, 20))
    token = CancelToken()
    calls = {"n": 0, "after": 0}
    modules = list(net.modules())

    def count(_m, _inp):
        calls["n"] += 1
        if token.cancelled:
            calls["after"] += 1
        if calls["n"] == len(modules) + 5:  # a few modules into the second forward pass
            token.cancel()

    handles = [m.register_forward_pre_hook(count) for m in modules]
    try:
        with pytest.raises(TrainingCancelled) as info:
            finetune(net, load_raw()[CROP], load_labels()[CROP], iterations=50, batch_size=1, crop=(8, 32, 32),
                     checkpoint=tmp_path / "c.pt", cancel=token, device="cpu")
    finally:
        for h in handles:
            h.remove()
    result = info.value.result
    assert result.iterations == 1  # the second step never finished
    assert calls["after"] <= 1  # no module ran after the one that saw the cancel
    assert (tmp_path / "c.pt").exists()
    assert not any(m._forward_pre_hooks for m in net.modules())
    assert not any(getattr(p, "_backward_hooks", None) for p in net.parameters())  # gradient hooks removed too
    with torch.no_grad():
        net.eval()(torch.zeros(1, 1, 4, 32, 32))  # predicts after a cancelled run


# -- SegNeuron dock -----------------------------------------------------------------------
def test_partly_nan_constant_and_noise_images_are_warned_about(plugin_docks, qtbot, notifications, tiny_model_cpu):
    viewer, seg, _ = plugin_docks
    seg.agglomerate_in_worker = False
    seg.set_model(tiny_model_cpu)
    seg.tile.set_value((8, 64, 64))
    seg.overlap.set_value((0, 0, 0))
    from napari_segneuron.samples import load_raw

    em = load_raw()[:8, :64, :64].astype(np.float32)
    nan = em.copy()
    nan[:, :10, :10] = np.nan
    layer = viewer.add_image(nan, name="partly nan")
    seg.image_combo.set_value(layer)
    seg.predict()
    wait_idle(qtbot, seg)
    warned = [m for lvl, m in notifications if lvl == "warning" and "NaN" in m]
    assert warned and "800" in warned[-1] and "darkest" in warned[-1], notifications
    assert seg.image_note.isVisibleTo(seg) and "NaN" in seg.image_note.text()
    assert np.isfinite(seg.prediction.affinities).all()
    # same prediction as with the NaNs filled by hand with the darkest value
    from napari_segneuron.inference import Predictor

    filled = np.where(np.isnan(nan), np.nanmin(nan), nan)
    ref, _ = Predictor(tiny_model_cpu, tile=(8, 64, 64), overlap=(0, 0, 0), device="cpu",
                       tta=seg.tta.currentData()).predict(filled)
    np.testing.assert_allclose(seg.prediction.affinities, ref, atol=1e-5)

    for data, name, word in ((np.full((8, 64, 64), 7, np.uint8), "flat", "constant"),
                             (np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8), "static",
                              "noise")):
        notifications.clear()
        seg.image_combo.set_value(viewer.add_image(data, name=name))
        seg.predict()
        wait_idle(qtbot, seg)
        assert any(lvl == "warning" and word in m for lvl, m in notifications), notifications
        assert word in seg.image_note.text()
    # a real EM crop: no warning, the note is hidden
    notifications.clear()
    seg.image_combo.set_value(viewer.add_image(em, name="real"))
    assert not seg.image_note.isVisibleTo(seg)
    seg.predict()
    wait_idle(qtbot, seg)
    assert not [m for lvl, m in notifications if lvl in ("warning", "error")], notifications
    assert not seg.image_note.isVisibleTo(seg)


def test_cli_predict_says_nan_and_noise(tmp_path, tiny_checkpoint, capsys):
    import tifffile

    from napari_segneuron.cli import main

    from napari_segneuron.samples import load_raw

    em = load_raw()[:4, :32, :32].astype(np.float32)
    em[0, :4, :5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", em)
    assert main(["predict", str(tmp_path / "nan.tif"), "-o", str(tmp_path / "p.tif"), "--weights",
                 str(tiny_checkpoint), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "20 NaN/inf voxels" in err
    noise = np.random.default_rng(1).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "noise.tif", noise)
    assert main(["segment", str(tmp_path / "noise.tif"), "-o", str(tmp_path / "s.tif"), "--weights",
                 str(tiny_checkpoint), "--device", "cpu"]) == 0
    assert "looks like noise" in capsys.readouterr().err
    allnan = np.full((2, 16, 16), np.nan, np.float32)
    tifffile.imwrite(tmp_path / "allnan.tif", allnan)
    assert main(["predict", str(tmp_path / "allnan.tif"), "-o", str(tmp_path / "q.tif"), "--weights",
                 str(tiny_checkpoint)]) != 0
    assert "no finite values" in capsys.readouterr().err


def test_layout_status_ground_truth_and_cli_source(plugin_docks, qtbot, notifications, tiny_model_cpu):
    viewer, seg, _ = plugin_docks
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("napari-segneuron", "fib25_both")
    qtbot.wait(50)
    # the merge slider uses the dock's width
    assert seg.slider.width() >= 0.6 * seg.width(), (seg.slider.width(), seg.width())
    # the ground truth never defaults to the labels being evaluated
    gt = viewer.layers["fib25 ground truth"]
    assert seg.labels_combo.value() is None and seg.gt_combo.value() is gt
    seg.labels_combo.set_value(gt)
    assert seg.gt_combo.value() is not gt
    other = viewer.add_labels(np.zeros((50, 100, 200), np.uint32), name="my seg")
    seg.labels_combo.set_value(other)
    assert seg.gt_combo.value() is gt
    # errors raised before a run starts replace the dock's status line
    seg.status_label.setText("Predict: done in 3.0 s")
    seg.predict()
    assert "No model is loaded" in seg.status_label.text() and "done" not in seg.status_label.text()
    assert errors(notifications) and "No model" in errors(notifications)[-1]

    # "Copy as CLI command" names the sample's packaged file
    from napari_segneuron.samples import RAW_PATH

    seg.agglomerate_in_worker = False
    seg.set_model(tiny_model_cpu)
    seg.image_combo.set_value(viewer.layers["fib25 EM"])
    viewer.dims.set_point(0, 25)
    seg.preview_size.setValue(64)
    seg.fg_threshold.setValue(0.0)
    seg.preview()
    wait_idle(qtbot, seg)
    cmd = seg.copy_cli_command()
    assert shlex.split(cmd)[2] == str(RAW_PATH) and "IMAGE.tif" not in cmd
    # an image made in Python has no file: a clearly-named placeholder, and the user is told
    viewer.add_image(np.asarray(viewer.layers["fib25 EM"].data)[:, :64, :64], name="my crop")
    seg.image_combo.set_value(viewer.layers["my crop"])
    seg.preview()
    wait_idle(qtbot, seg)
    cmd = seg.copy_cli_command()
    assert shlex.split(cmd)[2] == "PATH/TO/my_crop.tif"
    assert any(lvl == "warning" and "PATH/TO/my_crop.tif" in m for lvl, m in notifications)


def test_preview_is_a_thin_slab_with_one_fitted_tile(plugin_docks, qtbot, notifications, tiny_model_cpu):
    viewer, seg, _ = plugin_docks
    seg.agglomerate_in_worker = True  # the dock's setting; a small preview still agglomerates in-process
    seg.set_model(tiny_model_cpu)
    seg.fg_threshold.setValue(0.0)
    image = viewer.add_image(np.random.default_rng(0).random((40, 250, 250), dtype=np.float32), name="em")
    seg.image_combo.set_value(image)
    viewer.dims.set_point(0, 20)
    region = seg.preview_region(image, image.data.shape)
    assert region[0] == slice(16, 25)  # +-4 slices by default
    size = [r.stop - r.start for r in region]
    tile = [9] + [-(-n // 16) * 16 for n in size[1:]]  # one tile: the region rounded up to 16
    assert all(0 <= t - n < 16 for t, n in zip(tile[1:], size[1:]))
    settings = seg._preview_settings(region)
    assert settings["tile"] == tile and settings["overlap"] == [0, 0, 0]
    # a region too big for one tile keeps the tiling of the advanced settings
    big = (slice(0, 40), slice(0, 250), slice(0, 250))
    assert seg._preview_settings(big)["tile"] == list(seg.tile.value())
    seg.preview()
    wait_idle(qtbot, seg)
    prov = seg.segmentation.provenance
    assert prov["predict"]["tile"] == tile and "--overlap 0,0,0" in prov["cli"]
    assert seg.segmentation.layer.data.shape == tuple(size)


def test_voxel_size_field(plugin_docks, qtbot, notifications, tiny_model_cpu, tmp_path):
    import copy

    import tifffile

    viewer, seg, _ = plugin_docks
    model = copy.deepcopy(tiny_model_cpu)
    model.info = {**tiny_model_cpu.info, "voxel_size_nm": (10.0, 10.0, 10.0)}
    seg.set_model(model)
    seg.agglomerate_in_worker = False
    data = np.random.default_rng(0).integers(0, 255, (8, 64, 96), dtype=np.uint8)
    # prefilled from the layer scale
    scaled = viewer.add_image(data, name="scaled", scale=(30.0, 4.0, 4.0))
    seg.image_combo.set_value(scaled)
    assert seg.voxel_field.value() == (30.0, 4.0, 4.0)
    # prefilled from the file's metadata when the layer scale says nothing
    path = tmp_path / "meta.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.005, 1 / 0.005), metadata={"spacing": 0.01, "unit": "um"})
    [opened] = viewer.open(str(path))
    seg.image_combo.set_value(opened)
    assert seg.voxel_field.value() == pytest.approx((10.0, 5.0, 5.0))
    assert seg.voxel_note.isVisibleTo(seg) and "Resampled" in seg.voxel_note.text()
    # unknown: '?', and the note says where to type it
    plain = viewer.add_image(data, name="plain")
    seg.image_combo.set_value(plain)
    assert seg.voxel_field.value() is None and "Type the stack's voxel size" in seg.voxel_note.text()
    # a typed voxel size drives Predict, provenance and the CLI command
    for box, v in zip(seg.voxel_field.boxes, (10.0, 5.0, 5.0)):
        box.setValue(v)
    seg.predict()
    wait_idle(qtbot, seg)
    assert seg.prediction.model_grid["foreground"].shape == (8, 32, 48)
    assert seg.prediction.provenance["voxel_size_nm"] == [10.0, 5.0, 5.0]
    seg.fg_threshold.setValue(0.0)
    seg.segment()
    wait_idle(qtbot, seg)
    assert "--voxel-size 10,5,5" in seg.segmentation.provenance["cli"]
    assert not errors(notifications), notifications


def test_a_killed_waterz_worker_is_reported_in_the_dock(plugin_docks, qtbot, notifications, tmp_path):
    """The dock agglomerates in a worker process (worker=True, passed explicitly); when that
    process is killed (as the kernel does when memory runs out) the dock shows the core's
    message in its status line, which must not blame a missing __main__ guard."""
    import os
    import signal

    from napari_segneuron import io
    from napari_segneuron.segmentation import worker as seg_worker
    from test_widgets_latency import synthetic_affinities

    viewer, seg, _ = plugin_docks
    assert seg.agglomerate_in_worker
    aff = synthetic_affinities((48, 192, 192))
    path = tmp_path / "prediction.zarr"
    io.write_prediction(path, aff, np.ones(aff.shape[1:], np.float32))
    viewer.open(str(path), plugin="napari-segneuron")  # File > Open on a saved prediction
    seg.min_size.setValue(0)
    seg.segment()

    def waterz_worker():
        return seg_worker._active_workers()

    qtbot.waitUntil(lambda: bool(waterz_worker()), timeout=60_000)
    os.kill(waterz_worker()[0], signal.SIGKILL)
    wait_idle(qtbot, seg)
    out = seg.runner.last_outcome
    assert out.status == "error"
    status = seg.status_label.text()
    assert str(out.error) in status and "__main__" not in status, status
    assert errors(notifications) and "__main__" not in errors(notifications)[-1]
