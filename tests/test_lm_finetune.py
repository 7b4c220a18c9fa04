"""Finetuning the LM model on one stack: SWC rasterisation, training, budget, cancel, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segneuron.cancel import CancelToken
from napari_segneuron.io import read_swc, write_swc
from napari_segneuron.lm_render import render_sample
from napari_segneuron.training.data import TrainingInputError
from napari_segneuron.training.loop import TrainingCancelled
from napari_segneuron.training.lm import dice, normalise_lm, predict_whole
from napari_segneuron.training.lm_finetune import _lr_factor, finetune_lm, paths_to_mask, rasterize_swc

TINY_ARCH = dict(patch=(5, 8, 8), embed_dim=32, depth=2, heads=2, grid=(2, 4, 4), channels=(4, 8), vit_channels=4)


@pytest.fixture(scope="module")
def render():
    """A 20x64x64 render with anisotropic voxels (about 1.1 x 0.28 x 0.28 µm)."""
    return render_sample(np.random.default_rng(3), (20, 64, 64))


def physical(r):
    nodes = r.nodes.copy()
    nodes[:, 2:5] *= np.array(r.voxel_size)[::-1]  # x, y, z voxels -> µm
    return nodes


def tiny_model():
    from napari_segneuron._model import build_vit3d

    torch.manual_seed(0)
    return build_vit3d(None, **TINY_ARCH)


# -- rasterising ----------------------------------------------------------------------------
def test_rasterize_swc_of_a_render_gives_back_its_mask(render):
    assert render.voxel_size[0] > 2 * render.voxel_size[1]  # anisotropic: axis order matters
    mask = rasterize_swc(physical(render), render.mask.shape, render.voxel_size)
    assert mask.dtype == bool and mask.shape == render.mask.shape
    assert dice(mask, render.mask) > 0.99
    # the same nodes read as if the voxels were isotropic give another (wrong) mask
    assert dice(rasterize_swc(physical(render), render.mask.shape), render.mask) < 0.5


def test_rasterize_swc_round_trip_through_an_swc_file(render, tmp_path):
    path = write_swc(tmp_path / "tree.swc", physical(render))
    mask = rasterize_swc(read_swc(path), render.mask.shape, render.voxel_size)
    assert dice(mask, render.mask) > 0.98


def test_rasterize_swc_tube_geometry():
    # one edge along x: x 5..20 µm, y 10 µm, z 8 µm; voxels (z, y, x) = (2, 0.5, 0.5) µm
    vs = (2.0, 0.5, 0.5)
    nodes = np.array([[1, 1, 5.0, 10.0, 8.0, 1.5, -1], [2, 3, 20.0, 10.0, 8.0, 1.5, 1]])
    mask = rasterize_swc(nodes, (10, 40, 60), vs)
    zs, ys, xs = np.nonzero(mask)
    assert set(zs) == {4}  # 2 µm to the next slice is beyond the 1.5 µm radius
    assert ys.min() == 17 and ys.max() == 23  # 1.5 µm = 3 voxels either side of row 20
    assert xs.min() == 7 and xs.max() == 43  # the ends are round: 3 voxels beyond x = 10 and 40
    # a radius far below the voxel size still leaves a connected one-voxel line
    thin = rasterize_swc(np.array([[1, 1, 5.0, 10.0, 8.0, 0.01, -1], [2, 3, 20.0, 10.0, 8.0, 0.01, 1]]),
                         (10, 40, 60), vs)
    assert thin.sum() == 31 and thin[4, 20, 10:41].all()
    # a lone node is a ball; nodes outside the volume are clipped
    ball = rasterize_swc(np.array([[1, 1, 10.0, 10.0, 8.0, 1.0, -1]]), (10, 40, 60), vs)
    assert ball[4, 20, 20] and ball.sum() == int(np.sum(np.add.outer(np.arange(-2, 3) ** 2,
                                                                      np.arange(-2, 3) ** 2) <= 4))
    far = np.array([[1, 1, 500.0, 10.0, 8.0, 1.0, -1], [2, 3, 600.0, 10.0, 8.0, 1.0, 1]])
    assert not rasterize_swc(far, (10, 40, 60), vs).any()
    assert not rasterize_swc(np.zeros((0, 7)), (4, 5, 6)).any()


def test_paths_to_mask_of_an_swc_shapes_layer(render):
    """The training dock's route: a traced Shapes layer (paths + radius metadata) -> mask."""
    from napari_segneuron._widgets.reader import swc_layer_data

    paths, kwargs, kind = swc_layer_data(physical(render), render.voxel_size)
    assert kind == "shapes"
    mask = paths_to_mask(paths, render.mask.shape, render.voxel_size, path_scale=kwargs["scale"],
                         radius=kwargs["metadata"]["swc_radius"])
    assert dice(mask, render.mask) > 0.99
    # a layer shifted by 3 rows (translate, physical) lands 3 rows further down
    shifted = paths_to_mask(paths, render.mask.shape, render.voxel_size, path_scale=kwargs["scale"],
                            radius=kwargs["metadata"]["swc_radius"], offset=(0, 3 * render.voxel_size[1], 0))
    assert dice(shifted[:, 3:], mask[:, :-3]) > 0.98
    # hand-drawn paths (no radii): tubes of one xy voxel radius around the centrelines
    thin = paths_to_mask(paths, render.mask.shape, render.voxel_size)
    assert 0 < thin.sum() < mask.sum() and np.mean(render.mask[thin]) > 0.9


