"""Label-free magnification ('--magnify auto'): the model's neurite half-width against its reference.

Real data: the bundled FIB-25 sample at its true scale (the model's 20 nm) must keep
magnification 1; typed in as 10 nm (so the plugin shrinks it 2x and neurites look half as wide)
the estimate must find about 2, from the image alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_segneuron.scale_estimate import (
    DEAD_ZONE,
    ScaleEstimate,
    estimate_magnification,
    measured_halfwidth,
    neurite_halfwidth,
    reference_halfwidth,
    sample_boxes,
)


@pytest.fixture(scope="module")
def predictor():
    from napari_segneuron._model import load_named
    from napari_segneuron.inference import Predictor

    return Predictor(load_named("default", device="cpu"), device="cpu")


def test_default_weights_declare_the_reference_they_measure(predictor, sample_raw):
    """default.pt's neurite_halfwidth is what scripts/set_neurite_reference.py measures on the sample."""
    declared = reference_halfwidth(predictor.model)
    assert declared == pytest.approx(5.627, abs=1e-3)
    width, count = measured_halfwidth(predictor, [sample_raw], None)
    assert count > 100_000
    assert width == pytest.approx(declared, rel=0.01)
    # a predictor with "min" test-time augmentation is measured without it, as the reference was
    predictor.tta = "min"
    try:
        assert measured_halfwidth(predictor, [sample_raw], None) == (width, count)
        assert predictor.tta == "min"
    finally:
        predictor.tta = False


def test_true_scale_keeps_one_and_half_scale_finds_two(predictor, sample_raw):
    at_true = estimate_magnification(predictor, sample_raw, (20, 20, 20))
    assert at_true.magnify == 1.0 and at_true.raw == pytest.approx(1.0, abs=0.02)
    assert len(at_true.halfwidths) == 1  # inside the dead zone: no second round
    progress = []
    halved = estimate_magnification(predictor, sample_raw, (10, 10, 10),
                                    progress=lambda d, t, m="": progress.append((d, t, m)))
    assert 1.7 <= halved.raw <= 2.3 and 1.7 <= halved.magnify <= 2.3, halved.summary()
    assert [m for m, _ in halved.halfwidths][0] == 1.0 and len(halved.halfwidths) == 2
    assert halved.halfwidths[1][1] > halved.halfwidths[0][1]  # magnified, neurites look wider
    assert progress[-1][0] == progress[-1][1] and "scale" in progress[-1][2]
    assert [d for d, _, _ in progress] == sorted(d for d, _, _ in progress)
    assert "magnification" in halved.summary() and json.dumps(halved.record())


def test_dead_zone_and_limits_on_real_predictions(predictor, sample_raw):
    """The same measurement against other references: below 1.25 counts as 1, beyond it is used."""
    width, _ = measured_halfwidth(predictor, [sample_raw], None)
    assert estimate_magnification(predictor, sample_raw, reference=width * 1.15).magnify == 1.0
    assert estimate_magnification(predictor, sample_raw, reference=width / 1.15).magnify == 1.0
    bigger = estimate_magnification(predictor, sample_raw, reference=width * 1.5, rounds=1)
    assert bigger.magnify == pytest.approx(1.5, abs=0.05)
    assert estimate_magnification(predictor, sample_raw, reference=width * 10, rounds=1).magnify == 3.0
    # neurites wider than the reference: never shrunk (the model handles wide ones; thin ones it misses)
    wider = estimate_magnification(predictor, sample_raw, reference=width / 2)
    assert wider.magnify == 1.0 and wider.raw == pytest.approx(0.5, rel=0.01) and len(wider.halfwidths) == 1
    assert DEAD_ZONE == 1.25


def test_no_estimate_without_reference_or_content(predictor, sample_raw):
    from napari_segneuron.inference import Predictor
    from napari_segneuron.io import InputError

    bare = Predictor(predictor.model, device="cpu")
    info = dict(predictor.model.info)
    try:
        predictor.model.info = {k: v for k, v in info.items() if k != "neurite_halfwidth"}
        none = estimate_magnification(bare, sample_raw)
    finally:
        predictor.model.info = info
    assert none.magnify == 1.0 and none.raw is None and "no neurite half-width" in none.note
    flat = estimate_magnification(predictor, np.full((16, 64, 64), 128, np.uint8))
    assert flat.magnify == 1.0 and flat.raw is None and "no structure" in flat.note
    assert "magnification 1" in flat.summary()
    noise = estimate_magnification(predictor, np.random.default_rng(0).integers(0, 255, (16, 64, 64), dtype=np.uint8))
    assert noise.magnify == 1.0 and noise.raw is None
    # real EM, but a sliver: too little neurite interior to measure
    sliver = estimate_magnification(predictor, sample_raw[:2, :40, :40])
    assert sliver.magnify == 1.0 and sliver.raw is None and "too little neurite interior" in sliver.note
    with pytest.raises(InputError):
        estimate_magnification(predictor, np.zeros((2, 4, 64, 64), np.uint8))


