"""Predicting at the model's voxel size: shapes, accuracy of the resampling path, memory bound."""
import tracemalloc

import numpy as np
import pytest
import torch

from napari_segneuron.inference import Predictor, zarr_output
from napari_segneuron.io import InputError
from scipy import ndimage

from napari_segneuron.resample import (
    predict_resampled,
    resize_labels,
    model_grid_shape,
    needs_resampling,
    parse_voxel_size,
    voxel_size_from_scale,
)


class PointwiseNet(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x, x, 1 - x], dim=1), x


class GridSpy(PointwiseNet):
    """Records the shapes of the blocks the predictor hands to the network."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        return super().forward(x)


def smooth_volume(shape, seed=0):
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    vol = np.sin(z / 6.0) * np.cos(y / 9.0) * np.cos(x / 11.0) * 100 + 128
    return vol.astype(np.uint8)


def test_voxel_size_parsing_and_scale():
    assert parse_voxel_size([30, 4, 4]) == (30.0, 4.0, 4.0)
    with pytest.raises(InputError):
        parse_voxel_size([0, 4, 4])
    assert voxel_size_from_scale((1, 1, 1)) is None
    assert voxel_size_from_scale((0.03, 0.004, 0.004)) == pytest.approx((30.0, 4.0, 4.0))
    assert voxel_size_from_scale((8, 8, 8)) == (8.0, 8.0, 8.0)
    assert needs_resampling((10, 5, 5), (10, 10, 10))
    assert not needs_resampling((10, 9.5, 10.5), (10, 10, 10))
    assert not needs_resampling(None, (10, 10, 10))
    assert model_grid_shape((40, 96, 120), (10, 5, 5), (10, 10, 10)) == (40, 48, 60)


@pytest.mark.parametrize("voxel", [(10, 5, 5), (20, 5, 5), (5, 20, 20)])
def test_resampled_prediction_lands_on_the_input_grid(voxel):
    vol = smooth_volume((40, 96, 120))
    net = GridSpy()
    aff, fg = Predictor(net, tile=(8, 32, 32), overlap=(2, 8, 8), model_voxel_size=(10, 10, 10)).predict(vol, voxel_size=voxel)
    assert aff.shape == (3, 40, 96, 120) and fg.shape == (40, 96, 120)
    expected = vol / 255.0
    # a pointwise network must give back the image, up to interpolation/anti-aliasing error
    assert np.abs(fg - expected).mean() < 0.01
    assert np.abs(aff[2] - (1 - expected)).mean() < 0.01
    # the network saw the model grid, not the input grid
    mshape = model_grid_shape(vol.shape, voxel, (10, 10, 10))
    assert max(s[1] for s in net.seen) <= max(32, -(-mshape[1] // 16) * 16)


def test_matching_voxel_size_does_not_resample():
    vol = smooth_volume((16, 64, 64))
    pred = Predictor(PointwiseNet(), tile=(8, 32, 32), overlap=(0, 0, 0), model_voxel_size=(10, 10, 10))
    _, fg = pred.predict(vol, voxel_size=(10.5, 9.5, 10))
    assert np.abs(fg - vol / 255.0).max() < 1e-6


def _peak_bytes(tmp_path, depth):
    import zarr

    shape = (depth, 512, 512)
    src = zarr.create_array(store=str(tmp_path / f"in{depth}.zarr"), shape=shape, dtype="uint8", chunks=(8, 512, 512))
    for z in range(0, shape[0], 8):
        src[z : z + 8] = smooth_volume((8,) + shape[1:])
    out = zarr_output(str(tmp_path / f"out{depth}.zarr"), shape, dtype=np.float16)
    pred = Predictor(PointwiseNet(), tile=(16, 128, 128), overlap=(4, 16, 16), model_voxel_size=(10, 10, 10))
    tracemalloc.start()
    pred.predict(src, voxel_size=(10, 5, 5), out=out)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    fg = out["foreground"][20:30, 100:200, 100:200].astype(np.float32)
    assert np.abs(fg - src[20:30, 100:200, 100:200] / 255.0).mean() < 0.01
    return peak


def test_memory_stays_bounded_by_the_slab(tmp_path):
    """Peak memory does not grow with the depth of a zarr-to-zarr prediction."""
    small, large = _peak_bytes(tmp_path, 64), _peak_bytes(tmp_path, 160)
    full_output = 4 * 160 * 512 * 512 * 4  # affinities + foreground as float32
    print(f"peak {small / 2**20:.0f} MiB (64 slices), {large / 2**20:.0f} MiB (160 slices); "
          f"whole output in memory would be {full_output / 2**20:.0f} MiB")
    assert large < 1.3 * small  # 2.5x the depth, about the same peak
    assert large < 0.3 * full_output


@pytest.mark.parametrize("voxel", [(10, 5, 5), (5, 20, 20)])
def test_model_grid_prediction_is_kept(voxel):
    """``model_grid`` receives what the network saw, stitched from the slabs without gaps."""
    vol = smooth_volume((40, 96, 120))
    grid: dict = {}
    pred = Predictor(PointwiseNet(), tile=(8, 32, 32), overlap=(2, 8, 8), model_voxel_size=(10, 10, 10))
    aff, fg = pred.predict(vol, voxel_size=voxel, model_grid=grid)
    mshape = model_grid_shape(vol.shape, voxel, (10, 10, 10))
    assert grid["foreground"].shape == mshape and grid["affinities"].shape == (3,) + mshape
    assert grid["voxel_size"] == (10, 10, 10)
    # a pointwise net returns its (resampled) input: every model slice is filled and smooth along z
    means = grid["foreground"].mean(axis=(1, 2))
    assert np.all(means > 0.05) and np.abs(np.diff(means)).max() < 0.1
    # and carried back to the input grid it matches the prediction there
    back = resize_labels((grid["foreground"] * 1000).astype(np.uint32), vol.shape) / 1000.0
    assert np.abs(back - fg).mean() < 0.02
    # the slab-wise stitching agrees with one slab covering everything
    whole: dict = {}
    predict_resampled(pred, vol, voxel, (10, 10, 10), model_grid=whole, slab=1000)
    assert np.abs(whole["foreground"] - grid["foreground"]).max() < 1e-5


def test_no_model_grid_without_resampling():
    grid: dict = {}
    pred = Predictor(PointwiseNet(), tile=(8, 32, 32), overlap=(0, 0, 0), model_voxel_size=(10, 10, 10))
    pred.predict(smooth_volume((16, 64, 64)), voxel_size=(10, 10, 10), model_grid=grid)
    assert grid == {}


def test_resize_labels_is_exact_nearest_neighbour():
    lab = np.arange(2 * 3 * 4, dtype=np.uint32).reshape(2, 3, 4) + 2**31  # ids beyond float32 precision
    up = resize_labels(lab, (2, 6, 8))
    assert np.array_equal(up, lab.repeat(2, axis=1).repeat(2, axis=2))
    assert np.array_equal(resize_labels(up, (2, 3, 4)), lab)
    odd = resize_labels(lab, (3, 5, 7))
    assert odd.dtype == lab.dtype and set(np.unique(odd)) <= set(np.unique(lab))
    assert odd[0, 0, 0] == lab[0, 0, 0] and odd[-1, -1, -1] == lab[-1, -1, -1]


def test_agglomeration_on_a_finer_grid_equals_resized_labels():
    """Segment on the model grid, carry the fragments to the 2x finer input grid: every threshold
    gives exactly the model-grid labels resized, and min_size counts voxels of the fine grid."""
    from napari_segneuron.segmentation import agglomerate, affinities_from_boundaries

    rng = np.random.default_rng(0)
    boundary = ndimage.gaussian_filter(rng.random((12, 48, 48)), 2.0)
    boundary = (boundary - boundary.min()) / np.ptp(boundary)
    aff = affinities_from_boundaries(boundary.astype(np.float32))
    agg = agglomerate(aff, None, min_size=0, worker=False)
    fine = agg.on_grid((12, 96, 96))
    for t in (0.2, 0.5, 0.8):
        assert np.array_equal(fine.labels(t), resize_labels(agg.labels(t), (12, 96, 96)))
    # the same through agglomerate's output_shape (what the CLI and the dock call)
    direct = agglomerate(aff, None, min_size=0, worker=False, output_shape=(12, 96, 96))
    assert np.array_equal(direct.labels(0.5), fine.labels(0.5))
    # min_size given in fine voxels: a 4x smaller segment count threshold on the coarse grid
    t = 0.3
    coarse_sizes = np.bincount(agg.labels(t).ravel())[1:]
    cut = int(np.median(coarse_sizes[coarse_sizes > 0])) + 1
    kept_coarse = agg.labels(t, min_size=cut)
    assert agg.n_segments(t, min_size=cut) == len(np.unique(kept_coarse[kept_coarse > 0]))
    assert fine.on_grid((12, 96, 96), min_size=4 * cut).n_segments(t) == agg.n_segments(t, min_size=cut)
    assert agglomerate(aff, None, min_size=100, worker=False).on_grid((12, 96, 96)).min_size == 400
