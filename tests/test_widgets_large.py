"""Large volumes in napari: lazy zarr reading and the dock's blockwise Predict / Segment."""
from __future__ import annotations

import numpy as np
import pytest

WAIT_MS = 180_000


def _write_zarr(path, data, chunks):
    import zarr

    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks, overwrite=True)
    arr[...] = data
    return arr


def test_reader_opens_zarr_lazily(make_napari_viewer, tmp_path, sample_raw):
    import dask.array as da
    import zarr

    viewer = make_napari_viewer()
    crop = np.asarray(sample_raw[:16, :64, :96])
    _write_zarr(tmp_path / "em.zarr", crop, (8, 32, 32))
    layers = viewer.open(str(tmp_path / "em.zarr"), plugin="napari-segneuron")
    assert isinstance(layers[0].data, da.Array) and layers[0].data.shape == crop.shape
    assert layers[0]._type_string == "image"  # uint8 EM, not labels
    np.testing.assert_array_equal(np.asarray(layers[0].data[3]), crop[3])

    # a prediction group: both arrays lazy
    root = zarr.open_group(str(tmp_path / "pred.zarr"), mode="w")
    root.create_array("affinities", shape=(3,) + crop.shape, dtype="float32", chunks=(3, 8, 32, 32))
    root.create_array("foreground", shape=crop.shape, dtype="float32", chunks=(8, 32, 32))
    layers = viewer.open(str(tmp_path / "pred.zarr"), plugin="napari-segneuron")
    assert all(isinstance(layer.data, da.Array) for layer in layers)
    assert layers[0].data.shape == crop.shape

    # OME-Zarr multiscale: one multiscale layer, a dask array per level
    ome = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    ome.create_array("0", shape=crop.shape, dtype=crop.dtype, chunks=(8, 32, 32))[...] = crop
    ome.create_array("1", shape=(16, 32, 48), dtype=crop.dtype, chunks=(8, 32, 32))[...] = crop[:, ::2, ::2]
    ome.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in "zyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 2.0, 2.0]}]}]}]
    layers = viewer.open(str(tmp_path / "ome.zarr"), plugin="napari-segneuron")
    assert layers[0].multiscale and len(layers[0].data) == 2
    assert all(isinstance(level, da.Array) for level in layers[0].data)
    assert layers[0].data[0].shape == crop.shape and tuple(layers[0].scale) == (2.0, 1.0, 1.0)


TILE = (32, 64, 64)  # two tiles, also the blocks of the blockwise prediction
SEG_BLOCK = (16, 32, 64)  # eight blocks of the blockwise segmentation
CROP = (slice(0, 32), slice(0, 64), slice(0, 128))


@pytest.fixture(scope="module")
def default_model():
    """The bundled default model: the blockwise-vs-whole agreement is a property of real
    predictions (random weights give noise whose ties order differently)."""
    from napari_segneuron._model import load_named

    return load_named("default", device="cpu")


def _dock(viewer, model):
    _, w = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    w.set_model(model)
    w.tile.set_value(TILE)
    w.overlap.set_value((0, 0, 0))
    w.device_combo.setCurrentText("cpu")
    return w


def _run(qtbot, w, step):
    getattr(w, step)()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=WAIT_MS)


def test_dock_large_zarr_goes_blockwise(make_napari_viewer, qtbot, tmp_path, sample_raw, default_model, notifications,
                                        monkeypatch):
    import dask.array as da

    from napari_segneuron._widgets import _large
    from napari_segneuron.metrics import evaluate

    viewer = make_napari_viewer()
    w = _dock(viewer, default_model)
    crop = np.asarray(sample_raw[CROP])

    # the in-memory path on the same voxels: the reference
    small = viewer.add_image(crop, name="small")
    w.image_combo.set_value(small)
    _run(qtbot, w, "predict")
    _run(qtbot, w, "segment")
    ref_fg = np.asarray(w.prediction.foreground)
    ref_labels = np.asarray(viewer.layers["small segmentation"].data)
    assert isinstance(viewer.layers["small segmentation"].data, np.ndarray)
    assert len(np.unique(ref_labels)) > 10, "the reference segmentation must be non-trivial"

    # the same voxels as a zarr opened lazily, above a lowered size threshold: 8 blocks
    monkeypatch.setattr(_large, "LARGE_VOXELS", crop.size - 1)
    monkeypatch.setattr(_large, "PREDICT_BLOCK", TILE)
    monkeypatch.setattr(_large, "SEGMENT_BLOCK", SEG_BLOCK)
    monkeypatch.setattr(_large, "WORK_DIR", str(tmp_path / "work"))
    _write_zarr(tmp_path / "big.zarr", crop, SEG_BLOCK)
    [big] = viewer.open(str(tmp_path / "big.zarr"), plugin="napari-segneuron")
    w.image_combo.set_value(big)
    assert w.image_combo.value() is big and _large.is_large(big.data), (w.image_combo.value(), type(big.data))
    messages: list[str] = []
    w.runner._bridge.progressed.connect(lambda done, total, msg: messages.append(msg))
    _run(qtbot, w, "predict")
    assert not [n for n in notifications if n[0] == "error"], notifications
    assert "predict: block 2/2" in messages
    fg_layer = viewer.layers["big foreground"]
    assert isinstance(fg_layer.data, da.Array) and fg_layer.data.shape == crop.shape
    np.testing.assert_allclose(np.asarray(w.prediction.foreground), ref_fg, atol=1e-4)

    _run(qtbot, w, "segment")
    assert not [n for n in notifications if n[0] == "error"], notifications
    assert "fragments: block 3/8" in messages and "graph: block 8/8" in messages
    layer = viewer.layers["big segmentation"]
    assert isinstance(layer.data, da.Array) and layer.data.shape == crop.shape
    labels = np.asarray(layer.data)
    vi = evaluate(labels, ref_labels, ignore_gt=(), background="segment").vi
    assert vi <= 0.01, vi

    # the slider installs a new lazy array: different labels at another threshold
    before = layer.data
    w.set_threshold(0.9)
    qtbot.waitUntil(lambda: layer.data is not before, timeout=5000)
    assert isinstance(layer.data, da.Array)
    moved = np.asarray(layer.data)
    assert len(np.unique(moved)) < len(np.unique(labels))
    # and the lazy relabelling is the agglomeration's own replay at that threshold
    np.testing.assert_array_equal(moved, w.segmentation.agglomeration.labels(0.9))

    # the saved prediction opened lazily (File > Open) segments blockwise too; Cancel stops between blocks
    path = w.prediction.provenance["prediction_zarr"]
    opened = viewer.open(path, plugin="napari-segneuron")
    assert all(isinstance(lay.data, da.Array) for lay in opened)
    w.prediction = None
    viewer.layers.selection.active = opened[0]
    seen = len(messages)
    w.runner._bridge.progressed.connect(lambda d, t, msg: w.runner.cancel() if msg == "fragments: block 2/8" else None)
    _run(qtbot, w, "segment")
    assert isinstance(w.prediction.foreground, da.Array)  # not read into memory
    assert "fragments: block 2/8" in messages[seen:] and "graph: block 8/8" not in messages[seen:]
    assert "prediction segmentation" not in viewer.layers  # cancelled: nothing changed
    assert w.segmentation.layer.name == "big segmentation"