# -- training -------------------------------------------------------------------------------
def test_finetune_lm_learns_the_neuron_and_writes_a_loadable_checkpoint(render, tmp_path):
    from napari_segneuron._model.vit3d import load_vit3d

    model = tiny_model()
    x = normalise_lm(render.stack)
    before = dice(predict_whole(model, x) > 0.5, render.mask)
    losses = []
    ckpt = tmp_path / "lm-ft.pt"
    result = finetune_lm(model, render.stack, render.mask, iterations=40, crop=(20, 64, 64), lr=1e-2,
                         checkpoint=ckpt, loss_callback=lambda it, lv: losses.append((it, lv)))
    assert result.iterations == 40 and not result.cancelled and result.checkpoint == ckpt
    assert losses == result.history and [it for it, _ in losses] == list(range(1, 41))
    first, last = np.mean([lv for _, lv in losses[:5]]), np.mean([lv for _, lv in losses[-5:]])
    assert last < 0.7 * first, (first, last)
    after = dice(predict_whole(result.model, x) > 0.5, render.mask)
    assert after > before + 0.3, (before, after)
    # the start model is not changed; the checkpoint is the trained model
    assert dice(predict_whole(model, x) > 0.5, render.mask) == before
    loaded = load_vit3d(ckpt)
    np.testing.assert_allclose(predict_whole(loaded, x), predict_whole(result.model, x), atol=1e-5)
    meta = loaded.info["metadata"]
    assert meta["name"] == "lm-ft" and meta["steps"] == 40 and meta["threshold"] == 0.5
    assert meta["finetune"]["steps"] == 40 and meta["finetune"]["crop"] == [20, 64, 64]
    # nothing is replaced: a second run to the same file is refused
    with pytest.raises(TrainingInputError, match="already exists"):
        finetune_lm(model, render.stack, render.mask, iterations=1, checkpoint=ckpt)


def test_finetune_lm_from_lm_default_keeps_its_metadata(render, tmp_path):
    from napari_segneuron._model.vit3d import load_lm_model, load_vit3d

    start = load_lm_model().info["metadata"]
    ckpt = tmp_path / "half.pt"
    small = render.stack[:10, :28, :28]
    result = finetune_lm(None, small, render.mask[:10, :28, :28] | (np.arange(28) == 14)[None, None, :],
                         iterations=2, crop=(20, 112, 112), checkpoint=ckpt, half=True)
    assert result.metadata["finetune"]["crop"] == [10, 28, 28]  # clipped to the image
    loaded = load_vit3d(ckpt)
    meta = loaded.info["metadata"]
    assert meta["steps"] == int(start["steps"]) + 2
    assert meta["threshold"] == start["threshold"]
    assert meta["finetuned_from"]["name"] == "lm_default"
    assert loaded.arch == result.model.arch
    assert next(iter(torch.load(ckpt, weights_only=True)["model_weights"].values())).dtype == torch.float16


def test_minutes_budget_and_learning_rate_decay(render):
    progress = []
    result = finetune_lm(tiny_model(), render.stack, render.mask, minutes=0.02, crop=(10, 32, 32),
                         progress=lambda d, t, m="": progress.append((d, t, m)))
    assert result.iterations >= 1 and 1.2 <= result.wall_time_s < 60
    assert progress[-1][1] == 2 and "of 0.02 min" in progress[-1][2]  # seconds of the budget
    assert result.checkpoint is None  # no file asked for
    assert _lr_factor(0.0, 0, 1) == 1.0 and _lr_factor(1.0, 100, 1) == pytest.approx(0.05)
    assert _lr_factor(0.0, 0, 10) == pytest.approx(0.1)  # warm-up
    assert _lr_factor(0.25, 50, 10) > _lr_factor(0.75, 50, 10)


