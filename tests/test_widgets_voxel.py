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
