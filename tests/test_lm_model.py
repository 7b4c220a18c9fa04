"""ViT3D light-microscopy model: 2D->3D inflation, state-dict loading, checkpoints."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_segneuron._model import (
    ViT3DSeg,
    WeightsError,
    build_vit3d,
    inflate_patch_embedding,
    inflate_vit_state_dict,
    load_vit3d,
    save_checkpoint,
    save_vit3d,
)
from napari_segneuron._model.vit3d import fold_rgb, resample_grid

SMALL = dict(patch=(3, 4, 4), embed_dim=24, depth=2, heads=3, grid=(2, 3, 3), channels=(4, 8), vit_channels=4)


def _vit2d_state_dict(dim=24, depth=4, patch=4, side=5, seed=0):
    """A random 2D ViT state dict with timm / DINOv2 key names (RGB input, layer scale)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"cls_token": r(1, 1, dim), "pos_embed": r(1, 1 + side * side, dim),
          "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim),
          "norm.weight": r(dim), "norm.bias": r(dim), "head.weight": r(10, dim)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": r(dim), b + "norm1.bias": r(dim), b + "attn.qkv.weight": r(3 * dim, dim),
                   b + "attn.qkv.bias": r(3 * dim), b + "attn.proj.weight": r(dim, dim), b + "attn.proj.bias": r(dim),
                   b + "ls1.gamma": r(dim), b + "norm2.weight": r(dim), b + "norm2.bias": r(dim),
                   b + "mlp.fc1.weight": r(4 * dim, dim), b + "mlp.fc1.bias": r(4 * dim),
                   b + "mlp.fc2.weight": r(dim, 4 * dim), b + "mlp.fc2.bias": r(dim), b + "ls2.gamma": r(dim)})
    return sd


def test_average_inflation_embeds_a_z_constant_block_like_the_2d_image():
    torch.manual_seed(0)
    w2 = torch.randn(16, 1, 14, 14)
    image = torch.randn(1, 1, 28, 42)
    w3 = inflate_patch_embedding(w2, 5, "average")
    assert w3.shape == (16, 1, 5, 14, 14)
    volume = image.unsqueeze(2).repeat(1, 1, 5, 1, 1)  # constant along z
    e3 = F.conv3d(volume, w3, stride=(5, 14, 14))[:, :, 0]
    e2 = F.conv2d(image, w2, stride=14)
    torch.testing.assert_close(e3, e2, atol=1e-4, rtol=1e-4)


def test_center_inflation_embeds_the_centre_slice():
    torch.manual_seed(1)
    w2 = torch.randn(16, 1, 14, 14)
    volume = torch.randn(1, 1, 5, 28, 28)  # varies along z
    w3 = inflate_patch_embedding(w2, 5, "center")
    assert torch.count_nonzero(w3[:, :, [0, 1, 3, 4]]) == 0
    e3 = F.conv3d(volume, w3, stride=(5, 14, 14))[:, :, 0]
    e2 = F.conv2d(volume[:, :, 2], w2, stride=14)
    torch.testing.assert_close(e3, e2, atol=1e-4, rtol=1e-4)
    # and differs from averaging over the block
    avg = F.conv3d(volume, inflate_patch_embedding(w2, 5, "average"), stride=(5, 14, 14))[:, :, 0]
    assert not torch.allclose(avg, e2, atol=1e-2)


def test_inflation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="center"):
        inflate_patch_embedding(torch.zeros(2, 1, 3, 3), 3, "middle")
    with pytest.raises(ValueError, match="kernel"):
        inflate_patch_embedding(torch.zeros(2, 3, 3), 3, "center")


def test_rgb_folding_embeds_grey_like_replicated_rgb():
    torch.manual_seed(2)
    w = torch.randn(8, 3, 4, 4)
    grey = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(F.conv2d(grey, fold_rgb(w)), F.conv2d(grey.repeat(1, 3, 1, 1), w), atol=1e-5, rtol=1e-5)


