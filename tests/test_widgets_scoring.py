"""The dock's Edge score: "auto" by default, median-all for serial sections (the Voxel box), median
otherwise; the labels layer records the score it was made with and the merge hint offers median-all."""
from __future__ import annotations

import numpy as np
import pytest

WAIT_MS = 180_000


def wait_idle(qtbot, w, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=timeout)


@pytest.fixture
def seg_dock(make_napari_viewer, tiny_model_cpu):
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    dock.set_model(tiny_model_cpu)
    dock.tile.set_value((16, 64, 96))
    dock.overlap.set_value((0, 0, 0))
    dock.tta.setCurrentIndex(dock.tta.findData(False))
    return viewer, dock


def test_edge_score_follows_the_voxel_size(seg_dock, qtbot, sample_raw):
    viewer, w = seg_dock
    viewer.add_image(np.ascontiguousarray(sample_raw[:16, :64, :96]), name="sections")
    assert w.scoring.currentText() == "auto"
    w.voxel_field.set_value(None)
    assert w._segment_settings()["scoring"] == "median"  # unknown voxel size: as isotropic
    w.voxel_field.set_value((50.0, 5.0, 5.0))
    assert w._segment_settings()["scoring"] == "median-all"
    assert w._segment_settings()["scoring_choice"] == "auto"

    w.predict()
    wait_idle(qtbot, w)
    w.fg_threshold.setValue(0.0)
    w.min_size.setValue(0)
    w.set_threshold(0.4)
    w.segment()
    wait_idle(qtbot, w)
    assert w.segmentation is not None
    layer = viewer.layers["sections segmentation"]
    assert layer.metadata["segneuron"]["segment"]["scoring"] == "median-all"
    assert w.segmentation.agglomeration.info["scoring"] == "median-all"
    assert "Edge score: median-all (auto: serial sections)" in w.segment_label.text()  # the user sees which
    # the merge hint reads the Flips and the edge score from the layer, not from the boxes now
    w.tta.setCurrentIndex(w.tta.findData("min"))
    assert w._made_with("sections segmentation") == (False, "median-all")
    # Copy as CLI reproduces the score the labels were made with
    assert "--scoring median-all" in w.copy_cli_command()

    w.scoring.setCurrentText("mean")  # an explicit choice is kept whatever the voxel size
    assert w._segment_settings()["scoring"] == "mean"


def test_score_note_names_the_score_and_why():
    from napari_segneuron._widgets.segment import score_note

    assert score_note({"scoring": "median", "scoring_choice": "auto"}) == " Edge score: median (auto: not serial sections)."
    assert score_note({"scoring": "mean", "scoring_choice": "mean"}) == " Edge score: mean."
    assert score_note({}) == ""


def test_merge_hint_offers_median_all_after_median():
    from napari_segneuron._widgets.segment import merge_hint
    from napari_segneuron.metrics import Scores

    merges = Scores(0.07, 0.35, 0.1, 0.9, 0.9, 1000)
    assert "Edge score to median-all" in merge_hint(merges, "min", "median")
    assert "Edge score" not in merge_hint(merges, "min", "median-all")
    assert "Edge score" not in merge_hint(merges, "min", None)  # unknown: no advice about it
    assert merge_hint(Scores(0.20, 0.16, 0.1, 0.9, 0.9, 1000), "min", "median") == ""


def test_fill_membranes_box_gives_background_to_neighbours_and_is_recorded(seg_dock, qtbot, sample_raw):
    viewer, w = seg_dock
    viewer.add_image(np.ascontiguousarray(sample_raw[:16, :64, :96]), name="em")
    from napari_segneuron.segmentation import DEFAULT_MEMBRANE_FILL

    assert w.membrane_fill.value() == DEFAULT_MEMBRANE_FILL
    w.predict()
    wait_idle(qtbot, w)
    # a random model: make about a third of the voxels background
    w.fg_threshold.setValue(round(float(np.quantile(w.prediction.foreground, 0.33)), 2))
    w.min_size.setValue(0)
    w.set_threshold(0.4)
    zeros = {}
    for fill in (0, DEFAULT_MEMBRANE_FILL):
        w.membrane_fill.setValue(fill)
        w.segment()
        wait_idle(qtbot, w)
        layer = viewer.layers["em segmentation"]
        assert layer.metadata["segneuron"]["segment"]["membrane_fill"] == fill
        assert w.segmentation.agglomeration.info["membrane_fill"] == fill
        zeros[fill] = float((np.asarray(layer.data) == 0).mean())
        assert f"--membrane-fill {fill}" in w.copy_cli_command()
    assert zeros[0] > 0.2 and zeros[DEFAULT_MEMBRANE_FILL] < 0.01, zeros
    # Segment again rewrites our own labels layer in place (napari hands plugins proxies of its layers)
    assert [layer.name for layer in viewer.layers].count("em segmentation") == 1
    assert "em segmentation [2]" not in viewer.layers
