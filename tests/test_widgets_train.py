"""GUI tests of the training dock: finetune with a live loss plot, cancel keeps the checkpoint, pretrain."""
from __future__ import annotations

import numpy as np
import pytest

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