def test_positional_grid_is_resampled_and_repeated_along_z():
    pos2d = torch.randn(1, 25, 6)
    pos3d = resample_grid(pos2d, (3, 5, 5))
    assert pos3d.shape == (1, 75, 6)
    grid = pos3d.reshape(3, 5, 5, 6)
    torch.testing.assert_close(grid[0], pos2d.reshape(5, 5, 6))  # same grid size: copied
    torch.testing.assert_close(grid[1], grid[0])
    assert resample_grid(pos2d, (2, 3, 4)).shape == (1, 24, 6)


@pytest.mark.parametrize("mode", ["center", "average"])
def test_whole_state_dict_inflation(mode):
    sd = _vit2d_state_dict()
    model = ViT3DSeg(**SMALL)
    report = inflate_vit_state_dict(model, {"module." + k: v for k, v in sd.items()}, mode)
    enc = model.encoder.state_dict()
    for i in range(2):  # every block the 3D model has is copied; extra 2D blocks are skipped
        for name in ("attn.qkv.weight", "mlp.fc2.bias", "ls1.gamma", "ls2.gamma", "norm1.weight"):
            torch.testing.assert_close(enc[f"blocks.{i}.{name}"], sd[f"blocks.{i}.{name}"])
    torch.testing.assert_close(enc["norm.weight"], sd["norm.weight"])
    torch.testing.assert_close(enc["cls_token"], sd["cls_token"])
    assert "blocks.3.attn.qkv.weight" in report["skipped"] and "head.weight" in report["skipped"]
    expected = inflate_patch_embedding(sd["patch_embed.proj.weight"].sum(1, keepdim=True), 3, mode)
    torch.testing.assert_close(enc["patch_embed.proj.weight"], expected)
    assert enc["pos_embed"].shape == (1, 1 + 2 * 3 * 3, 24)
    torch.testing.assert_close(enc["pos_embed"][:, :1], sd["pos_embed"][:, :1])


def test_inflation_refuses_a_vit_of_another_width():
    with pytest.raises(ValueError, match="does not fit"):
        inflate_vit_state_dict(ViT3DSeg(**SMALL), _vit2d_state_dict(dim=12), "center")


def test_forward_any_size_probability_and_info():
    torch.manual_seed(0)
    model = build_vit3d(None, **SMALL).eval()
    assert model.tile_multiple == (3, 4, 4)
    with torch.no_grad():
        out = model(torch.rand(2, 1, 7, 10, 13))
    assert out.shape == (2, 1, 7, 10, 13)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    for key in ("name", "arch", "n_parameters", "device", "voxel_size_nm"):
        assert key in model.info
    assert model.info["n_parameters"] == sum(p.numel() for p in model.parameters())


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_vit3d("average", _vit2d_state_dict(), **SMALL).eval()
    path = save_vit3d(model, tmp_path / "lm.pt", iters=7, metadata={"name": "lm_test"}, half=True)
    loaded = load_vit3d(path)
    assert loaded.info["name"] == "lm_test" and loaded.info["iters"] == 7
    assert loaded.arch == model.arch
    x = torch.rand(1, 1, 6, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=5e-3, rtol=0)


def test_loading_an_em_checkpoint_as_lm_model_is_refused(tmp_path):
    path = save_checkpoint({"w": torch.zeros(2)}, tmp_path / "em.pt")
    with pytest.raises(WeightsError, match="not a light-microscopy"):
        load_vit3d(path)


def test_bundled_lm_model_loads_and_segments_a_render():
    from napari_segneuron._model.vit3d import load_lm_model
    from napari_segneuron.lm_render import render_sample
    from napari_segneuron.training.lm import dice, normalise_lm, predict_whole

    model = load_lm_model()
    assert model.info["name"] == "lm_default" and model.tile_multiple == (5, 14, 14)
    r = render_sample(np.random.default_rng(777), shape=(20, 84, 84))
    prob = predict_whole(model, normalise_lm(r.stack))
    assert dice(prob > model.info["metadata"]["threshold"], r.mask) > 0.5
