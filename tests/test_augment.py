"""Scale, contrast, histogram and frequency-domain augmentations (training/augment.py, CropSampler)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_segneuron.training import augment as A
from napari_segneuron.training.data import CropSampler, TrainVolume

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def stripes(shape=(24, 128, 512), period=16):
    """Labels: one id per x-stripe of width ``period``; image: dark one-voxel membranes between stripes."""
    x = np.arange(shape[2])
    lab = np.broadcast_to(x // period + 1, shape).astype(np.int64).copy()
    img = np.full(shape, 200, np.uint8)
    img[..., x % period == 0] = 40
    return img, lab


def mean_run(lab: np.ndarray) -> float:
    """Mean length of runs of one id along x (border runs dropped)."""
    runs = []
    for row in lab.reshape(-1, lab.shape[-1]):
        b = np.flatnonzero(np.diff(row) != 0)
        runs.extend(np.diff(b))
    return float(np.mean(runs))


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_zoom_changes_apparent_scale_by_the_factor(factor):
    img, lab = stripes()
    cfg = A.AugmentConfig.none()
    cfg.zoom, cfg.zoom_range, cfg.zoom_xy_only = 1.0, (factor, factor), 1.0
    s = CropSampler([TrainVolume(img, lab)], (8, 64, 64), cfg, seed=1)
    widths = []
    for _ in range(6):
        _, zl, _ = s._raw_crop(s.volumes[0])
        widths.append(mean_run(zl))
    assert np.mean(widths) == pytest.approx(16 * factor, rel=0.1)


def test_zoom_out_beyond_the_volume_keeps_the_aspect_ratio():
    src, f = A.zoom_source_shape((16, 96, 96), (50, 100, 400), 0.5, zoom_z=False)
    assert src == (16, 100, 100) and f == pytest.approx(0.96)
    src, f = A.zoom_source_shape((16, 96, 96), (50, 400, 400), 0.5, zoom_z=True)
    assert src == (32, 192, 192) and f == 0.5


def test_zoomed_image_and_labels_stay_aligned():
    """After a 0.5x and a 2x zoom the dark membrane voxels still sit on the label borders."""
    img, lab = stripes()
    for factor in (0.5, 2.0):
        cfg = A.AugmentConfig.none()
        cfg.zoom, cfg.zoom_range, cfg.zoom_xy_only = 1.0, (factor, factor), 1.0
        s = CropSampler([TrainVolume(img, lab)], (8, 64, 64), cfg, seed=2)
        for _ in range(4):
            sample = s.sample_plain()
            im = sample["image"][0]
            border = np.zeros(im.shape, bool)
            border[..., 1:] = sample["aff"][2][..., 1:] < 0.5     # x affinity 0 = id change
            # every voxel at an id change is darker than the stripe interiors
            assert im[border].mean() < 0.75 * np.median(im)


def test_amplitude_mix_keeps_the_phase_and_takes_the_style_amplitude():
    rng = np.random.default_rng(0)
    img = rng.random((2, 64, 64)).astype(np.float32)
    other = (rng.random((2, 64, 64)) * 3 + 5).astype(np.float32)
    out = A.amplitude_mix(img, other, band=0.1, strength=1.0)
    f_in, f_out, f_other = (np.fft.fft2(a.astype(np.float64), axes=(-2, -1)) for a in (img, out, other))
    np.testing.assert_allclose(np.angle(f_out), np.angle(f_in), atol=1e-4)
    # the DC term (mean) is in the swapped band: its amplitude is now the style image's
    np.testing.assert_allclose(np.abs(f_out[..., 0, 0]), np.abs(f_other[..., 0, 0]), rtol=1e-5)
    assert out.mean() == pytest.approx(other.mean(), rel=1e-4)
    # high frequencies untouched
    np.testing.assert_allclose(np.abs(f_out[..., 32, 32]), np.abs(f_in[..., 32, 32]), rtol=1e-4)


def test_amplitude_mix_with_the_unlabeled_cube_moves_brightness_towards_it():
    """Style transfer on real data: a (darkened) fib25_a crop takes on the unlabeled cube's brightness."""
    unl = tifffile.imread(str(DATA / "fib25_unlabeled_raw.tif"))[:8, :96, :96].astype(np.float32) / 255
    a = 0.6 * tifffile.imread(str(DATA / "fib25_a_raw.tif"))[:8, :96, :96].astype(np.float32) / 255
    out = A.amplitude_mix(a, unl, band=0.1)
    # mean follows the style source; the in-band energy too, the phase (structure) stays a's
    assert abs(out.mean() - unl.mean()) < 0.02 < abs(a.mean() - unl.mean())
    corr = np.corrcoef(out.ravel(), a.ravel())[0, 1]
    assert corr > 0.6


def test_histogram_remap_is_monotone_and_changes_the_histogram():
    rng = np.random.default_rng(3)
    img = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    out = A.histogram_remap(img, rng, points=5)
    assert np.all(np.diff(out.ravel()) >= -1e-7)
    assert out.min() >= 0 and out.max() <= 1
    assert np.abs(out - img).max() > 0.05


def test_equalize_flattens_the_histogram():
    rng = np.random.default_rng(4)
    img = np.clip(rng.normal(0.5, 0.05, (4, 64, 64)), 0, 1).astype(np.float32)   # low contrast
    eq = A.equalize(img, 1.0)
    hist, _ = np.histogram(eq, bins=10, range=(0, 1))
    assert hist.min() > 0.8 * hist.mean()                                        # close to uniform
    assert np.corrcoef(eq.ravel(), img.ravel())[0, 1] > 0.9                       # same order


def test_robust_preset_samples_are_finite_and_in_range():
    img, lab = stripes()
    s = CropSampler([TrainVolume(img, lab)], (8, 64, 64), A.AugmentConfig.robust(), seed=5)
    b = s.batch(4)
    assert np.isfinite(b["image"]).all() and b["image"].min() >= 0 and b["image"].max() <= 1
    assert set(np.unique(b["aff"])) <= {0.0, 1.0}


def test_crops_centre_on_the_annotated_block_of_a_big_stack():
    """A small labelled block (mask) in a large stack: every crop overlaps the block."""
    img, lab = stripes(shape=(24, 256, 512))
    mask = np.zeros(lab.shape, bool)
    mask[4:20, 150:210, 300:380] = True
    s = CropSampler([TrainVolume(img, lab, mask=mask)], (8, 64, 64), A.AugmentConfig.none(), seed=6)
    for _ in range(20):
        b = s.sample_plain()
        assert b["w_fg"].sum() > 0.1 * b["w_fg"].size
