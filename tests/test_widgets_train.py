"""GUI tests of the training dock: finetune with a live loss plot, cancel keeps the checkpoint, pretrain."""
from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_segneuron._widgets.segment import SegNeuronWidget
from napari_segneuron._widgets.train import PRETRAIN, START_LOADED, START_PRETRAINED, TrainingWidget

CROP = (slice(0, 16), slice(0, 64), slice(0, 96))


@pytest.fixture
def docks(make_napari_viewer, tiny_model_cpu, small_training_setup):
    viewer = make_napari_viewer()
    seg = SegNeuronWidget(viewer)
    viewer.window.add_dock_widget(seg, name="SegNeuron")
    seg.set_model(tiny_model_cpu)
    train = TrainingWidget(viewer)
    viewer.window.add_dock_widget(train, name="SegNeuron training")
    small_training_setup(viewer, train)
    return viewer, seg, train


def wait_idle(qtbot, w, timeout=180_000):
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=timeout)


def test_finetune_replaces_loaded_model(docks, qtbot, tmp_path, notifications, tiny_model_cpu):
    viewer, seg, train = docks
    train.settings.iterations.value = 3
    train.set_start_choice(START_LOADED)
    ckpt = tmp_path / "ft.pt"
    train.settings.save_to.value = str(ckpt)
    train.train()
    wait_idle(qtbot, train)
    assert [lvl for lvl, _ in notifications if lvl == "error"] == [], notifications
    assert ckpt.exists()
    assert len(train.loss_plot.points) == 3
    assert seg.model is train.model and seg.model is not tiny_model_cpu
    assert seg.model.info["path"] == str(ckpt)
    assert "ft" in seg.model_label.text()
    # a second run never replaces the first checkpoint
    train.settings.iterations.value = 1
    train.train()
    wait_idle(qtbot, train)
    assert (tmp_path / "ft-2.pt").exists()
    train.grab()  # the loss plot paints


def test_cancel_keeps_last_checkpoint(docks, qtbot, tmp_path, notifications):
    viewer, seg, train = docks
    train.settings.iterations.value = 100_000
    ckpt = tmp_path / "long.pt"
    train.settings.save_to.value = str(ckpt)
    train.train()
    qtbot.waitUntil(lambda: len(train.loss_plot.points) >= 2, timeout=30_000)
    train.cancel_button.click()
    wait_idle(qtbot, train)
    assert ckpt.exists()
    assert train.last_result.cancelled
    assert seg.model.info["path"] == str(ckpt)
    assert any(lvl == "warning" and "cancelled" in m for lvl, m in notifications), notifications


def test_training_input_errors(docks, qtbot, notifications):
    viewer, seg, train = docks
    viewer.add_labels(np.zeros((4, 8, 8), np.uint32), name="small")
    train.labels_combo.set_value(viewer.layers["small"])
    train.train()
    assert "shape" in notifications[-1][1] and notifications[-1][0] == "error"
    train.mode.setCurrentText(PRETRAIN)
    train.train()
    assert "tick at least one" in notifications[-1][1].lower()
    train.mode.setCurrentIndex(0)
    train.labels_combo.set_value(viewer.layers["truth"])
    train.set_start_choice(START_PRETRAINED)
    train.train()
    assert "pretrain" in notifications[-1][1].lower()


def test_pretrain_then_start_of_finetune(docks, qtbot, tmp_path, notifications):
    viewer, seg, train = docks
    train.mode.setCurrentText(PRETRAIN)
    train.set_pretrain_layers(["em"])
    train.settings.iterations.value = 2
    train.settings.save_to.value = str(tmp_path / "pre.pt")
    train.train()
    wait_idle(qtbot, train)
    assert [lvl for lvl, _ in notifications if lvl == "error"] == [], notifications
    assert train.pretrained_checkpoint == tmp_path / "pre.pt"
    assert train.start_choice() == START_PRETRAINED


