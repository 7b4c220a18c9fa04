"""The dock's "Foreground ≥" box follows the foreground threshold the loaded weights declare,
until the user changes it."""
import pytest

from napari_segneuron.segmentation import DEFAULT_FG_THRESHOLD


def wait_idle(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=timeout)


@pytest.fixture
def seg_dock(make_napari_viewer):
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    return viewer, dock


def test_box_follows_the_weights_until_the_user_changes_it(seg_dock, qtbot, tiny_model_cpu):
    _viewer, w = seg_dock
    assert w.fg_threshold.value() == pytest.approx(DEFAULT_FG_THRESHOLD)  # nothing loaded yet
    w.weights_combo.setCurrentText("default")
    w.load_weights()  # the "Load model" button's action, in the worker
    wait_idle(qtbot, w)
    assert w.model is not None and w.model.info["fg_threshold"] == 0.75
    assert w.fg_threshold.value() == pytest.approx(0.75)
    assert "Foreground ≥ set to 0.75" in w.status_label.text()
    # weights that declare nothing bring the package default back
    w.set_model(tiny_model_cpu)
    assert w.fg_threshold.value() == pytest.approx(DEFAULT_FG_THRESHOLD)
    assert "the package default (these weights declare none)" in w.status_label.text()
    # a value the user typed is theirs: loading other weights leaves it alone
    w.fg_threshold.setValue(0.6)
    w.load_weights()
    wait_idle(qtbot, w)
    assert w.model.info["fg_threshold"] == 0.75
    assert w.fg_threshold.value() == pytest.approx(0.6)
    assert "Foreground ≥ set" not in w.status_label.text()