def test_cancel_keeps_the_last_finished_step(render, tmp_path):
    from napari_segneuron._model.vit3d import load_vit3d

    token = CancelToken()
    ckpt = tmp_path / "cancelled.pt"

    def stop_after_three(it, _loss):
        if it == 3:
            token.cancel()

    with pytest.raises(TrainingCancelled) as info:
        finetune_lm(tiny_model(), render.stack, render.mask, iterations=1000, crop=(10, 32, 32),
                    checkpoint=ckpt, cancel=token, loss_callback=stop_after_three)
    result = info.value.result
    assert result.cancelled and result.iterations == 3 and result.checkpoint == ckpt
    assert load_vit3d(ckpt).info["metadata"]["steps"] == 3
    # cancelled before the first step: nothing written
    token2 = CancelToken()
    token2.cancel()
    with pytest.raises(TrainingCancelled) as info:
        finetune_lm(tiny_model(), render.stack, render.mask, iterations=5, checkpoint=tmp_path / "none.pt",
                    cancel=token2)
    assert info.value.result.iterations == 0 and info.value.result.checkpoint is None
    assert not (tmp_path / "none.pt").exists()


def test_bad_inputs_give_clear_errors(render, tmp_path):
    model = tiny_model()
    img, mask = render.stack, render.mask
    cases = [
        ((img[0], mask[0]), {}, "3D stack"),
        ((img[..., None], mask[..., None]), {}, "3D stack"),
        ((img, mask[:, :32]), {}, "same shape"),
        ((img, np.zeros_like(mask)), {}, "mask is empty"),
        ((img[:4], mask[:4]), {}, r"smaller than one model patch \(5×8×8"),
        ((img, mask), {"iterations": None}, "budget"),
        ((img, mask), {"minutes": -1}, "minutes"),
        ((img, mask), {"crop": (0, 32, 32)}, "crop"),
    ]
    for (image, target), extra, message in cases:
        kwargs = {"iterations": 1, **extra}
        with pytest.raises(TrainingInputError, match=message):
            finetune_lm(model, image, target, **kwargs)
    from napari_segneuron._model import MNet

    with pytest.raises(TrainingInputError, match="light-microscopy"):
        finetune_lm(MNet(kn=(4, 8, 12, 16, 20)), img, mask, iterations=1)
    with pytest.raises(TrainingInputError, match="5×14×14"):  # the bundled model's patch
        finetune_lm(None, img[:4], mask[:4], iterations=1)
    assert not list(tmp_path.iterdir())