# -- issue 33 -------------------------------------------------------------------------------
@pytest.fixture
def menu_docks(make_napari_viewer, small_training_setup):
    """Both docks as Plugins ▸ SegNeuron, then Plugins ▸ SegNeuron training open them (no tabify:
    napari's menu stacks a new dock below the others), the bundled default model loaded."""
    from napari_segneuron._model import load_named

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 800)
    _, seg = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    _, train = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron training")
    seg.set_model(load_named("default", device="cpu"))
    small_training_setup(viewer, train)
    return viewer, seg, train


def test_finetune_keeps_what_the_weights_declare(menu_docks, qtbot, tmp_path, notifications):
    """After a finetune from the default model the SegNeuron dock keeps Foreground ≥ 0.75 and
    'trained at 20×20×20 nm': the adapted weights declare their parent's values."""
    viewer, seg, train = menu_docks
    assert seg.fg_threshold.value() == pytest.approx(0.75)
    assert "trained at 20×20×20 nm" in seg.model_label.text()
    seg.magnify.setValue(1.0)  # no label-free estimate: seconds, not a prediction
    train.settings.minutes.value = 0
    train.settings.iterations.value = 1
    train.settings.save_to.value = str(tmp_path / "ft.pt")
    train.train()
    wait_idle(qtbot, train)
    assert [lvl for lvl, _ in notifications if lvl == "error"] == [], notifications
    assert seg.model.info["path"] == str(tmp_path / "ft.pt")
    assert seg.fg_threshold.value() == pytest.approx(0.75)
    assert "declare none" not in seg.status_label.text()
    assert "trained at 20×20×20 nm" in seg.model_label.text()
    meta = seg.model.info["metadata"]
    assert meta["parent"]["name"] == "default" and meta["fg_threshold"] == 0.75
    assert meta["training_data"]["image"] == "em" and meta["training_data"]["labels"] == "truth"
    assert meta["training_data"]["iterations"] == 1


def _cancel_in_the_first_step(monkeypatch, module, name, runner):
    """Make ``module.name`` (the step's loss) press Cancel before its forward pass: the cancel hooks
    then stop the first step, as a user's Cancel during it does."""
    original = getattr(module, name)

    def cancelling(*args, **kwargs):
        runner.token.cancel()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, cancelling)


def test_cancel_before_the_first_step_changes_nothing(docks, qtbot, tmp_path, notifications, monkeypatch,
                                                      tiny_model_cpu):
    import importlib

    F = importlib.import_module("napari_segneuron.training.finetune")
    P = importlib.import_module("napari_segneuron.training.pretrain")

    viewer, seg, train = docks
    weights_before = (seg.weights_combo.currentText(), seg.weights_path.text(), seg.model_label.text())
    train.settings.iterations.value = 100
    ckpt = tmp_path / "never.pt"
    train.settings.save_to.value = str(ckpt)
    _cancel_in_the_first_step(monkeypatch, F, "segmentation_loss", train.runner)
    train.train()
    wait_idle(qtbot, train)
    assert train.last_result.cancelled and train.last_result.iterations == 0
    assert train.last_result.checkpoint is None and not ckpt.exists() and list(tmp_path.iterdir()) == []
    assert seg.model is tiny_model_cpu
    assert (seg.weights_combo.currentText(), seg.weights_path.text(), seg.model_label.text()) == weights_before
    assert "Cancelled before the first step; the model is unchanged" in train.status_label.text()
    assert any(lvl == "warning" and "Cancelled before the first step" in m for lvl, m in notifications)
    assert not train.resegment_button.isEnabled()
    # pretraining likewise: no checkpoint, the next finetune's start is unchanged
    train.mode.setCurrentText(PRETRAIN)
    train.set_pretrain_layers(["em"])
    train.settings.save_to.value = str(tmp_path / "pre.pt")
    _cancel_in_the_first_step(monkeypatch, P, "pretrain_loss", train.runner)
    train.train()
    wait_idle(qtbot, train)
    assert train.last_result.iterations == 0 and train.pretrained_checkpoint is None
    assert list(tmp_path.iterdir()) == []
    assert "Cancelled before the first step" in train.status_label.text()
    assert train.start_choice() == START_LOADED


