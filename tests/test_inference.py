"""Tiled prediction: exactness on one tile, agreement across tilings, shapes, cancel, bad input."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_segneuron._model import MNet
from napari_segneuron.cancel import CancelToken, Cancelled
from napari_segneuron.inference import (
    OFFICIAL_TILING,
    Predictor,
    Tiling,
    gaussian_weight,
    intensity_scale,
    tile_starts,
    zarr_output,
)
from napari_segneuron.io import InputError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MNet(kn=(4, 8, 8, 16, 16)).eval()


@pytest.fixture(scope="module")
def em():
    path = DATA / "fib25_b_raw.tif"
    if path.exists():
        return tifffile.imread(path)[:24, :80, :112]
    rng = np.random.default_rng(0)  # fallback: smooth random texture
    return (rng.random((24, 80, 112)) * 255).astype(np.uint8)


def _plain_forward(model, volume):
    x = torch.from_numpy(volume.astype(np.float32)[None, None] / 255.0)
    with torch.no_grad():
        aff, fg = model(x)
    return aff[0].numpy(), fg[0, 0].numpy()


def test_tile_starts_cover_and_end_flush():
    assert tile_starts(100, 32, 24) == [0, 24, 48, 68]
    assert tile_starts(32, 32, 24) == [0]
    assert tile_starts(10, 32, 24) == [0]
    for size, tile, stride in [(257, 128, 64), (50, 20, 10), (1000, 192, 160)]:
        s = tile_starts(size, tile, stride)
        assert s[0] == 0 and s[-1] + tile == size and all(b - a <= stride for a, b in zip(s, s[1:]))


def test_gaussian_weight_peaks_in_centre_with_floor():
    w = gaussian_weight((20, 128, 128), sigma=0.5, floor=1e-3)
    assert w.shape == (20, 128, 128)
    assert w.max() == pytest.approx(1.0, abs=0.02) and w.min() >= 1e-3
    assert w[10, 64, 64] > w[0, 64, 64] > w[0, 0, 0]


def test_normalisation_follows_official_rules():
    assert intensity_scale(np.zeros(4, np.uint8)) == (0.0, 255.0)
    assert intensity_scale(np.zeros(4, np.uint16)) == (0.0, 65535.0)
    assert intensity_scale(np.array([0.2, 0.9], np.float32)) == (0.0, 1.0)
    lo, scale = intensity_scale(np.array([-3.0, 5.0, np.nan], np.float64))
    assert (lo, scale) == (-3.0, 8.0)


def test_single_tile_equals_plain_forward(model, em):
    vol = em[:16, :64, :96]
    aff, fg = Predictor(model, tile=(16, 64, 96), overlap=(0, 0, 0)).predict(vol)
    ref_aff, ref_fg = _plain_forward(model, vol)
    # the shared norm statistics are this tile's own; only their fp32 rounding differs
    assert np.abs(aff - ref_aff).max() < 5e-5
    assert np.abs(fg - ref_fg).max() < 5e-5


def test_tiled_agrees_with_untiled_away_from_borders(model, em):
    """Instance norm sees different statistics per tile, so agreement is close, not exact."""
    untiled_aff, untiled_fg = Predictor(model, tile=(24, 80, 112), overlap=(0, 0, 0)).predict(em)
    tiled_aff, tiled_fg = Predictor(model, tile=(16, 48, 64), overlap=(8, 16, 32)).predict(em)
    inner = (slice(None), slice(4, -4), slice(8, -8), slice(8, -8))
    diff = np.abs(tiled_aff - untiled_aff)[inner].mean()
    # reference scale: how far the untiled prediction is from itself shifted by 3 voxels in x
    shifted = np.abs(np.roll(untiled_aff, 3, axis=3) - untiled_aff)[inner].mean()
    print(f"tiled vs untiled {diff:.4f}, vs 3-voxel shift {shifted:.4f}")
    assert diff < 0.8 * shifted
    fg_diff = np.abs(tiled_fg - untiled_fg)[inner[1:]].mean()
    assert fg_diff < 0.8 * np.abs(np.roll(untiled_fg, 3, axis=2) - untiled_fg)[inner[1:]].mean()


@pytest.mark.parametrize("shape", [(1, 17, 33), (3, 40, 23), (30, 20, 70), (5, 130, 16)])
def test_small_odd_and_anisotropic_volumes(model, em, shape):
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 255, size=shape, dtype=np.uint8)
    aff, fg = Predictor(model, tile=(8, 32, 48), overlap=(2, 8, 8)).predict(vol)
    assert aff.shape == (3,) + shape and fg.shape == shape
    assert np.isfinite(aff).all() and np.isfinite(fg).all()
    assert 0 <= aff.min() and aff.max() <= 1


def test_2d_image_is_one_slice(model, em):
    aff, fg = Predictor(model, tile=(4, 32, 32), overlap=(0, 8, 8)).predict(em[0, :40, :40])
    assert aff.shape == (3, 1, 40, 40) and fg.shape == (1, 40, 40)


def test_float_input_nan_and_constant(model):
    vol = np.linspace(-5, 5, 8 * 32 * 32, dtype=np.float32).reshape(8, 32, 32)
    vol[2, 3, 4] = np.nan
    aff, fg = Predictor(model, tile=(8, 32, 32), overlap=(0, 0, 0)).predict(vol)
    assert np.isfinite(aff).all()
    aff_c, _ = Predictor(model, tile=(8, 32, 32), overlap=(0, 0, 0)).predict(np.full((8, 32, 32), 7, np.uint16))
    assert np.isfinite(aff_c).all()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((64, 64, 3), np.uint8), "RGB"),
        (np.zeros((2, 3, 8, 32, 32), np.uint8), "dimensions"),
        (np.zeros((0, 32, 32), np.uint8), "empty"),
        (np.full((4, 32, 32), np.nan, np.float32), "no finite values"),
        (np.zeros(10, np.uint8), "one-dimensional"),
    ],
)
def test_bad_input_messages(model, bad, message):
    with pytest.raises(InputError, match=message):
        Predictor(model, tile=(4, 32, 32)).predict(bad)


def test_singleton_axes_are_dropped(model, em):
    aff, fg = Predictor(model, tile=(4, 32, 32), overlap=(0, 0, 0)).predict(em[None, None, :4, :32, :32])
    assert fg.shape == (4, 32, 32)


def test_bad_tiling_is_refused(model):
    with pytest.raises(InputError, match="multiples of 16"):
        Predictor(model, tile=(8, 30, 32))
    with pytest.raises(InputError, match="Overlap"):
        Predictor(model, tile=(8, 32, 32), overlap=(8, 0, 0))


def test_progress_and_cancel(model, em):
    calls = []
    Predictor(model, tile=(8, 32, 32), overlap=(0, 0, 0)).predict(em[:16, :64, :64], progress=lambda d, t, m="": calls.append((d, t, m)))
    assert [c[0] for c in calls] == list(range(1, 9)) and all(c[1] == 8 for c in calls)
    assert "left" in calls[-1][2]
    token = CancelToken()
    seen = []

    def stop_after_two(done, total, message=""):
        seen.append(done)
        if done == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        Predictor(model, tile=(8, 32, 32), overlap=(0, 0, 0)).predict(em[:16, :64, :64], progress=stop_after_two, cancel=token)
    assert seen == [1, 2]


def test_batching_matches_batch_of_one(model, em):
    vol = em[:16, :64, :96]
    a1, f1 = Predictor(model, tile=(8, 32, 32), overlap=(2, 8, 8), batch_size=1).predict(vol)
    a4, f4 = Predictor(model, tile=(8, 32, 32), overlap=(2, 8, 8), batch_size=4).predict(vol)
    assert np.abs(a1 - a4).max() < 1e-5 and np.abs(f1 - f4).max() < 1e-5


def test_streams_into_zarr_and_float16(model, em, tmp_path):
    import zarr

    vol = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=(20, 64, 64), dtype="uint8", chunks=(5, 64, 64))
    vol[...] = em[:20, :64, :64]
    out = zarr_output(str(tmp_path / "out.zarr"), (20, 64, 64), dtype=np.float16)
    Predictor(model, tile=(8, 32, 32), overlap=(2, 8, 8)).predict(vol, out=out)
    ref_aff, ref_fg = Predictor(model, tile=(8, 32, 32), overlap=(2, 8, 8)).predict(em[:20, :64, :64])
    assert out["affinities"].dtype == np.float16
    assert np.abs(out["affinities"][...].astype(np.float32) - ref_aff).max() < 2e-3
    assert np.abs(out["foreground"][...].astype(np.float32) - ref_fg).max() < 2e-3


def test_official_preset_geometry():
    assert OFFICIAL_TILING.tile == (20, 128, 128) and OFFICIAL_TILING.stride == (10, 64, 64)
    assert OFFICIAL_TILING.sigma == 0.5 and OFFICIAL_TILING.floor == 1e-3
    assert isinstance(OFFICIAL_TILING, Tiling)


class PointwiseNet(torch.nn.Module):
    """A network with a 1-voxel receptive field: tiling must not change its output at all."""

    def forward(self, x):
        return torch.cat([x, x**2, 1 - x], dim=1), torch.sqrt(x)


class LocalNet(torch.nn.Module):
    """A 3x3x3 receptive field: tiling may only change voxels next to tile borders."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)

    def forward(self, x):
        y = torch.sigmoid(self.conv(x))
        return y[:, :3], y[:, 3:]


