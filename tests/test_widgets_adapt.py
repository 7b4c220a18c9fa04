"""Adapting the model to the user's stack from napari: paint a box, finetune for a few
seconds of wall-clock budget, re-segment into new layers (docks opened through the manifest)."""
from __future__ import annotations

import numpy as np
import pytest

from napari_segneuron._widgets.train import MASK_ALL, MASK_BOX, NO_CAP, painted_box

CROP = (slice(0, 16), slice(0, 64), slice(0, 96))
BOX = (slice(2, 14), slice(8, 56), slice(16, 80))  # the block the "biologist" paints: 12×48×64 at z 2, y 8, x 16


def errors(notes):
    return [m for level, m in notes if level == "error"]


def default_model():
    """The bundled default network (loaded fresh: training must not touch a shared instance)."""
    from napari_segneuron._model import fetch_weights, load_model

    return load_model(fetch_weights("default"), device="cpu")


@pytest.fixture
def adapt(make_napari_viewer, tmp_path):
    """SegNeuron + training docks as a user opens them, an EM crop and a labels layer painted in one box."""
    from napari_segneuron.samples import load_labels, load_raw

    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    _, train = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron training", tabify=True)
    seg.agglomerate_in_worker = False  # seconds, not a process start per test
    seg.set_model(default_model())  # the bundled model, as after "Load model"
    viewer.add_image(load_raw()[CROP], name="em")
    truth = load_labels()[CROP].astype(np.uint32)
    painted = np.zeros_like(truth)
    painted[BOX] = truth[BOX]  # every neuron of the block painted, membranes 0, the rest untouched
    viewer.add_labels(painted, name="painted")
    train.image_combo.set_value(viewer.layers["em"])
    train.labels_combo.set_value(viewer.layers["painted"])
    train.settings.crop.value = (8, 32, 32)
    train.settings.batch_size.value = 1
    train.settings.device.value = "cpu"
    train.settings.save_to.value = str(tmp_path / "adapted.pt")
    return viewer, seg, train


def wait_idle(qtbot, w, timeout=120_000):
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=timeout)


def trained_metadata(train, qtbot, notifications, iterations: int) -> dict:
    """Finetune ``iterations`` steps from the training dock (no time budget), check that nothing
    went wrong, and return the saved checkpoint's metadata."""
    from napari_segneuron.training.checkpoints import read_checkpoint

    train.settings.minutes.value = 0.0
    train.settings.iterations.value = iterations
    train.train()
    wait_idle(qtbot, train)
    assert errors(notifications) == [], notifications
    return read_checkpoint(train.last_result.checkpoint)["metadata"]


def test_painted_box_is_the_mask(adapt, qtbot):
    viewer, seg, train = adapt
    assert train.mask_combo.currentText() == MASK_BOX  # the default: no extra layer to make
    labels = viewer.layers["painted"].data
    assert painted_box(labels) == ((2, 14), (8, 56), (16, 80))
    mask, note = train.mask_region(labels, labels.shape)
    expected = np.zeros(labels.shape, bool)
    expected[BOX] = True
    np.testing.assert_array_equal(mask, expected)  # the whole box, membranes (0) inside included
    assert note == "Mask: painted box 12×48×64 at z 2, y 8, x 16 (only this block trains)"
    qtbot.waitUntil(lambda: "12×48×64 at z 2, y 8, x 16" in train.mask_note.text(), timeout=5_000)
    # painting more (here: new data) moves the box and the line follows
    grown = labels.copy()
    grown[14, 60, 90] = 7
    viewer.layers["painted"].data = grown
    qtbot.waitUntil(lambda: "13×53×75 at z 2, y 8, x 16" in train.mask_note.text(), timeout=5_000)
    train.mask_combo.setCurrentText(MASK_ALL)
    assert train.mask_region(grown, grown.shape)[0] is None
    assert "Warning" not in train.mask_region(grown, grown.shape)[1]
    # labels without membranes (e.g. copied from a segmentation with membranes filled) get a warning
    train.mask_combo.setCurrentText(MASK_BOX)
    dense = grown.copy()
    block = dense[tuple(slice(a, b) for a, b in painted_box(dense))]
    block[block == 0] = 1
    assert "model would learn that there are no membranes" in train.mask_region(dense, dense.shape)[1]