def test_the_probe_is_announced_and_progress_says_iteration_n(docks, qtbot, tmp_path, monkeypatch, notifications):
    """The one-off precision timing says what it does (no '(0.0 of 1 min)' during it), and
    without an iteration cap the status reads 'iteration 6', not 'iteration 6/1000000000'."""
    import threading

    from napari_segneuron.training import step_precision

    viewer, seg, train = docks
    go = threading.Event()

    def probe(net, shape, device, requested, *, announce=None, **kw):
        announce(step_precision.PROBE_MESSAGE)
        go.wait(60)
        return False

    monkeypatch.setattr(step_precision, "use_mixed_precision", probe)
    messages = []
    train.runner._bridge.progressed.connect(lambda d, t, m: messages.append((d, t, m)))
    train.settings.minutes.value = 0.03  # 1.8 s of training, no iteration cap
    train.settings.iterations.value = 0
    train.settings.save_to.value = str(tmp_path / "ft.pt")
    train.train()
    qtbot.waitUntil(lambda: "Timing one training step (fp32 vs bf16)" in train.status_label.text(), timeout=30_000)
    assert " of 0.03 min)" not in train.status_label.text()
    go.set()
    wait_idle(qtbot, train)
    assert [lvl for lvl, _ in notifications if lvl == "error"] == [], notifications
    steps = [m for _, _, m in messages if m.startswith("iteration ")]
    assert steps and steps[0].startswith("iteration 1, loss ") and steps[0].endswith(" of 0.03 min)")
    assert not any("/1000000000" in m for _, _, m in messages)
    from napari_segneuron._widgets.train import NO_CAP
    from napari_segneuron.training.loop import NO_ITERATION_CAP

    assert NO_CAP == NO_ITERATION_CAP == train._settings()["iterations"]
    assert train.last_result.iterations >= 1


def test_start_names_the_loaded_model(docks, qtbot, tmp_path, notifications):
    from napari_segneuron._model import load_named

    viewer, seg, train = docks
    assert train.start_combo.currentText() == "loaded model (tiny.pt)"
    seg.set_model(load_named("default", device="cpu"))
    assert train.start_choice() == START_LOADED and train.start_combo.currentText() == "loaded model (default)"
    assert train.start_combo.findText("last pretrained checkpoint (none yet)") >= 0
    train.settings.iterations.value = 1
    train.settings.save_to.value = str(tmp_path / "mine.pt")
    seg.magnify.setValue(1.0)
    train.train()
    wait_idle(qtbot, train)
    assert train.start_combo.currentText() == "loaded model (mine.pt)"  # follows the SegNeuron dock


def test_training_dock_does_not_squeeze_the_segneuron_dock(menu_docks, qtbot):
    """Opened from the menu below the SegNeuron dock, the training dock is tabified with it, and
    either dock's form keeps a usable height when they are stacked."""
    from napari_segneuron._widgets._common import MIN_FORM_HEIGHT
    from napari_segneuron._widgets.train import dock_of

    viewer, seg, train = menu_docks
    window = viewer.window._qt_window
    mine, theirs = dock_of(train), dock_of(seg)
    qtbot.waitUntil(lambda: theirs in window.tabifiedDockWidgets(mine), timeout=5_000)
    assert train.isVisible() and mine.height() > 500  # the whole side of the window, in front
    # stacked again by the user (split below the SegNeuron dock): both forms stay usable
    window.splitDockWidget(theirs, mine, Qt.Vertical)
    qtbot.waitUntil(lambda: seg.isVisible() and train.isVisible(), timeout=5_000)
    qtbot.wait(100)
    assert seg._scroll.height() >= MIN_FORM_HEIGHT and train._scroll.height() >= MIN_FORM_HEIGHT
    # and the forms are never clipped on the right (as wide as they need)
    for w in (seg, train):
        assert w._scroll.viewport().width() >= w._scroll.widget().minimumSizeHint().width()
