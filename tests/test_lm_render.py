"""Synthetic light-microscopy stacks rendered from SWC morphologies."""
import numpy as np
import pytest

from napari_segneuron.lm_render import fit_morphology, random_tree, rasterise, render, render_sample
from napari_segneuron.training.lm import dice, hd95, normalise_lm


def test_render_sample_outputs_and_determinism():
    a = render_sample(np.random.default_rng(3), shape=(16, 64, 64))
    b = render_sample(np.random.default_rng(3), shape=(16, 64, 64))
    stack, mask, nodes = a
    assert stack.shape == mask.shape == (16, 64, 64)
    assert stack.dtype == np.uint16 and mask.dtype == bool
    assert nodes.shape[1] == 7 and (nodes[:, 6] == -1).sum() == 1
    assert 0.0005 < mask.mean() < 0.2
    np.testing.assert_array_equal(a.stack, b.stack)
    # the neuron is brighter than the background
    assert np.median(stack[mask]) > np.median(stack[~mask])


def test_random_tree_stays_in_its_box_and_branches():
    rng = np.random.default_rng(0)
    nodes = random_tree(rng, (30.0, 150.0, 150.0))
    assert np.all(nodes[:, 2:5] >= 0) and np.all(nodes[:, 2:5] <= [150, 150, 30])
    parents, counts = np.unique(nodes[nodes[:, 6] > 0, 6], return_counts=True)
    assert (counts >= 2).sum() >= 2  # soma and at least one branch point
    assert np.all(nodes[:, 5] > 0)


def test_tubes_follow_the_radius_and_voxel_size():
    # a 2 µm-radius tube along x in a stack with 0.5 µm xy and 2 µm z voxels
    nodes = np.array([[1, 3, 2.0, 10.0, 4.0, 2.0, -1], [2, 3, 18.0, 10.0, 4.0, 2.0, 1]])
    vox = nodes.copy()
    vox[:, 2:5] /= [0.5, 0.5, 2.0]
    mask, density = rasterise(vox, (6, 40, 40), (2.0, 0.5, 0.5))
    column = mask[:, :, 20]
    assert column[2].sum() == 9  # y: 2 µm / 0.5 µm = 4 voxels each side + centre
    assert column[:, 20].sum() == 3  # z: 2 µm / 2 µm = 1 voxel each side + centre
    assert density[mask].min() > 0 and density[~mask].max() < density[mask].min()  # soft edge just outside


def test_psf_blurs_more_along_z_and_noise_is_present():
    nodes = np.array([[1, 3, 2.0, 10.0, 10.0, 0.3, -1], [2, 3, 18.0, 10.0, 10.0, 0.3, 1]])
    r = render(nodes, (21, 41, 41), (0.5, 0.5, 0.5), np.random.default_rng(0), psf_sigma_um=(1.5, 0.3, 0.3),
               signal=1000, background=10, gradient=0.0, read_noise=1, debris=0, unevenness=0.0)
    img = r.stack.astype(float)
    profile_z = img[:, 20, 20] - np.median(img)
    profile_y = img[10, :, 20] - np.median(img)
    half = profile_z.max() / 2
    assert (profile_z > half).sum() > 1.8 * (profile_y > half).sum()
    assert img[~r.mask].std() > 1  # shot + read noise


def test_real_morphology_is_fitted_into_the_box():
    rng = np.random.default_rng(1)
    nodes = random_tree(rng, (10.0, 500.0, 800.0))
    fitted = fit_morphology(nodes, (20.0, 60.0, 60.0), rng, radius_range=(0.2, 1.0))
    assert 0.2 - 1e-9 <= fitted[:, 5].min() and fitted[:, 5].max() <= 1.0 + 1e-9
    assert np.ptp(fitted[:, 4]) <= 20.0
    centre = (fitted[:, 2:4].min(0) + fitted[:, 2:4].max(0)) / 2
    np.testing.assert_allclose(centre, [30, 30], atol=1e-6)


def test_metrics():
    a = np.zeros((10, 20, 20), bool)
    a[3:6, 5:15, 5:15] = True
    assert dice(a, a) == 1.0 and hd95(a, a) == 0.0
    b = np.roll(a, 2, axis=2)
    assert 0.7 < dice(a, b) < 0.9
    assert hd95(a, b) == pytest.approx(2.0)
    assert hd95(a, np.zeros_like(a)) == float("inf")
    v = normalise_lm(np.random.default_rng(0).integers(100, 200, (4, 8, 8)).astype(np.uint16))
    assert v.dtype == np.float32 and v.min() == 0.0 and v.max() == 1.0
