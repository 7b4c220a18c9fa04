"""The tile plan is fixed by the command, not the machine, and barely changes the prediction."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_segneuron.autotune import Tuning
from napari_segneuron.inference import DEFAULT_TILING, Predictor

DATA = "/work/shared/data/fib25_b_raw.tif"


@pytest.fixture(scope="module")
def crop():
    try:
        vol = tifffile.imread(DATA)
    except FileNotFoundError:
        pytest.skip("fib25_b not available")
    return np.ascontiguousarray(vol[:40, :100, :160])


@pytest.fixture(scope="module")
def model():
    from napari_segneuron._model.registry import load_named

    return load_named("default", device="cpu")


def _tuning(curve):
    return Tuning(machine="m", model="a", threads=1, channels_last=False, precision="fp32", reduced_speedup=0.0,
                  curve=curve)


def test_a_tuning_never_changes_the_tile_plan(model, crop):
    # two machines: cost flat in tile size (prefers big tiles) vs steeply rising (prefers small ones)
    flat = _tuning([[16 * 96 * 96, 5.0], [32 * 224 * 224, 5.0]])
    rising = _tuning([[8 * 32 * 32, 1.0], [16 * 96 * 96, 30.0]])
    shape = (50, 100, 200)
    plans = [Predictor(model, tune=t).plan(shape) for t in (flat, rising, None)]
    assert plans[0] == plans[1] == plans[2]
    assert plans[2].tile[0] <= DEFAULT_TILING.tile[0]
    a = [Predictor(model, tune=t).predict(crop)[0] for t in (flat, rising)]
    np.testing.assert_array_equal(a[0], a[1])


def test_shared_norm_statistics_bring_tile_plans_together(model, crop):
    def diff(shared: bool) -> float:
        preds = [np.concatenate([aff, fg[None]]) for aff, fg in
                 (Predictor(model, tile=t, shared_stats=shared).predict(crop) for t in ((16, 64, 64), (40, 112, 112)))]
        return float(np.abs(preds[0] - preds[1]).mean())

    own, shared = diff(False), diff(True)
    assert shared < 0.9 * own, (own, shared)


def test_one_tile_with_shared_statistics_is_the_plain_forward(model, crop):
    # the statistics region covers a volume of one default tile: nothing changes there
    vol = crop[:32, :96, :96]
    a = Predictor(model, shared_stats=True).predict_raw(vol)
    b = Predictor(model, shared_stats=False).predict_raw(vol)
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_two_fresh_autotune_caches_give_the_same_labels(tmp_path, monkeypatch, crop):
    """As on two machines: each run probes into its own empty cache; the labels are identical."""
    from napari_segneuron import autotune
    from napari_segneuron.cli import main

    monkeypatch.setattr(autotune, "DEFAULT_BUDGET_S", 2.0)
    monkeypatch.setenv("NAPARI_SEGNEURON_AUTOTUNE", "on")  # the suite turns the automatic probe off
    stack = tmp_path / "crop.tif"
    tifffile.imwrite(stack, crop)
    labels = []
    for run in ("a", "b"):
        monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path / f"cache_{run}"))
        out = tmp_path / f"{run}.tif"
        assert main(["segment", str(stack), "-o", str(out)]) == 0
        assert (tmp_path / f"cache_{run}" / "autotune.json").exists()
        labels.append(tifffile.imread(out))
    np.testing.assert_array_equal(labels[0], labels[1])
