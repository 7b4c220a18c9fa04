"""Weights declare the foreground threshold segmentation uses with them (the bundled model: 0.75).

The CLI, the demo and segmenting a saved prediction take the declared value unless told
otherwise; weights that declare none keep the package default; the dock's box follows the loaded
weights until the user changes it (tests/test_widgets_declared_fg.py)."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_segneuron._model import MNet, load_model, load_named, save_checkpoint
from napari_segneuron._model.registry import PACKAGE_WEIGHTS, declared_fg_threshold
from napari_segneuron.cli import main
from napari_segneuron.io import read_metadata, read_prediction, read_volume
from napari_segneuron.segmentation import DEFAULT_FG_THRESHOLD, foreground_threshold_for


@pytest.fixture(scope="module")
def fib_crop(tmp_path_factory):
    """16 slices of the bundled FIB-25 sample: real EM, where the default model's foreground matters."""
    from napari_segneuron.samples import load_labels, load_raw

    path = tmp_path_factory.mktemp("fib") / "fib.tif"
    tifffile.imwrite(path, load_raw()[:16])
    return path, load_labels()[:16]


def test_bundled_weights_declare_their_foreground_threshold():
    # read from the checkpoint itself, so loading the file by path gives it too
    assert load_model(PACKAGE_WEIGHTS / "default.pt").info["fg_threshold"] == 0.75
    assert load_named("default").info["fg_threshold"] == 0.75
    assert declared_fg_threshold("default") == 0.75
    assert foreground_threshold_for(load_named("default")) == 0.75


@pytest.mark.parametrize("declared, expected", [(0.6, 0.6), (None, DEFAULT_FG_THRESHOLD), (1.5, DEFAULT_FG_THRESHOLD),
                                                ("high", DEFAULT_FG_THRESHOLD), (True, DEFAULT_FG_THRESHOLD)])
def test_a_checkpoint_declares_a_threshold_only_with_a_number_in_0_1(tmp_path, declared, expected):
    meta = {"name": "t"} if declared is None else {"name": "t", "fg_threshold": declared}
    path = save_checkpoint(MNet(kn=(4, 8, 8, 16, 16)), tmp_path / "t.pt", metadata=meta)
    model = load_model(path)
    assert foreground_threshold_for(model) == expected
    assert foreground_threshold_for(model.info) == expected
    assert declared_fg_threshold(path) == (0.6 if declared == 0.6 else None)
    # a prediction's provenance carries it as model_fg_threshold
    assert foreground_threshold_for({"model_fg_threshold": declared}) == expected
    assert foreground_threshold_for(None) == DEFAULT_FG_THRESHOLD


def _background_fraction(path) -> float:
    labels, _ = read_volume(path)
    return float((np.asarray(labels) == 0).mean())


def test_segment_uses_the_declared_threshold_and_the_flag_overrides_it(tmp_path, fib_crop, capsys):
    raw, _gt = fib_crop
    declared, forced = tmp_path / "declared.tif", tmp_path / "forced.tif"
    # --membrane-fill 0: the background the foreground threshold makes stays visible as 0
    assert main(["segment", str(raw), "-o", str(declared), "--weights", "default", "--membrane-fill", "0"]) == 0
    assert "foreground threshold 0.75: the value these weights declare" in capsys.readouterr().err
    assert main(["segment", str(raw), "-o", str(forced), "--weights", "default", "--fg-threshold", "0.5",
                 "--membrane-fill", "0"]) == 0
    assert "these weights declare" not in capsys.readouterr().err
    assert read_metadata(declared)["fg_threshold"] == 0.75 and read_metadata(forced)["fg_threshold"] == 0.5
    # the declared threshold leaves more voxels next to membranes as background
    assert _background_fraction(declared) > _background_fraction(forced) + 0.01


def test_segmenting_a_saved_prediction_takes_the_threshold_from_its_provenance(tmp_path, fib_crop):
    raw, _gt = fib_crop
    pred, direct, later = tmp_path / "pred.zarr", tmp_path / "direct.tif", tmp_path / "later.tif"
    assert main(["predict", str(raw), "-o", str(pred), "--weights", "default"]) == 0
    assert read_metadata(pred)["model_fg_threshold"] == 0.75
    assert main(["segment", str(pred), "-o", str(later)]) == 0
    assert main(["segment", str(raw), "-o", str(direct), "--weights", "default"]) == 0
    assert read_metadata(later)["fg_threshold"] == 0.75
    np.testing.assert_array_equal(read_volume(later)[0], read_volume(direct)[0])
    # by default the membranes between neurites are given to them: (nearly) no background left
    assert read_metadata(later)["membrane_fill"] == 3 and _background_fraction(later) < 0.01


def test_weights_without_a_declared_threshold_keep_the_package_default(tmp_path, fib_crop):
    raw, _gt = fib_crop
    torch.manual_seed(0)
    ck = save_checkpoint(MNet(kn=(4, 8, 8, 16, 16)), tmp_path / "plain.pt", metadata={"name": "plain"})
    out = tmp_path / "plain.tif"
    # a random model's foreground is near 0.5 everywhere: 0.75 would leave nothing to segment
    assert main(["segment", str(raw), "-o", str(out), "--weights", str(ck)]) == 0
    assert read_metadata(out)["fg_threshold"] == DEFAULT_FG_THRESHOLD


def test_the_declared_threshold_scores_better_on_the_sample(tmp_path, fib_crop):
    """On real data the declared 0.75 is no worse than 0.5 (it was picked on fib25_b, not this crop)."""
    from napari_segneuron.metrics import evaluate

    raw, gt = fib_crop
    pred = tmp_path / "p.zarr"
    assert main(["predict", str(raw), "-o", str(pred), "--weights", "default"]) == 0
    vis = {}
    for fg in ("0.5", "0.75"):
        out = tmp_path / f"s{fg}.tif"
        assert main(["segment", str(pred), "-o", str(out), "--fg-threshold", fg]) == 0
        vis[fg] = evaluate(read_volume(out)[0], gt).vi
    assert vis["0.75"] <= vis["0.5"] + 0.02, vis
    aff, fg_map = read_prediction(pred)
    assert 0.0 < float((fg_map < 0.75).mean()) < 0.5  # the threshold cuts a real share, not everything