@pytest.mark.parametrize("shape", [(24, 80, 112), (7, 33, 150), (30, 150, 20)])
def test_blending_is_exact_for_a_pointwise_network(em, shape):
    """Places every tile where it belongs (also on non-square volumes, where the official
    script swaps x and y) and normalises the Gaussian blend exactly."""
    rng = np.random.default_rng(2)
    vol = rng.integers(0, 256, size=shape, dtype=np.uint8)
    aff, fg = Predictor(PointwiseNet(), tile=(8, 32, 48), overlap=(3, 8, 16)).predict(vol)
    x = vol.astype(np.float32) / 255
    assert np.abs(aff - np.stack([x, x**2, 1 - x])).max() < 1e-5
    assert np.abs(fg - np.sqrt(x)).max() < 1e-5


def test_local_network_tiled_equals_untiled_away_from_tile_borders(em):
    net = LocalNet().eval()
    vol = em[:16, :64, :96]
    tiled_aff, _ = Predictor(net, tile=(8, 32, 48), overlap=(4, 16, 16), channels_last=False).predict(vol)
    whole_aff, _ = Predictor(net, tile=(16, 64, 96), overlap=(0, 0, 0), channels_last=False).predict(vol)
    diff = np.abs(tiled_aff - whole_aff)
    assert diff.max() < 0.05  # border voxels get little weight
    assert np.median(diff) < 1e-4


