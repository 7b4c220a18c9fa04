"""GUI test of the LM Trace dock (make_napari_viewer + qtbot, under Xvfb via pytest-xvfb)."""
import numpy as np
import pytest
import torch

from napari_segneuron.lm_render import render_sample


@pytest.fixture
def tiny_lm_checkpoint(tmp_path):
    from napari_segneuron._model import build_vit3d, save_vit3d

    torch.manual_seed(0)
    model = build_vit3d(None, patch=(3, 4, 4), embed_dim=24, depth=2, heads=3, grid=(2, 3, 3), channels=(4, 8),
                        vit_channels=4)
    return save_vit3d(model, tmp_path / "tiny_lm.pt", metadata={"name": "tiny"})


def test_trace_dock_predicts_and_traces_with_the_image_scale(make_napari_viewer, qtbot, tiny_lm_checkpoint):
    from napari.layers import Image, Shapes

    from napari_segneuron._widgets.trace import TraceWidget

    viewer = make_napari_viewer()
    r = render_sample(np.random.default_rng(4), shape=(12, 48, 48))
    scale = (2.0, 0.5, 0.5)
    viewer.add_image(r.stack, name="lm", scale=scale)
    _, dock = viewer.window.add_plugin_dock_widget("napari-segneuron", "Trace neurons (LM)")
    assert isinstance(dock, TraceWidget)
    assert dock.weights_combo.itemText(0) == "lm_default"
    dock.weights_combo.insertItem(0, str(tiny_lm_checkpoint))
    dock.weights_combo.setCurrentIndex(0)

    dock.predict()
    qtbot.waitUntil(lambda: not dock.runner.busy and "lm foreground" in viewer.layers, timeout=60000)
    fg = viewer.layers["lm foreground"]
    assert isinstance(fg, Image) and fg.data.shape == r.stack.shape and tuple(fg.scale) == scale
    assert 0.0 <= float(fg.data.min()) and float(fg.data.max()) <= 1.0

    # trace a known foreground: the ground-truth mask put in place of the prediction
    fg.data = r.mask.astype(np.float32)
    dock.trace()
    qtbot.waitUntil(lambda: not dock.runner.busy and "lm SWC" in viewer.layers, timeout=60000)
    swc = viewer.layers["lm SWC"]
    assert isinstance(swc, Shapes) and set(swc.shape_type) == {"path"}
    assert tuple(swc.scale) == scale
    nodes = swc.metadata["swc_nodes"]
    assert len(nodes) > 10
    # SWC coordinates are physical: x = column * 0.5, z = slice * 2
    zyx = np.round(nodes[:, [4, 3, 2]] / np.array(scale)).astype(int)
    assert r.mask[tuple(zyx.T)].mean() > 0.95


def test_trace_dock_voxel_size_max_gap_status_and_2d_nodes(make_napari_viewer, qtbot):
    from napari.layers import Points, Shapes

    from napari_segneuron._widgets.trace import TraceWidget

    viewer = make_napari_viewer()
    r = render_sample(np.random.default_rng(5), shape=(24, 96, 96))
    viewer.add_image(r.stack, name="lm")
    _, dock = viewer.window.add_plugin_dock_widget("napari-segneuron", "Trace neurons (LM)")
    assert isinstance(dock, TraceWidget)
    prob = r.mask.astype(np.float32) * 0.9
    for x in (20, 45, 70):  # dim gaps cut across the neuron
        prob[:, :, x:x + 4] = np.where(r.mask[:, :, x:x + 4], 0.2, 0.0)
    viewer.add_image(prob, name="lm foreground")
    dock.voxel_size.setText("2,0.5,0.5")
    dock.max_gap.setValue(15)
    dock.trace()
    qtbot.waitUntil(lambda: not dock.runner.busy and "lm SWC" in viewer.layers, timeout=60000)
    assert "in 1 trees" in dock.status_label.text() and "µm" in dock.status_label.text()
    nodes = viewer.layers["lm SWC"].metadata["swc_nodes"]
    assert isinstance(viewer.layers["lm SWC"], Shapes)
    # SWC in µm: x = column * 0.5, z = slice * 2
    zyx = np.round(nodes[:, [4, 3, 2]] / np.array([2, 0.5, 0.5])).astype(int)
    assert r.mask[tuple(zyx.T)].mean() > 0.9
    pts = viewer.layers["lm SWC nodes"]
    assert isinstance(pts, Points) and len(pts.data) == len(nodes)
    # in the 2D view the current slice shows trace nodes
    viewer.dims.ndisplay = 2
    z = int(np.median(zyx[:, 0]))
    viewer.dims.set_point(0, z)
    assert len(pts._view_data) > 0

    dock.voxel_size.setText("nonsense")
    dock.trace()
    assert "Voxel size" in dock.status_label.text()