def test_minutes_budget_adapts_and_resegments_into_new_layers(adapt, qtbot, tmp_path, notifications):
    viewer, seg, train = adapt
    zero_shot = seg.model
    assert train.settings.minutes.value == 15  # the default budget
    assert not train.resegment_button.isEnabled()
    # an earlier segmentation with the old model, which must survive
    seg.predict()
    wait_idle(qtbot, seg)
    seg.segment()
    wait_idle(qtbot, seg)
    old = viewer.layers["em segmentation"]
    old_data = np.array(old.data)
    painted_before = np.array(viewer.layers["painted"].data)

    train.settings.minutes.value = 0.05  # 3 s of wall clock, no iteration cap
    assert train.settings.iterations.value == 0
    s = train._settings()
    assert s["time_limit_s"] == pytest.approx(3.0) and s["iterations"] == NO_CAP
    train.train()
    wait_idle(qtbot, train)
    assert errors(notifications) == [], notifications
    r = train.last_result
    assert r.checkpoint == tmp_path / "adapted.pt" and r.checkpoint.exists()
    assert 1 <= r.iterations < NO_CAP and not r.cancelled  # stopped by the clock
    assert r.wall_time_s < 3.0 + 30.0
    assert len(train.loss_plot.points) == r.iterations
    assert seg.model is train.model and seg.model is not zero_shot
    assert seg.model.info["path"] == str(r.checkpoint)
    assert "painted box 12×48×64" in train.mask_note.text()
    assert train.resegment_button.isEnabled()

    train.resegment_button.click()
    wait_idle(qtbot, seg)
    assert errors(notifications) == [], notifications
    new = viewer.layers["em segmentation (adapted)"]
    assert new is not old and old in viewer.layers
    np.testing.assert_array_equal(old.data, old_data)  # the earlier result is untouched
    np.testing.assert_array_equal(viewer.layers["painted"].data, painted_before)  # and the user's labels
    assert new.data.shape == old_data.shape and new.data.max() > 0
    assert new.metadata["segneuron"]["weights"]["path"] == str(r.checkpoint)
    assert "em affinities (adapted)" in viewer.layers and "em affinities" in viewer.layers
    assert seg.segmentation.layer.name == new.name  # the merge slider now drives the adapted result
    assert "'em segmentation (adapted)'" in train.status_label.text()
    # again: a second new layer, the first adapted one kept
    train.resegment()
    wait_idle(qtbot, seg)
    assert "em segmentation (adapted 2)" in viewer.layers and new in viewer.layers


def test_adapt_input_messages(adapt, qtbot, notifications):
    viewer, seg, train = adapt
    # labels of the wrong shape
    viewer.add_labels(np.zeros((4, 8, 8), np.uint32), name="tiny")
    train.labels_combo.set_value(viewer.layers["tiny"])
    train.train()
    msg = errors(notifications)[-1]
    assert "'tiny' are 4×8×8 but the image 'em' is 16×64×96" in msg and "New labels layer" in msg
    # nothing painted yet
    viewer.add_labels(np.zeros((16, 64, 96), np.uint32), name="empty")
    train.labels_combo.set_value(viewer.layers["empty"])
    train.train()
    assert "Nothing is painted in 'empty'" in errors(notifications)[-1]
    qtbot.waitUntil(lambda: "Nothing is painted" in train.mask_note.text(), timeout=5_000)
    # a box smaller than a training crop (8×32×32)
    small = np.zeros((16, 64, 96), np.uint32)
    small[5:9, 10:30, 10:60] = 3
    viewer.layers["empty"].data = small
    train.train()
    msg = errors(notifications)[-1]
    assert "painted box (4×20×50) is smaller than a training crop (8×32×32)" in msg
    assert "at most 4, 16, 32" in msg
    assert not train.runner.busy and train.last_result is None


