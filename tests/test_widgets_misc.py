"""Manifest, sample data, reader/writer hooks, real napari notifications, demo wiring."""
from __future__ import annotations

import numpy as np
import pytest


def test_manifest_valid_and_importable():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-segneuron")
    pm.validate_imports()
    assert {w.display_name for w in pm.contributions.widgets} == {"SegNeuron", "SegNeuron training", "Trace neurons (LM)"}
    assert {s.key for s in pm.contributions.sample_data} >= {"fib25", "fib25_labels"}
    assert pm.contributions.writers[0].layer_types == ["labels"]


def test_sample_data_is_the_fib25_crop():
    from napari_segneuron._widgets import sample_data as sd

    [(raw, meta, kind)] = sd.fib25_raw()
    assert kind == "image" and raw.shape == (50, 100, 200) and raw.dtype == np.uint8
    [(lab, meta, kind)] = sd.fib25_labels()
    assert kind == "labels" and lab.shape == raw.shape and len(np.unique(lab)) > 50
    assert "gala" in meta["metadata"]["source"]


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_writer_then_reader_roundtrip(tmp_path, suffix):
    from napari_segneuron import io
    from napari_segneuron._widgets.reader import get_reader
    from napari_segneuron._widgets.writer import write_labels

    labels = np.random.default_rng(0).integers(0, 9, (4, 8, 16)).astype(np.uint32)
    prov = {"plugin": "napari-segneuron", "weights": {"name": "w", "sha256": "abc"}}
    meta = {"name": "seg", "scale": (2.0, 1.0, 1.0), "translate": (1.0, 0.0, 0.0), "metadata": {"segneuron": prov}}
    path = tmp_path / f"seg{suffix}"
    assert write_labels(str(path), labels, meta) == [str(path)]
    assert io.read_metadata(path)["segneuron"]["weights"]["sha256"] == "abc"
    if suffix == ".zarr":
        reader = get_reader(str(path))
        assert reader is not None
        [(data, kwargs, kind)] = reader(str(path))
        assert kind == "labels"
        np.testing.assert_array_equal(np.asarray(data), labels)
        assert kwargs["scale"] == (2.0, 1.0, 1.0) and kwargs["translate"] == (1.0, 0.0, 0.0)
        assert kwargs["metadata"]["segneuron"]["weights"]["name"] == "w"  # same layout as the layer had
    else:
        np.testing.assert_array_equal(io.read_volume(path)[0], labels)


def test_reader_opens_predictions_and_ignores_foreign_zarr(tmp_path):
    import zarr

    from napari_segneuron import io
    from napari_segneuron._widgets.reader import get_reader

    aff = np.random.default_rng(0).random((3, 4, 8, 8), dtype=np.float32)
    fg = aff[0]
    io.write_prediction(tmp_path / "p.zarr", aff, fg, metadata={"voxel_size_nm": [30, 4, 4]})
    layers = get_reader(str(tmp_path / "p.zarr"))(str(tmp_path / "p.zarr"))
    assert [lay[0].shape for lay in layers] == [(4, 8, 8), (3, 4, 8, 8)]
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array("x", shape=(2, 2), dtype="u1")
    assert get_reader(str(tmp_path / "other.zarr")) is None
    assert get_reader(str(tmp_path / "x.tif")) is None


def test_errors_reach_napari_notifications(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    from napari_segneuron._widgets.segment import SegNeuronWidget

    viewer = make_napari_viewer()
    w = SegNeuronWidget(viewer)
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        w.segment()
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert seen and "Predict" in seen[-1].message
    assert seen[-1].severity == "error"


def test_demo_viewer_has_sample_and_docks(qtbot, monkeypatch):
    from napari_segneuron import demo
    from napari_segneuron._widgets.segment import SegNeuronWidget
    from napari_segneuron._widgets.train import TrainingWidget

    viewer, dock, train = demo.open_viewer(show=False, load_model=False)
    try:
        assert isinstance(dock, SegNeuronWidget) and isinstance(train, TrainingWidget)
        assert {"fib25 EM", "fib25 ground truth"} <= {lay.name for lay in viewer.layers}
        assert dock.image_combo.value().name == "fib25 EM"
        assert dock.gt_combo.value().name == "fib25 ground truth"
    finally:
        viewer.close()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if not demo.sys.platform.startswith(("win", "darwin")):
        assert not demo.has_display()


def test_merge_hint_only_when_merges_dominate():
    from napari_segneuron._widgets.segment import merge_hint
    from napari_segneuron.metrics import Scores

    def scores(split, merge):
        return Scores(split, merge, 0.1, 0.9, 0.9, 1000)

    assert "Mostly merges" in merge_hint(scores(0.07, 0.35))  # the VNC at the defaults
    assert "Flips" not in merge_hint(scores(0.07, 0.35), "min")  # already predicted with min: slider only
    assert "Flips ▸ min" in merge_hint(scores(0.07, 0.35), False)
    assert merge_hint(scores(0.20, 0.16)) == ""  # fib25_b: balanced
    assert merge_hint(scores(0.01, 0.05)) == ""  # small errors: no advice


@pytest.mark.parametrize("tta, flag", [(False, "off"), (None, "off"), ("mean", "mean"), (True, "mean"), ("min", "min")])
def test_copy_as_cli_spells_out_the_flips(tta, flag):
    """The command line's default is min, so a dock run without flips must say `--tta off` to be
    reproduced; every mode round-trips through the parser."""
    import shlex

    from napari_segneuron._widgets._common import cli_command
    from napari_segneuron.cli import build_parser
    from napari_segneuron.inference import tta_mode

    cmd = cli_command({"source_path": "stack.tif", "predict": {"tta": tta}})
    assert f"--tta {flag}" in cmd
    args = build_parser().parse_args(shlex.split(cmd)[1:])
    assert tta_mode(args.tta) == tta_mode(tta)
