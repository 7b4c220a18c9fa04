"""The dock predicts at the model's voxel size, read from the image layer's scale."""
import copy

import numpy as np

from test_widgets import dock, wait_idle  # noqa: F401  (fixture)


def _model_at_10nm(tiny_model_cpu):
    model = copy.deepcopy(tiny_model_cpu)
    model.info = {**tiny_model_cpu.info, "voxel_size_nm": (10.0, 10.0, 10.0)}
    return model


def test_layer_scale_in_nm_triggers_resampling(dock, qtbot, notifications, tiny_model_cpu):
    viewer, w = dock
    w.set_model(_model_at_10nm(tiny_model_cpu))
    data = np.random.default_rng(0).integers(0, 255, (8, 64, 96), dtype=np.uint8)
    image = viewer.add_image(data, name="fine EM", scale=(10.0, 5.0, 5.0))
    w.image_combo.set_value(image)
    w.predict()
    wait_idle(qtbot, w)
    fg = viewer.layers["fine EM foreground"]
    assert fg.data.shape == (8, 64, 96)
    np.testing.assert_allclose(fg.scale, image.scale)
    assert any("resampling back" in m for _level, m in notifications)
    # segmenting agglomerates on the model grid (8x32x48) and shows labels on the image grid
    assert w.prediction.model_grid["foreground"].shape == (8, 32, 48)
    w.set_threshold(0.5)
    w.segment()
    wait_idle(qtbot, w)
    seg = w.segmentation
    assert seg.agglomeration.info["grid_of_agglomeration"] == [8, 32, 48]
    assert seg.layer.data.shape == (8, 64, 96)
    np.testing.assert_allclose(seg.layer.scale, image.scale)
    # the labels are constant on each 2x2 block of the finer grid: they came from the coarse grid
    lab = np.asarray(seg.layer.data)
    assert np.array_equal(lab, lab[:, ::2, ::2].repeat(2, axis=1).repeat(2, axis=2))


def test_unknown_voxel_size_is_said_once(dock, qtbot, notifications, tiny_model_cpu):
    viewer, w = dock
    w.set_model(_model_at_10nm(tiny_model_cpu))
    image = viewer.add_image(np.zeros((8, 32, 32), np.uint8), name="plain")
    w.image_combo.set_value(image)
    for _ in range(2):
        w.predict()
        wait_idle(qtbot, w)
    assert sum("no voxel size" in m for _level, m in notifications) == 1


def test_segment_a_prediction_opened_from_zarr(dock, qtbot, tmp_path, tiny_model_cpu):
    """File > Open on a saved prediction, then Segment: labels on the prediction's grid and scale."""
    import tifffile

    from napari_segneuron import io
    from napari_segneuron.inference import Predictor
    from napari_segneuron.segmentation import agglomerate
    from test_segmentation import DATA, same_partition

    viewer, w = dock
    raw = tifffile.imread(DATA / "fib25_b_raw.tif")[:8, :48, :64]
    aff, fg = Predictor(tiny_model_cpu, device="cpu").predict(raw)
    path = tmp_path / "saved.zarr"
    io.write_prediction(path, aff, fg, metadata={"voxel_size_nm": [10, 10, 10]})
    viewer.open(str(path), plugin="napari-segneuron")
    assert w.prediction is None
    w.fg_threshold.setValue(0.0)
    w.set_threshold(0.5)
    w.segment()
    wait_idle(qtbot, w)
    seg = w.segmentation
    assert seg is not None and seg.layer.data.shape == raw.shape
    np.testing.assert_allclose(seg.layer.scale, (10, 10, 10))
    s = w._segment_settings()
    assert s["scoring"] == "median"  # the package default, as in the CLI
    ref = agglomerate(aff, fg, fg_threshold=s["fg_threshold"], worker=False).labels(0.5)
    assert same_partition(np.asarray(seg.layer.data), ref)
    # the dock's "Edge score" choice reaches waterz and the reproducing command
    w.scoring.setCurrentText("mean")
    w.segment()
    wait_idle(qtbot, w)
    ref = agglomerate(aff, fg, fg_threshold=s["fg_threshold"], scoring="mean", worker=False).labels(0.5)
    assert same_partition(np.asarray(w.segmentation.layer.data), ref)
    assert "--scoring mean" in w.segmentation.layer.metadata["segneuron"]["cli"]