def test_out_of_memory_backs_off_batch_then_tile(model, em, monkeypatch):
    """GPU memory back-off, simulated: batches over 2 tiles and tiles over 32 px run out of memory."""
    pred = Predictor(PointwiseNet(), tile=(8, 128, 128), overlap=(2, 16, 16), batch_size=4)
    pred.auto_tile = True  # as if no tile had been given on a GPU
    real_forward = pred._forward
    seen = []

    def fake_forward(batch):
        seen.append(tuple(batch.shape))
        if batch.shape[0] > 2 or batch.shape[-1] > 32:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real_forward(batch)

    monkeypatch.setattr(pred, "_forward", fake_forward)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    vol = em[:8, :80, :112]
    aff, fg = pred.predict(vol)
    assert pred.tiling.tile[1:] == (32, 32)
    assert np.abs(fg - np.sqrt(vol / 255.0)).max() < 1e-5
    assert any(s[0] == 4 for s in seen) and any(s[0] == 2 and s[-1] == 32 for s in seen)
    pred.auto_tile = False
    pred.tiling = Tiling((8, 64, 64), (0, 0, 0))
    with pytest.raises(InputError, match="out of memory"):
        pred.predict(vol)


def test_dask_input_is_read_lazily_and_matches_numpy(model, em):
    import dask.array as da

    vol = em[:16, :64, :96]
    lazy = da.from_array(vol, chunks=(4, 64, 96))
    a1, f1 = Predictor(model, tile=(8, 32, 48), overlap=(2, 8, 8)).predict(lazy)
    a2, f2 = Predictor(model, tile=(8, 32, 48), overlap=(2, 8, 8)).predict(vol)
    assert np.array_equal(a1, a2) and np.array_equal(f1, f2)


class NeighbourNet(torch.nn.Module):
    """Affinity of each voxel to its lower neighbour (offset -1) along z, y, x; flip-equivariant
    once flipped outputs are shifted back, so test-time augmentation must not change it."""

    def forward(self, x):
        affs = []
        for d in (2, 3, 4):
            prev = torch.cat([x.narrow(d, 0, 1), x.narrow(d, 0, x.shape[d] - 1)], dim=d)
            affs.append(1 - (x - prev).abs())
        return torch.cat(affs, dim=1), x


