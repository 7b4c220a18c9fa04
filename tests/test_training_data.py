"""The shipped extra training crop (training_data/fib25_c_*) and how its boundaries are made."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]


def _gather():
    spec = importlib.util.spec_from_file_location("gather", ROOT / "scripts" / "gather_training_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_with_boundaries_marks_one_voxel_at_each_id_change():
    lab = np.zeros((2, 4, 6), np.uint32)
    lab[..., :3], lab[..., 3:] = 5, 7
    out = _gather().with_boundaries(lab)
    # the last voxel before the change along x becomes 0, nothing else
    assert (out[..., 2] == 0).all() and (out[..., [0, 1]] == 5).all() and (out[..., 3:] == 7).all()


def test_fib25_c_labels_sit_on_the_membranes():
    raw = tifffile.imread(ROOT / "training_data" / "fib25_c_raw.tif")
    lab = tifffile.imread(ROOT / "training_data" / "fib25_c_labels.tif")
    assert raw.shape == lab.shape == (50, 100, 200)
    frac = (lab == 0).mean()
    assert 0.03 < frac < 0.15
    # boundary voxels are the dark membranes: far darker than the neurite interiors
    assert raw[lab == 0].mean() < 0.6 * raw[lab > 0].mean()
    assert len(np.unique(lab)) > 30