# -- the training dock ----------------------------------------------------------------------
def test_training_dock_finetunes_the_lm_model(make_napari_viewer, qtbot, tmp_path, notifications):
    """Model LM: labels layer and Shapes (SWC paths) targets, the LM dock's model in and out."""
    from napari.layers import Shapes

    from napari_segneuron._model.vit3d import save_vit3d
    from napari_segneuron._widgets.trace import TraceWidget
    from napari_segneuron._widgets.train import (MODEL_EM, MODEL_LM, PRETRAIN, START_LM_DOCK, TrainingWidget,
                                                 find_trace_dock)
    from napari_segneuron._widgets.reader import swc_layer_data

    viewer = make_napari_viewer()
    r = render_sample(np.random.default_rng(5), (12, 48, 48))
    viewer.add_image(r.stack, name="lm", scale=r.voxel_size)
    viewer.add_labels(r.mask.astype(np.uint8), name="neuron", scale=r.voxel_size)
    start = save_vit3d(tiny_model(), tmp_path / "tiny_start.pt", metadata={"name": "tiny", "threshold": 0.4})
    _, trace = viewer.window.add_plugin_dock_widget("napari-segneuron", "Trace neurons (LM)")
    assert isinstance(trace, TraceWidget)
    trace.weights_combo.insertItem(0, str(start))
    trace.weights_combo.setCurrentIndex(0)
    _, train = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron training")
    assert isinstance(train, TrainingWidget) and find_trace_dock(train.viewer) is trace

    train.image_combo.set_value(viewer.layers["lm"])
    train.labels_combo.set_value(viewer.layers["neuron"])
    assert train.family.currentText() == MODEL_EM  # a Labels layer alone does not pick the family
    train.family.setCurrentText(MODEL_LM)
    assert tuple(train.settings.crop.value) == (20, 112, 112) and train.settings.lr.value == pytest.approx(3e-4)
    assert train.start_choice() == START_LM_DOCK and train.mask_combo.isHidden()
    assert "neuron voxels" in train.update_mask_note()
    train.settings.iterations.value = 3
    train.settings.minutes.value = 0
    train.settings.lr.value = 1e-3
    train.settings.device.value = "cpu"
    ckpt = tmp_path / "lm-ft.pt"
    train.settings.save_to.value = str(ckpt)
    train.train()
    qtbot.waitUntil(lambda: not train.runner.busy, timeout=120_000)
    assert [m for lvl, m in notifications if lvl == "error"] == []
    assert ckpt.exists() and len(train.loss_plot.points) == 3
    assert str(ckpt) in train.status_label.text() and "tiny" in train.status_label.text()
    # the LM dock now uses the new model; it kept the start's threshold
    assert trace.weights_combo.currentText() == str(ckpt) and trace._model is train.lm_model
    assert trace._load_model() is train.lm_model
    assert train.lm_model.info["metadata"]["threshold"] == 0.4 and train.lm_model.info["metadata"]["steps"] == 3

    # a traced Shapes layer as the target selects LM by itself and trains from the new model
    train.family.setCurrentText(MODEL_EM)
    nodes = r.nodes.copy()
    nodes[:, 2:5] *= np.array(r.voxel_size)[::-1]
    paths, kwargs, _ = swc_layer_data(nodes, r.voxel_size, name="lm SWC")
    layer = viewer.add_shapes(paths, **kwargs)
    assert isinstance(layer, Shapes)
    train.labels_combo.set_value(layer)
    assert train.family.currentText() == MODEL_LM
    _, mask, note = train.lm_target()
    assert dice(mask, r.mask) > 0.99 and "SWC radius" in note
    train.settings.iterations.value = 2
    train.train()
    qtbot.waitUntil(lambda: not train.runner.busy, timeout=120_000)
    second = tmp_path / "lm-ft-2.pt"  # never replaces the first
    assert second.exists() and str(second) in train.status_label.text()
    assert "lm-ft" in train.status_label.text() and trace.weights_combo.currentText() == str(second)
    assert train.lm_model.info["metadata"]["steps"] == 5

    # Pretrain is EM only; EM refuses a Shapes target
    train.mode.setCurrentText(PRETRAIN)
    train.train()
    assert notifications[-1][0] == "error" and "EM model only" in notifications[-1][1]
    train.mode.setCurrentIndex(0)
    train.family.setCurrentText(MODEL_EM)
    assert tuple(train.settings.crop.value) == (16, 96, 96) and not train.mask_combo.isHidden()
    train.train()
    assert notifications[-1][0] == "error" and "Shapes layer" in notifications[-1][1]


def test_training_dock_lm_cancel_before_the_first_step_changes_nothing(make_napari_viewer, qtbot, tmp_path,
                                                                       notifications, monkeypatch):
    """Model LM, cancelled during its first step: no checkpoint, the LM dock keeps its model, and
    the status says so."""
    import importlib

    from napari_segneuron._model.vit3d import save_vit3d
    from napari_segneuron._widgets.train import MODEL_LM

    LM = importlib.import_module("napari_segneuron.training.lm_finetune")
    viewer = make_napari_viewer()
    r = render_sample(np.random.default_rng(5), (12, 48, 48))
    viewer.add_image(r.stack, name="lm", scale=r.voxel_size)
    viewer.add_labels(r.mask.astype(np.uint8), name="neuron", scale=r.voxel_size)
    start = save_vit3d(tiny_model(), tmp_path / "tiny_start.pt", metadata={"name": "tiny"})
    _, trace = viewer.window.add_plugin_dock_widget("napari-segneuron", "Trace neurons (LM)")
    trace.weights_combo.insertItem(0, str(start))
    trace.weights_combo.setCurrentIndex(0)
    _, train = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron training")
    train.image_combo.set_value(viewer.layers["lm"])
    train.labels_combo.set_value(viewer.layers["neuron"])
    train.family.setCurrentText(MODEL_LM)
    train.settings.iterations.value = 50
    train.settings.minutes.value = 0
    train.settings.device.value = "cpu"
    ckpt = tmp_path / "lm-never.pt"
    train.settings.save_to.value = str(ckpt)
    original = LM.LMTrainer.train_step

    def cancelling(self, *args, **kwargs):
        train.runner.token.cancel()  # Cancel pressed during the first step
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LM.LMTrainer, "train_step", cancelling)
    train.train()
    qtbot.waitUntil(lambda: not train.runner.busy, timeout=120_000)
    assert [m for lvl, m in notifications if lvl == "error"] == []
    assert train.last_result.iterations == 0 and train.last_result.checkpoint is None and not ckpt.exists()
    assert train.lm_model is None and trace.weights_combo.currentText() == str(start)
    assert "Cancelled before the first step; the LM model is unchanged" in train.status_label.text()