def test_test_time_augmentation_keeps_the_affinity_offsets(em):
    vol = em[:12, :64, :80]
    plain_aff, plain_fg = Predictor(NeighbourNet(), tile=(12, 64, 80), overlap=(0, 0, 0)).predict(vol)
    tta_aff, tta_fg = Predictor(NeighbourNet(), tile=(12, 64, 80), overlap=(0, 0, 0), tta=True).predict(vol)
    np.testing.assert_allclose(tta_aff, plain_aff, atol=1e-6)
    np.testing.assert_allclose(tta_fg, plain_fg, atol=1e-6)
    # a network that is not equivariant gets averaged: output changes but stays a probability
    net = LocalNet().eval()
    a1, _ = Predictor(net, tile=(12, 64, 80), overlap=(0, 0, 0), channels_last=False).predict(vol)
    a2, _ = Predictor(net, tile=(12, 64, 80), overlap=(0, 0, 0), channels_last=False, tta=True).predict(vol)
    assert np.abs(a1 - a2).mean() > 1e-3 and 0 <= a2.min() and a2.max() <= 1
    # "min": each affinity's lowest view (identity included), the foreground averaged as with "mean"
    exact, _ = Predictor(NeighbourNet(), tile=(12, 64, 80), overlap=(0, 0, 0), tta="min").predict(vol)
    np.testing.assert_allclose(exact, plain_aff, atol=1e-6)
    mean_pred = Predictor(net, tile=(12, 64, 80), overlap=(0, 0, 0), channels_last=False, tta="mean")
    min_pred = Predictor(net, tile=(12, 64, 80), overlap=(0, 0, 0), channels_last=False, tta="min")
    assert mean_pred.tta == "mean" and min_pred.tta == "min"
    (a_mean, f_mean), (a_min, f_min) = mean_pred.predict(vol), min_pred.predict(vol)
    assert (a_min <= a1 + 1e-6).all() and (a_min <= a_mean + 1e-6).all()
    assert (a_mean - a_min).mean() > 1e-3
    np.testing.assert_allclose(f_min, f_mean, atol=1e-6)
    assert Predictor(net, tile=(12, 64, 80), tta=None).tta is False
    with pytest.raises(InputError, match="Test-time augmentation"):
        Predictor(net, tile=(12, 64, 80), tta="max")


class TensorNet(torch.nn.Module):
    """A ViT-like stand-in: one (N, C, Z, Y, X) tensor out, tiles must be multiples of (5, 16, 16)."""

    tile_multiple = (5, 16, 16)

    def __init__(self, channels=2):
        super().__init__()
        self.channels = channels
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        return torch.cat([x * (c + 1) / self.channels for c in range(self.channels)], dim=1)


def test_single_tensor_network_and_tile_multiple(em):
    """A network without .info returning one tensor: channels kept in order, tiles on its multiple."""
    net = TensorNet(channels=2)
    vol = em[:23, :50, :70]
    pred = Predictor(net, tile=(10, 32, 32), overlap=(5, 16, 16))
    raw = pred.predict_raw(vol, voxel_size=(8, 8, 8))  # no model voxel size: no resampling
    x = vol.astype(np.float32) / 255
    assert raw.shape == (2, 23, 50, 70) and raw.dtype == np.float32
    np.testing.assert_allclose(raw, np.stack([x / 2, x]), atol=1e-5)
    assert net.seen and all(z % 5 == 0 and y % 16 == 0 and xx % 16 == 0 for z, y, xx in net.seen)
    # default tiles are rounded up to the multiple; a tile off the multiple is refused
    assert all(t % m == 0 for t, m in zip(Predictor(TensorNet()).tiling.tile, (5, 16, 16)))
    with pytest.raises(InputError, match=r"tile_multiple \(5, 16, 16\)"):
        Predictor(TensorNet(), tile=(8, 32, 32))
    with pytest.raises(InputError, match="predict_raw"):
        Predictor(TensorNet(), tile=(10, 32, 32)).predict(vol)


def test_predict_raw_is_predict_concatenated_for_mnet(model, em):
    vol = em[:12, :48, :64]
    pred = Predictor(model, tile=(8, 32, 48), overlap=(2, 8, 8))
    aff, fg = pred.predict(vol)
    raw = pred.predict_raw(vol)
    assert raw.shape == (4, 12, 48, 64)
    np.testing.assert_array_equal(raw, np.concatenate([aff, fg[None]]))