def test_neurite_halfwidth_of_a_known_shape():
    """Two 21-voxel-wide stripes between boundaries: mean distance to the boundary is known."""
    aff = np.ones((3, 1, 40, 43), np.float32)
    aff[1:, :, :, 21] = 0.0  # one boundary column splits the section into two 21-wide halves
    fg = np.ones((1, 40, 43), np.float32)
    width, n = neurite_halfwidth(aff, fg)
    # distance to the boundary column (the section edge is not a boundary): 1..21 on each side
    assert n == 40 * 42 and width == pytest.approx(np.mean(np.arange(1, 22)), rel=1e-6)
    fg[:, :20] = 0.0  # background is not neurite
    assert neurite_halfwidth(aff, fg)[1] == 20 * 42


def test_sample_boxes_spread_and_clip():
    assert sample_boxes((10, 50, 50), (32, 160, 160)) == [(slice(0, 10), slice(0, 50), slice(0, 50))]
    boxes = sample_boxes((100, 1000, 1000), (32, 160, 160))
    assert len(boxes) == 3 and boxes[0] == (slice(34, 66), slice(420, 580), slice(420, 580))
    assert all(b.stop - b.start == s for box in boxes for b, s in zip(box, (32, 160, 160)))


def test_cli_segment_auto_by_default_and_a_number_when_given(tmp_path, sample_raw, capsys):
    from napari_segneuron.cli import main
    from napari_segneuron.io import read_metadata

    raw = np.ascontiguousarray(sample_raw[:, :, 100:200])
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    out = tmp_path / "auto.zarr"
    assert main(["segment", str(tmp_path / "raw.tif"), "-o", str(out), "--voxel-size", "10,10,10"]) == 0
    meta = read_metadata(out)
    assert 1.7 <= meta["magnify"] <= 2.3 and meta["magnify_estimate"]["magnify"] == meta["magnify"]
    assert "magnify auto: magnification" in capsys.readouterr().err
    fixed = tmp_path / "fixed.zarr"
    assert main(["segment", str(tmp_path / "raw.tif"), "-o", str(fixed), "--voxel-size", "10,10,10",
                 "--magnify", "1"]) == 0
    meta = read_metadata(fixed)
    assert meta["magnify"] == 1.0 and "magnify_estimate" not in meta
    assert "magnify auto" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", str(tmp_path / "raw.tif"), "-o", str(tmp_path / "x.zarr"), "--magnify", "big"])
    assert "expected a positive number or 'auto'" in capsys.readouterr().err


def test_finetune_keeps_the_reference_only_at_the_estimated_scale(tmp_path, sample_raw, sample_labels):
    """auto: trains where prediction would and keeps the reference; a hand-picked magnification
    drops it, so 'auto' is not used with weights that learned another grid."""
    from napari_segneuron.cli import main
    from napari_segneuron.training.checkpoints import read_checkpoint

    tifffile.imwrite(tmp_path / "raw.tif", np.ascontiguousarray(sample_raw[:16, :64, :96]))
    tifffile.imwrite(tmp_path / "lab.tif", np.ascontiguousarray(sample_labels[:16, :64, :96]).astype(np.uint32))
    common = [str(tmp_path / "raw.tif"), str(tmp_path / "lab.tif"), "--iterations", "1", "--crop", "16,32,32",
              "--threads", "1"]
    assert main(["finetune", *common, "-o", str(tmp_path / "auto.pt")]) == 0
    assert read_checkpoint(tmp_path / "auto.pt")["metadata"]["neurite_halfwidth"] == pytest.approx(5.627)
    assert main(["finetune", *common, "--magnify", "1", "-o", str(tmp_path / "hand.pt")]) == 0
    assert read_checkpoint(tmp_path / "hand.pt")["metadata"].get("neurite_halfwidth") is None
    from napari_segneuron._model import load_model

    assert load_model(tmp_path / "hand.pt").info["neurite_halfwidth"] is None


def test_scale_estimate_dataclass_summary():
    e = ScaleEstimate(1.45, 1.46, 5.63, [(1.0, 4.19), (1.34, 5.17)])
    assert e.summary().startswith("magnification 1.45 (estimate 1.46")
    assert e.record()["halfwidths"] == [[1.0, 4.19], [1.34, 5.17]]


def test_estimate_can_be_cancelled(predictor, sample_raw):
    from napari_segneuron.cancel import CancelToken, Cancelled

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        estimate_magnification(predictor, sample_raw, (10, 10, 10), cancel=token)