def test_preview_cli_command_reproduces_the_preview(dock, qtbot, tmp_path, tiny_checkpoint):
    """'Copy as CLI command' after a Preview gives --roi and --voxel-size; running it gives the preview's labels."""
    import shlex

    import tifffile

    from napari_segneuron._model import load_model
    from napari_segneuron.cli import main
    from test_segmentation import DATA, same_partition

    viewer, w = dock
    w.agglomerate_in_worker = False
    model = load_model(tiny_checkpoint, device="cpu")
    model.info = {**model.info, "voxel_size_nm": (10.0, 10.0, 10.0)}
    w.set_model(model)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, tifffile.imread(DATA / "fib25_b_raw.tif")[:24, :80, :96])
    [image] = viewer.open(str(stack))
    image.scale = (10.0, 5.0, 5.0)
    w.image_combo.set_value(image)
    viewer.dims.set_point(0, 10.0 * 12)
    w.preview_depth.setValue(3)
    w.preview_size.setValue(48)
    w.fg_threshold.setValue(0.0)
    w.set_threshold(0.4)
    w.preview()
    wait_idle(qtbot, w)
    prev = viewer.layers[f"{image.name} preview"]
    cmd = w.copy_cli_command()
    assert "--roi 9:16," in cmd and "--voxel-size 10,5,5" in cmd, cmd
    argv = shlex.split(cmd)[1:]
    out = tmp_path / "cli.tif"
    argv[argv.index("-o") + 1] = str(out)
    argv[argv.index("--weights") + 1] = str(tiny_checkpoint)
    argv += ["--model-voxel-size", "10,10,10"]
    assert main(argv) == 0
    assert same_partition(tifffile.imread(out), np.asarray(prev.data))


def test_small_segments_merge_when_the_slider_is_released(dock, qtbot, tiny_model_cpu):
    """Dragging shows unmerged labels (fast); releasing merges segments below min size."""
    from test_segmentation import DATA

    import tifffile

    viewer, w = dock
    w.agglomerate_in_worker = False
    w.set_model(tiny_model_cpu)
    image = viewer.add_image(tifffile.imread(DATA / "fib25_b_raw.tif")[:8, :64, :64], name="em")
    w.image_combo.set_value(image)
    w.fg_threshold.setValue(0.0)
    w.min_size.setValue(200)
    w.predict()
    wait_idle(qtbot, w)
    w.segment()
    wait_idle(qtbot, w)
    agg = w.segmentation.agglomeration
    n = len(w.slider_latency_ms)
    w.slider.setSliderDown(True)
    w.set_threshold(0.3)
    qtbot.waitUntil(lambda: len(w.slider_latency_ms) > n, timeout=5000)
    dragged = np.asarray(w.segmentation.layer.data).copy()
    np.testing.assert_array_equal(dragged, agg.labels(0.3, min_size=0))
    w.slider.setSliderDown(False)
    w.slider.sliderReleased.emit()
    qtbot.waitUntil(lambda: len(w.slider_latency_ms) > n + 1, timeout=5000)
    released = np.asarray(w.segmentation.layer.data)
    np.testing.assert_array_equal(released, agg.labels(0.3))
    # small pieces joined their neighbours, which kept their ids (and colours)
    released_ids, released_sizes = np.unique(released[released > 0], return_counts=True)
    assert len(released_ids) < len(np.unique(dragged[dragged > 0]))
    assert np.isin(released_ids, dragged).all()
    assert released_sizes.min() >= 200