def test_predict_raw_resamples_any_channel_count(em):
    """With a model voxel size, predict_raw resamples every channel like predict does."""
    net = TensorNet(channels=5)
    net.info = {"voxel_size_nm": (10, 10, 10)}
    vol = em[:10, :64, :64]
    raw = Predictor(net, tile=(10, 32, 32), overlap=(5, 8, 8)).predict_raw(vol, voxel_size=(10, 20, 20))
    assert raw.shape == (5, 10, 64, 64)
    ref = Predictor(PointwiseNet(), tile=(8, 32, 32), overlap=(2, 8, 8), model_voxel_size=(10, 10, 10))
    aff, _ = ref.predict(vol, voxel_size=(10, 20, 20))  # PointwiseNet's channel 0 is x itself
    np.testing.assert_allclose(raw[4], aff[0], atol=1e-5)  # as is TensorNet(5)'s channel 4
    np.testing.assert_allclose(raw[1], aff[0] * 2 / 5, atol=1e-5)
    assert np.abs(raw[4] - vol / 255.0).mean() > 1e-3  # it was resampled (2x coarser in y, x) and back


@pytest.mark.parametrize("size, tile, overlap, multiple", [(250, 192, 32, 16), (40, 32, 8, 1), (1024, 320, 32, 16),
                                                           (100, 192, 32, 16), (257, 128, 64, 16), (33, 16, 4, 5)])
def test_plan_axis_covers_with_few_tiles_and_little_padding(size, tile, overlap, multiple):
    from napari_segneuron.inference import plan_axis

    t, starts = plan_axis(size, tile, overlap, multiple)
    assert t % multiple == 0 and t <= max(tile, -(-size // multiple) * multiple)
    if len(starts) == 1:
        assert starts == [0] and size <= t < size + multiple  # padding under one multiple
        return
    assert starts[0] == 0 and starts[-1] + t == size  # first at 0, last flush
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(t - g >= min(overlap, tile - multiple) for g in gaps)  # the overlap is kept
    assert max(gaps) - min(gaps) <= 1  # spread evenly
    fewest = -(-(size - overlap) // (tile - overlap))
    assert len(starts) == fewest
    assert (len(starts) - 1) * (t - multiple) + t - multiple < size + (len(starts) - 1) * overlap  # a smaller tile would not do


def test_overcompute_of_fitted_plans():
    from napari_segneuron.inference import plan_tiles

    big = Tiling((64, 320, 320), (8, 32, 32))
    assert plan_tiles((40, 256, 256), big).overcompute == 1.0  # one tile, exactly the stack
    assert plan_tiles((250, 250, 250), big).overcompute < 1.25
    assert plan_tiles((100, 1024, 1024), big).overcompute < 1.4
    assert plan_tiles((250, 250, 250), OFFICIAL_TILING, fit=False).overcompute > 4  # the official ~4.5x


@pytest.mark.parametrize("shape", [(24, 80, 112), (7, 33, 150), (30, 150, 20)])
def test_crop_blend_owns_each_voxel_once_and_is_exact_for_a_pointwise_network(shape):
    from napari_segneuron.inference import plan_tiles

    tiling = Tiling((8, 32, 48), (4, 16, 16), blend="crop")
    plan = plan_tiles(shape, tiling)
    owner = np.zeros(plan.padded, np.int32)
    for iz, z0 in enumerate(plan.starts[0]):
        for iy, y0 in enumerate(plan.starts[1]):
            for ix, x0 in enumerate(plan.starts[2]):
                bz, by, bx = plan.box((iz, iy, ix))
                owner[z0 + bz.start : z0 + bz.stop, y0 + by.start : y0 + by.stop, x0 + bx.start : x0 + bx.stop] += 1
                # the owned part keeps a margin from the tile's inner borders
                for axis, (b, i) in enumerate(zip((bz, by, bx), (iz, iy, ix))):
                    if 0 < i:
                        assert b.start >= tiling.overlap[axis] // 2
    assert (owner == 1).all()
    rng = np.random.default_rng(3)
    vol = rng.integers(0, 256, size=shape, dtype=np.uint8)
    aff, fg = Predictor(PointwiseNet(), tiling=tiling).predict(vol)
    x = vol.astype(np.float32) / 255
    assert np.abs(aff - np.stack([x, x**2, 1 - x])).max() < 1e-6


def test_crop_blend_matches_untiled_away_from_cuts(em):
    net = LocalNet().eval()
    vol = em[:16, :64, :96]
    cropped, _ = Predictor(net, tiling=Tiling((8, 32, 48), (4, 16, 16), blend="crop")).predict(vol)
    whole, _ = Predictor(net, tile=(16, 64, 96), overlap=(0, 0, 0)).predict(vol)
    # a 3x3x3 network with a halo of >= 2 voxels on each side of every cut: identical (bar volume borders)
    np.testing.assert_allclose(cropped, whole, atol=1e-6)
