"""Membrane voxels (background next to neurites) go to the neurite on their side of the membrane."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_segneuron.io import InputError
from napari_segneuron.segmentation import DEFAULT_MEMBRANE_FILL, agglomerate, evaluate, fill_membranes
from napari_segneuron.segmentation import membranes as membranes_module

DATA = Path("/work/shared/data")


def _two_neurites(fg_profile: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neurite 1 at x < 10, a membrane with the given foreground profile from x = 10, neurite 2 after it."""
    width = len(fg_profile)
    shape = (4, 6, 10 + width + 10)
    frags = np.zeros(shape, np.uint32)
    frags[..., :10] = 1
    frags[..., 10 + width:] = 2
    fg = np.ones(shape, np.float32)
    fg[..., 10:10 + width] = np.asarray(fg_profile, np.float32)
    return frags, fg, fg < 0.75


def test_the_membrane_is_split_where_the_foreground_is_lowest_not_halfway():
    # the membrane's darkest voxel (x = 11) sits next to neurite 1: halfway (x = 13) would be wrong
    frags, fg, bg = _two_neurites([0.5, 0.01, 0.2, 0.3, 0.4, 0.5])
    assert fill_membranes(frags, fg, bg, radius=3) == int(bg.sum())
    row = frags[0, 0, 9:17]
    assert row[0] == 1 and row[1] == 1  # neurite 1, and the voxel before the minimum
    assert (row[3:] == 2).all(), row  # x 12-15: past the minimum, neurite 2's side
    # the Euclidean nearest neurite would give x 12 to neurite 1
    assert row[3] == 2


def test_wide_background_stays_background_and_zero_radius_changes_nothing():
    frags, fg, bg = _two_neurites([0.1] * 12)  # 12 voxels of glia-like background
    before = frags.copy()
    assert fill_membranes(frags.copy(), fg, bg, radius=0) == 0
    filled = frags.copy()
    n = fill_membranes(filled, fg, bg, radius=3)
    assert n == 3 * 2 * 4 * 6  # three voxels from each side, every row
    np.testing.assert_array_equal(filled[..., 13:19], 0)  # further than 3 from both neurites
    np.testing.assert_array_equal(filled[~bg], before[~bg])  # neurite voxels untouched
    with pytest.raises(ValueError):
        fill_membranes(frags, fg, bg, radius=-1)


def test_slabs_give_the_whole_volume_result(monkeypatch):
    rng = np.random.default_rng(0)
    fg = rng.random((40, 24, 24)).astype(np.float32)
    from scipy import ndimage

    fg = ndimage.gaussian_filter(fg, 1.5)
    fg = (fg - fg.min()) / (fg.max() - fg.min())
    bg = fg < 0.5
    frags = ndimage.label(~bg)[0].astype(np.uint32)
    whole = frags.copy()
    fill_membranes(whole, fg, bg, radius=3)
    monkeypatch.setattr(membranes_module, "_SLAB_VOXELS", 24 * 24 * 20)  # 40 planes in slabs of 6 + margins
    slabbed = frags.copy()
    fill_membranes(slabbed, fg, bg, radius=3)
    assert (whole[bg] > 0).mean() > 0.5
    assert (slabbed != whole).mean() < 0.002


@pytest.fixture(scope="module")
def fib25_b_prediction():
    """The bundled default model's prediction of a fib25_b crop (validation data) and its truth."""
    import torch

    from napari_segneuron._model import load_named
    from napari_segneuron.inference import Predictor

    if not (DATA / "fib25_b_raw.tif").exists():
        pytest.skip("needs ../shared/data/fib25_b_raw.tif")
    torch.set_num_threads(2)
    region = np.s_[:32, :, :128]
    raw = tifffile.imread(DATA / "fib25_b_raw.tif")[region]
    gt = tifffile.imread(DATA / "fib25_b_labels.tif")[region]
    aff, fg = Predictor(load_named("default"), device="cpu").predict(raw)
    return aff, fg, gt


def test_filled_membranes_score_better_on_held_out_fib25(fib25_b_prediction):
    aff, fg, gt = fib25_b_prediction
    kept = agglomerate(aff, fg, fg_threshold=0.75, membrane_fill=0)
    filled = agglomerate(aff, fg, fg_threshold=0.75)
    assert filled.info["membrane_fill"] == DEFAULT_MEMBRANE_FILL and filled.info["membrane_voxels_filled"] > 0
    a, b = kept.labels(0.48), filled.labels(0.48)
    bg = fg < 0.75
    assert (a[bg] == 0).all() and 0.08 < bg.mean() < 0.4
    assert (b == 0).mean() < 0.01  # membranes here are thin: (nearly) every voxel is in a neurite
    # neurite voxels keep their segment (without small-segment merging, which sees the new sizes)
    np.testing.assert_array_equal(kept.labels(0.48, min_size=0)[~bg], filled.labels(0.48, min_size=0)[~bg])
    va, vb = evaluate(a, gt), evaluate(b, gt)  # the metric gives background the nearest segment
    assert vb.vi < va.vi - 0.005, (va, vb)


def test_bad_membrane_fill_is_refused(fib25_b_prediction):
    aff, fg, _ = fib25_b_prediction
    for bad in (-1, 1.5, "3"):
        with pytest.raises(InputError, match="membrane_fill"):
            agglomerate(aff, fg, membrane_fill=bad)
