"""Calibration on one painted block: magnification and thresholds chosen by the painted ids.

The real-data case: the FIB-25 sample given a voxel size half its true one (10 nm instead of
the ~20 nm the model was trained at), so the plugin shrinks it 2x and neurites look half their
size. Calibration must find magnification 2 from a painted block and undo most of the damage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from napari_segneuron.calibration import (
    MIN_GAIN,
    Calibration,
    calibrate,
    magnified_voxel_size,
    painted_box,
    plateau_centre,
    sections_only,
)
from napari_segneuron.io import InputError

X = slice(100, 200)  # a 50×100×100 part of the sample keeps this to seconds
BLOCK = (slice(5, 45), slice(0, 100), slice(10, 90))


@pytest.fixture(scope="module")
def predictor():
    from napari_segneuron._model import fetch_weights, load_model
    from napari_segneuron.inference import Predictor

    return Predictor(load_model(fetch_weights("default"), device="cpu"), device="cpu")


@pytest.fixture(scope="module")
def sample_block(sample_raw, sample_labels):
    raw = np.ascontiguousarray(sample_raw[:, :, X])
    truth = sample_labels[:, :, X].astype(np.uint32)
    painted = np.zeros_like(truth)
    painted[BLOCK] = truth[BLOCK]
    return raw, truth, painted


@pytest.fixture(scope="module")
def halved(predictor, sample_block):
    raw, _, painted = sample_block
    calls = []
    c = calibrate(predictor, raw, painted, voxel_size=(10, 10, 10), magnifications=(1.0, 2.0),
                  progress=lambda d, t, m="": calls.append((d, t, m)))
    c.progress_calls = calls
    return c


def test_magnified_voxel_size():
    assert magnified_voxel_size((50, 4.6, 4.6), (20, 20, 20), 1.0) == (50, 4.6, 4.6)
    assert magnified_voxel_size((50, 4.0, 4.0), (20, 20, 20), 1.5) == pytest.approx((75, 6, 6))
    assert magnified_voxel_size(None, (20, 20, 20), 2.0) == (40, 40, 40)  # unknown: the model's own, magnified
    assert magnified_voxel_size(None, (20, 20, 20), 1.0) is None
    with pytest.raises(InputError, match="declare their voxel size"):
        magnified_voxel_size((10, 10, 10), None, 2.0)
    for bad in (0, -1, float("nan")):
        with pytest.raises(InputError, match="positive"):
            magnified_voxel_size((10, 10, 10), (20, 20, 20), bad)


def test_sections_only():
    ids3d = np.zeros((3, 4, 4), np.uint32)
    ids3d[:, :2] = 1  # one neuron through all sections
    ids3d[:, 2:] = 2
    assert not sections_only(ids3d)
    ids2d = ids3d + np.arange(3, dtype=np.uint32)[:, None, None] * 10  # fresh ids per section
    assert sections_only(ids2d)
    assert not sections_only(ids3d[:1])


def test_finds_the_magnification_that_undoes_a_wrong_voxel_size(halved, sample_block):
    from napari_segneuron.segmentation import DEFAULT_THRESHOLD

    c = halved
    assert isinstance(c, Calibration)
    assert c.box == ((5, 45), (0, 100), (10, 90))
    assert not c.per_section  # the sample's ids are 3D
    assert c.magnify == 2.0
    assert c.improved and c.vi < 0.5 * c.default_vi
    assert c.default["magnify"] == 1.0 and c.default["threshold"] == DEFAULT_THRESHOLD
    assert c.default["fg_threshold"] == 0.75  # what the bundled weights declare
    # every setting was scored: 2 magnifications x {0.5, 0.75} x {median, median-all} x the thresholds
    assert len(c.table) == 2 * 2 * 2 * len({r["threshold"] for r in c.table})
    assert {r["scoring"] for r in c.table} == {"median", "median-all"}
    assert c.default["scoring"] == "median"  # 'auto' for an isotropic stack
    assert min(r["vi"] for r in c.table) <= c.vi <= min(r["vi"] for r in c.table) + MIN_GAIN
    assert "magnification 2" in c.summary()
    done = [d for d, t, _ in c.progress_calls]
    assert done == sorted(done) and done[-1] == 1000 and {t for _, t, _ in c.progress_calls} == {1000}
    assert any("predicting at magnification 2" in m for _, _, m in c.progress_calls)


def test_keeps_the_defaults_at_the_true_scale(predictor, sample_block):
    """At the scale it was trained at, shrinking the training crop does not help: the defaults stay."""
    raw, _, painted = sample_block
    c = calibrate(predictor, raw, painted, magnifications=(0.5, 1.0), fg_thresholds=(0.75,),
                  thresholds=(0.48,))
    assert {r["magnify"] for r in c.table} == {0.5, 1.0}
    assert c.magnify == 1.0 and c.threshold == 0.48
    assert c.vi == c.default_vi


def test_scores_section_by_section_when_ids_are_2d(predictor, sample_block):
    raw, truth, _ = sample_block
    per_section = truth.astype(np.int64) + np.arange(truth.shape[0])[:, None, None] * (int(truth.max()) + 1)
    per_section[truth == 0] = 0
    painted = np.zeros_like(per_section)
    painted[BLOCK] = per_section[BLOCK]
    c = calibrate(predictor, raw, painted, magnifications=(1.0,), fg_thresholds=(0.75,), thresholds=(0.48,))
    assert c.per_section
    # the same 2D ids scored in 3D: every 3D segment spans several ids, counted as merges
    c3 = calibrate(predictor, raw, painted, magnifications=(1.0,), fg_thresholds=(0.75,), thresholds=(0.48,),
                   per_section=False)
    assert not c3.per_section
    assert c.vi < c3.vi


def test_bad_input_is_refused(predictor, sample_block):
    raw, truth, painted = sample_block
    with pytest.raises(InputError, match="Nothing is painted"):
        calibrate(predictor, raw, np.zeros_like(painted))
    one = np.zeros_like(painted)
    one[10:20, 10:20, 10:20] = 3
    with pytest.raises(InputError, match="at least two neurons"):
        calibrate(predictor, raw, one)
    with pytest.raises(InputError, match="labels of its shape"):
        calibrate(predictor, raw, painted[:, :50])
    with pytest.raises(InputError, match="integer"):
        calibrate(predictor, raw, painted.astype(np.float32))


def test_painted_box():
    a = np.zeros((4, 5, 6), np.uint8)
    assert painted_box(a) is None
    a[1, 2, 3] = a[2, 4, 5] = 1
    assert painted_box(a) == ((1, 3), (2, 5), (3, 6))


def test_cli_calibrate_prints_and_writes_the_choice(tmp_path, sample_block, capsys):
    import tifffile

    from napari_segneuron.cli import main

    raw, _, painted = sample_block
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "painted.tif", painted)
    out = tmp_path / "cal.json"
    rc = main(["calibrate", str(tmp_path / "raw.tif"), str(tmp_path / "painted.tif"), "--voxel-size", "10,10,10",
               "--magnifications", "1,2", "--fg-thresholds", "0.75", "--magnify", "1", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "--magnify 2" in text and "napari-segneuron segment" in text
    assert "defaults (magnification 1): VI" in text
    doc = json.loads(out.read_text())
    assert doc["magnify"] == 2.0 and doc["vi"] < 0.5 * doc["default_vi"]
    assert doc["scoring"] in ("median", "median-all") and doc["default"]["scoring"] == "median"
    assert doc["box"] == [[5, 45], [0, 100], [10, 90]]
    # without --magnify the defaults to beat are segment's own: the label-free estimate (~2) already
    # takes most of the damage away, so that is what the block is scored against
    auto = tmp_path / "auto.json"
    assert main(["calibrate", str(tmp_path / "raw.tif"), str(tmp_path / "painted.tif"), "--voxel-size", "10,10,10",
                 "--magnifications", "1", "--fg-thresholds", "0.75", "--json", str(auto)]) == 0
    doc_auto = json.loads(auto.read_text())
    assert 1.7 <= doc_auto["default"]["magnify"] <= 2.3
    assert doc_auto["default_vi"] < 0.5 * doc["default_vi"]
    assert "magnify auto: magnification" in capsys.readouterr().err
    # refusals: --magnify is calibrate's to choose; labels of another shape
    assert main(["calibrate", str(tmp_path / "raw.tif"), str(tmp_path / "painted.tif"), "--magnify", "2"]) == 2
    tifffile.imwrite(tmp_path / "small.tif", painted[:, :50])
    assert main(["calibrate", str(tmp_path / "raw.tif"), str(tmp_path / "small.tif")]) == 2
    assert "must cover the image" in capsys.readouterr().err


def test_segment_with_magnify_matches_a_magnified_voxel_size(tmp_path, sample_block):
    """``segment --magnify 2`` on a stack given as 10 nm predicts exactly as if it were given as 20 nm."""
    import tifffile

    from napari_segneuron.cli import main

    raw, _, _ = sample_block
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    assert main(["segment", str(tmp_path / "raw.tif"), "-o", str(a), "--voxel-size", "10,10,10", "--magnify", "2"]) == 0
    assert main(["segment", str(tmp_path / "raw.tif"), "-o", str(b), "--voxel-size", "20,20,20"]) == 0
    np.testing.assert_array_equal(tifffile.imread(a), tifffile.imread(b))
    assert main(["segment", str(tmp_path / "raw.tif"), "-o", str(tmp_path / "c.zarr"), "--magnify", "2",
                 "--block", "32,64,64"]) == 2  # blockwise does not resample


def test_training_block_on_a_magnified_grid_declares_its_true_voxel_size(sample_block):
    from napari_segneuron.training.grid import block_on_model_grid

    raw, truth, _ = sample_block
    img, lab, mask, meta = block_on_model_grid(raw, truth, None, (10, 10, 10), (20, 20, 20), magnify=2.0)
    assert img.shape == raw.shape  # 10 nm shown 2x larger is the model's 20 nm grid: no resampling
    assert meta["voxel_size_nm"] == [10.0, 10.0, 10.0] and meta["magnify"] == 2.0
    img, lab, mask, meta = block_on_model_grid(raw, truth, None, (20, 20, 20), (20, 20, 20), magnify=1.5)
    assert img.shape == (75, 150, 150) and lab.shape == img.shape
    assert meta["voxel_size_nm"] == pytest.approx([13.333, 13.333, 13.333], rel=1e-3)
    assert meta["adapted_on_voxel_size_nm"] == [20.0, 20.0, 20.0]


def test_float_and_lazy_images_are_read_as_the_whole_stack_is(predictor, sample_block, halved):
    """A float stack in any range (here the sample x 3 + 50) is scaled with the whole stack's range,
    so the block gives what the uint8 stack gives; a dask stack is read only around the block."""
    import dask.array as da

    raw, _, painted = sample_block
    kwargs = dict(voxel_size=(10, 10, 10), magnifications=(1.0, 2.0))
    shifted = calibrate(predictor, raw.astype(np.float32) * 3 + 50, painted, **kwargs)
    assert shifted.magnify == halved.magnify and shifted.vi == pytest.approx(halved.vi, abs=0.02)
    lazy = calibrate(predictor, da.from_array(raw, chunks=(10, 50, 50)), painted, **kwargs)
    assert lazy.table == halved.table


def test_plateau_centre_steps_back_from_the_cliff():
    """The minimum at the edge of a flat run (a block's curve, measured on the VNC: 0.46 next to a
    jump at 0.50) gives way to the middle of the run; a sharp minimum stays."""
    vis = {0.02: 0.277, 0.06: 0.165, 0.10: 0.140, 0.14: 0.136, 0.18: 0.131, 0.30: 0.131, 0.42: 0.127,
           0.46: 0.126, 0.48: 0.127, 0.50: 0.172, 0.54: 0.215}
    table = [{"magnify": 1.5, "fg_threshold": 0.5, "threshold": t, "vi": v} for t, v in vis.items()]
    table += [{"magnify": 1.0, "fg_threshold": 0.5, "threshold": t, "vi": 0.1} for t in (0.3, 0.4)]  # other curves
    best = next(r for r in table if r["threshold"] == 0.46)
    assert plateau_centre(table, best)["threshold"] == 0.30  # run 0.10-0.48 (VI <= 0.146), middle 0.29
    sharp = [{"magnify": 1.0, "fg_threshold": 0.75, "threshold": t, "vi": v}
             for t, v in {0.3: 0.5, 0.4: 0.2, 0.5: 0.5}.items()]
    assert plateau_centre(sharp, sharp[1]) is sharp[1]