def test_adaptation_trains_on_the_model_grid(adapt, qtbot, notifications):
    """With the stack's voxel size known (10 nm, the default model declares 20 nm), the painted
    block is resampled to the model's grid before training, as prediction does, and the adapted
    checkpoint declares that grid."""
    viewer, seg, train = adapt
    seg.voxel_field.set_value((10.0, 10.0, 10.0))
    seg.magnify.setValue(1.0)  # by hand: no label-free magnification ('auto' would find ~2 here)
    meta = trained_metadata(train, qtbot, notifications, iterations=2)
    assert meta["voxel_size_nm"] == [20.0, 20.0, 20.0]
    assert meta["adapted_on_voxel_size_nm"] == [10.0, 10.0, 10.0]
    assert meta["resampled_from_shape"] == [16, 64, 96]
    assert seg.model.info["voxel_size_nm"] == (20.0, 20.0, 20.0)
    assert "on the model's 20×20×20 nm grid (the block was resampled from 10×10×10 nm)" in train.status_label.text()


def test_calibrate_fits_the_dock_to_the_painted_block(adapt, qtbot, notifications):
    """The stack typed in as 10 nm (the model declares 20 nm; the sample is on the model's own
    grid): the dock shrinks it 2x and merges and splits follow. Calibrate finds magnification 2
    on the painted block, sets the SegNeuron dock's settings and re-segments into new layers;
    the user's layers are untouched. A finetune afterwards trains at that magnification."""
    viewer, seg, train = adapt
    seg.voxel_field.set_value((10.0, 10.0, 10.0))
    seg.magnify.setValue(1.0)  # by hand: the defaults to beat are magnification 1 ('auto' finds ~2 itself)
    painted_before = np.array(viewer.layers["painted"].data)
    n_layers = len(viewer.layers)
    train.calibrate()
    assert not train.calibrate_button.isEnabled()  # one job at a time
    wait_idle(qtbot, train)
    qtbot.waitUntil(lambda: not seg.runner.busy and "em segmentation (calibrated)" in viewer.layers, timeout=120_000)
    assert errors(notifications) == [], notifications
    c = train.last_calibration
    assert c.magnify == 2.0 and c.improved and c.vi < c.default_vi
    assert seg.magnify.value() == 2.0
    assert seg.fg_threshold.value() == pytest.approx(c.fg_threshold)
    assert seg.threshold() == pytest.approx(c.threshold)
    assert "Calibrated: magnification 2" in train.status_label.text()
    assert "Re-segmented with the calibrated settings into 'em segmentation (calibrated)'" in train.status_label.text()
    assert "Magnified 2×" in seg.voxel_note.text()
    layer = viewer.layers["em segmentation (calibrated)"]
    assert layer.metadata["segneuron"]["predict"]["magnify"] == 2.0
    assert layer.metadata["segneuron"]["voxel_size_nm"] == [10.0, 10.0, 10.0]  # the stack's own, recorded
    assert len(viewer.layers) == n_layers + 3  # affinities, foreground, segmentation: all new
    np.testing.assert_array_equal(viewer.layers["painted"].data, painted_before)
    assert "--magnify 2" in seg.copy_cli_command()
    # finetuning next trains at the chosen magnification: 10 nm x 2 = the model's grid, the checkpoint says 10 nm
    meta = trained_metadata(train, qtbot, notifications, iterations=1)
    assert meta["voxel_size_nm"] == [10.0, 10.0, 10.0] and meta["magnify"] == 2.0
    # the adapted weights declare that grid, so the dock stops magnifying (else it would do it twice)
    assert seg.magnify.value() == 1.0 and "Magnify is back to 1" in train.status_label.text()
    assert seg._voxel_size(viewer.layers["em"], seg._predictor()) == (10.0, 10.0, 10.0)
    assert seg.model.info["voxel_size_nm"] == (10.0, 10.0, 10.0)  # so the 10 nm stack is not resampled


def test_calibrate_messages(adapt, qtbot, notifications):
    viewer, seg, train = adapt
    viewer.add_labels(np.zeros((16, 64, 96), np.uint32), name="empty")
    train.labels_combo.set_value(viewer.layers["empty"])
    assert not train.calibrate()
    assert "Nothing is painted in 'empty'" in errors(notifications)[-1]
    seg.model = None
    train.labels_combo.set_value(viewer.layers["painted"])
    assert not train.calibrate()
    assert "Load a model in the SegNeuron dock first" in errors(notifications)[-1]
    assert not train.runner.busy


def test_calibrate_can_be_cancelled_and_changes_nothing(adapt, qtbot, notifications):
    viewer, seg, train = adapt
    seg.voxel_field.set_value((10.0, 10.0, 10.0))
    before = (seg.magnify.value(), seg.fg_threshold.value(), seg.threshold(), len(viewer.layers))
    train.calibrate()
    train.runner.cancel()
    wait_idle(qtbot, train)
    assert errors(notifications) == [], notifications
    assert not hasattr(train, "last_calibration")
    assert (seg.magnify.value(), seg.fg_threshold.value(), seg.threshold(), len(viewer.layers)) == before
    assert not seg.runner.busy and train.calibrate_button.isEnabled()


def test_magnify_auto_estimates_from_the_image_and_training_follows(adapt, qtbot, notifications):
    """Magnify 'auto' (the default): the stack typed in as 10 nm (it is ~20 nm) looks to the model
    like neurites half as wide; Predict estimates about 2 from the image alone, records it,
    and Copy as CLI and a finetune use the same number."""
    viewer, seg, train = adapt
    assert seg.magnify_is_auto() and seg.magnify.text() == "auto"
    seg.voxel_field.set_value((10.0, 10.0, 10.0))
    assert seg.magnification() is None  # not estimated yet
    assert "Magnify auto: estimated from the image when you predict" in seg.voxel_note.text()
    seg.predict()
    wait_idle(qtbot, seg)
    assert errors(notifications) == [], notifications
    m = seg.magnification()
    assert 1.7 <= m <= 2.5
    prov = viewer.layers["em affinities"].metadata["segneuron"]["predict"]
    assert prov["magnify"] == m and prov["magnify_auto"] is True and prov["magnify_estimate"]["magnify"] == m
    assert f"Magnify auto: {m:g}× estimated from the image" in seg.voxel_note.text()
    assert any(f"Magnify auto for 'em': magnification {m:g}" in text for _, text in notifications)
    seg.segment()
    wait_idle(qtbot, seg)
    assert f"--magnify {m:g}" in seg.copy_cli_command()
    # finetuning trains where prediction looked, and keeps the reference width ('auto' stays usable)
    meta = trained_metadata(train, qtbot, notifications, iterations=1)
    assert meta["magnify"] == m and meta["voxel_size_nm"] == pytest.approx([20.0 / m] * 3, rel=1e-3)
    assert meta["neurite_halfwidth"] == pytest.approx(5.627)
    # a magnification typed in by hand is written out as such (the command line would estimate otherwise)
    seg.set_model(default_model())
    seg.magnify.setValue(1.0)
    seg.predict()
    wait_idle(qtbot, seg)
    seg.segment()
    wait_idle(qtbot, seg)
    assert " --magnify 1 " in seg.copy_cli_command() + " "


def test_calibrate_scores_against_the_auto_magnification(adapt, qtbot, notifications):
    """With Magnify 'auto' the defaults Calibrate must beat are what Predict would do: the
    label-free estimate (made first, as Predict would, and remembered for the image)."""
    viewer, seg, train = adapt
    seg.voxel_field.set_value((10.0, 10.0, 10.0))
    assert seg.magnify_is_auto() and seg.magnification() is None
    train.calibrate()
    wait_idle(qtbot, train)
    qtbot.waitUntil(lambda: not seg.runner.busy, timeout=120_000)
    assert errors(notifications) == [], notifications
    c = train.last_calibration
    m = seg.magnification(viewer.layers["em"])
    assert m is not None and 1.7 <= m <= 2.5 and c.default["magnify"] == m
    if not c.improved:  # the defaults stayed best: the dock keeps 'auto'
        assert seg.magnify_is_auto()
    else:
        assert seg.magnify.value() == c.magnify
