"""Training: targets, augmentation invariants, finetune / pretrain, checkpoints, cancel, bad input, CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_segneuron.cancel import CancelToken
from napari_segneuron.training import augment as A
from napari_segneuron.training.checkpoints import read_checkpoint, write_checkpoint
from napari_segneuron.training.data import CropSampler, TrainingInputError, TrainVolume
from napari_segneuron.training.finetune import build_mnet, finetune, segmentation_loss
from napari_segneuron.training.loop import TrainingCancelled
from napari_segneuron.training.pretrain import (PretrainSampler, mask_with_noise, patch_mask, pretrain,
                                                pretrain_loss, transfer_encoder)
from napari_segneuron.training.targets import (affinities_from_labels, affinity_mask, labels_from_membranes,
                                               targets_from_labels)

KN = (4, 8, 12, 16, 20)
CROP = (8, 32, 32)


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # 1 thread: far faster than 2 on a busy 2-core machine
    yield
    torch.set_num_threads(old)


def synthetic(shape=(12, 48, 48), seed=0):
    """Voronoi cells with 1-voxel dark membranes: (uint8 image, uint32 labels)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.uint32)
    n = 14
    pts = rng.integers(0, shape, size=(n, 3))
    seeds[tuple(pts.T)] = np.arange(1, n + 1)
    _, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[tuple(idx)]
    boundary = np.zeros(shape, bool)
    for ax in range(3):
        d = np.diff(cells, axis=ax) != 0
        sl = [slice(None)] * 3
        sl[ax] = slice(1, None)
        boundary[tuple(sl)] |= d
    labels = np.where(boundary, 0, cells).astype(np.uint32)
    img = np.where(boundary, 60, 180).astype(np.float32) + rng.normal(0, 10, shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels


# ---------------------------------------------------------------- targets
def test_affinities_definition_and_border():
    lab = np.array([[[1, 1, 0, 2, 2]], [[1, 3, 0, 2, 0]]], dtype=np.uint32)  # (2,1,5)
    aff = affinities_from_labels(lab)
    assert aff.shape == (3, 2, 1, 5) and aff.dtype == np.float32
    # x channel: predecessor along x; first column replicated -> label>0
    np.testing.assert_array_equal(aff[2, 0, 0], [1, 1, 0, 0, 1])
    # z channel: slice 0 replicated; slice 1 compares with slice 0
    np.testing.assert_array_equal(aff[0, 0, 0], [1, 1, 0, 1, 1])
    np.testing.assert_array_equal(aff[0, 1, 0], [1, 0, 0, 1, 0])
    # y has size 1: every voxel is its own neighbour
    np.testing.assert_array_equal(aff[1], (lab > 0).astype(np.float32))


def test_mask_and_targets():
    lab = np.ones((2, 3, 3), np.uint32)
    mask = np.ones_like(lab, bool)
    mask[:, :, 0] = False
    aff, fg, w_aff, w_fg = targets_from_labels(lab, mask)
    assert fg.shape == (1, 2, 3, 3) and w_fg[0, :, :, 0].sum() == 0
    assert w_aff[2, :, :, 1].sum() == 0          # x pair (0,1) touches an unannotated voxel
    assert w_aff[1, :, :, 1].all()               # y pairs inside the annotated columns count
    assert affinity_mask(None, lab.shape).all()


def test_labels_from_membranes():
    m = np.zeros((2, 5, 5), np.uint8)
    m[:, 2, :] = 255
    lab = labels_from_membranes(m)
    assert (lab[:, 2] == 0).all()
    assert len(np.unique(lab[0])) == 3 and len(np.unique(lab)) == 5   # ids unique across slices


# ---------------------------------------------------------------- augmentation invariants
def test_amplitude_mix_keeps_phase_and_takes_low_band():
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 32, 32)), rng.random((3, 32, 32)) * 3
    out = A.amplitude_mix(a, b, band=0.1)
    fa = np.fft.fftshift(np.fft.fft2(a), axes=(-2, -1))
    fo = np.fft.fftshift(np.fft.fft2(out), axes=(-2, -1))
    fb = np.fft.fftshift(np.fft.fft2(b), axes=(-2, -1))
    ok = np.abs(fa) > 1e-6
    dphi = np.angle(fo[ok] * np.conj(fa[ok]))
    assert np.abs(dphi).max() < 1e-3                      # phase kept everywhere
    r = round(0.1 * 32)
    band = (slice(None), slice(16 - r, 16 + r + 1), slice(16 - r, 16 + r + 1))
    np.testing.assert_allclose(np.abs(fo[band]), np.abs(fb[band]), rtol=1e-3, atol=1e-3)
    outside = np.ones(fa.shape, bool)
    outside[band] = False
    np.testing.assert_allclose(np.abs(fo[outside]), np.abs(fa[outside]), rtol=1e-3, atol=1e-3)


def test_cutmix_box_is_consistent_across_image_and_targets():
    img1, lab1 = synthetic(seed=1)
    img2, lab2 = synthetic(seed=2)
    s = CropSampler([TrainVolume(img1, lab1), TrainVolume(img2, lab2 + 100)], CROP, A.AugmentConfig.none(), seed=3)
    a, b = s.sample_plain(), s.sample_plain()
    box = A.random_box(CROP, 70 / 128, np.random.default_rng(0))
    m = A.cutmix(a, b, box)
    sy, sx = box
    inside = np.zeros(CROP, bool)
    inside[:, sy, sx] = True
    for k in ("image", "fg", "w_fg", "w_aff"):
        np.testing.assert_array_equal(m[k][..., inside], b[k][..., inside])
        np.testing.assert_array_equal(m[k][..., ~inside], a[k][..., ~inside])
    # affinities: box interior from b, outside from a, box edges cut (objects of two crops never touch)
    np.testing.assert_array_equal(m["aff"][0][inside], b["aff"][0][inside])
    if sy.start > 0:
        assert not m["aff"][1, :, sy.start, sx].any()
    if sx.start > 0:
        assert not m["aff"][2, :, sy, sx.start].any()
    assert m["image"].shape == a["image"].shape


def test_flip_rotate_zoom_keep_image_and_targets_aligned():
    img, lab = synthetic()
    img = np.where(lab > 0, 255, 0).astype(np.uint8)   # image = foreground, so alignment is checkable
    cfg = A.AugmentConfig.none()
    cfg.flip, cfg.rotate90 = True, True
    s = CropSampler([TrainVolume(img, lab)], (8, 32, 32), cfg, seed=0)
    for _ in range(6):
        smp = s.sample_plain()
        np.testing.assert_array_equal(smp["image"][0] > 0.5, smp["fg"][0] > 0.5)
        np.testing.assert_array_equal(smp["aff"], affinities_from_labels(
            np.where(smp["fg"][0] > 0, 1, 0)) * smp["aff"])  # affinities only where fg
    cfg.zoom, cfg.zoom_range = 1.0, (0.8, 1.25)
    s = CropSampler([TrainVolume(img, lab)], (8, 32, 32), cfg, seed=0)
    smp = s.sample_plain()
    assert smp["image"].shape == (1, 8, 32, 32) and smp["aff"].shape == (3, 8, 32, 32)
    agree = np.mean((smp["image"][0] > 0.5) == (smp["fg"][0] > 0.5))
    assert agree > 0.9


def test_full_sample_shapes_and_range():
    img, lab = synthetic()
    cfg = A.AugmentConfig(freq_mix=1.0, spatial_mix=1.0, zoom=0.5)
    b = CropSampler([TrainVolume(img, lab)], CROP, cfg, seed=0).batch(2)
    assert b["image"].shape == (2, 1) + CROP and b["aff"].shape == (2, 3) + CROP
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0


# ---------------------------------------------------------------- finetune
def _fixed_batch(img, lab):
    return CropSampler([TrainVolume(img, lab)], CROP, A.AugmentConfig.none(), seed=42).batch(2)


def test_finetune_lowers_loss_and_checkpoint_round_trip(tmp_path):
    from napari_segneuron._model import load_model

    img, lab = synthetic()
    torch.manual_seed(0)
    model = build_mnet(KN)
    batch = _fixed_batch(img, lab)
    with torch.no_grad():
        before = float(segmentation_loss(model, batch, "cpu")[0])
    ck = tmp_path / "ft.pt"
    r = finetune(model, img, lab, iterations=20, batch_size=1, crop=CROP, lr=5e-3, warmup=0,
                 augment=A.AugmentConfig.none(), checkpoint=ck, checkpoint_every=10, device="cpu")
    with torch.no_grad():
        after = float(segmentation_loss(r.model, batch, "cpu")[0])
    assert after < 0.85 * before, (before, after)
    raw = torch.load(ck, map_location="cpu", weights_only=False)
    assert set(raw) >= {"model_weights", "iters"} and raw["iters"] == 20
    loaded = load_model(ck, device="cpu")
    x = torch.from_numpy(batch["image"][:1])
    with torch.no_grad():
        a1, f1 = r.model.eval()(x)
        a2, f2 = loaded(x)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(f1, f2)
    # fp16 export as shipped in weights/default.pt still loads
    half = write_checkpoint(r.model, tmp_path / "half.pt", 25, {"name": "t"}, half=True)
    assert read_checkpoint(half)["metadata"]["dtype"] == "float16"
    with torch.no_grad():
        a3, _ = load_model(half, device="cpu")(x)
    assert float((a3 - a1).abs().max()) < 2e-2


def test_cancel_leaves_valid_checkpoint_and_resume(tmp_path):
    img, lab = synthetic()
    token = CancelToken()
    ck = tmp_path / "c.pt"
    seen = []

    def on_loss(it, loss):
        seen.append(loss)
        if it == 3:
            token.cancel()

    with pytest.raises(TrainingCancelled) as exc:
        finetune(None, img, lab, kn=KN, iterations=50, crop=CROP, checkpoint=ck, checkpoint_every=100,
                 cancel=token, loss_callback=on_loss, device="cpu")
    res = exc.value.result
    assert res.cancelled and res.iterations == 3 and res.checkpoint == ck
    assert read_checkpoint(ck)["iters"] == 3 and len(seen) == 3
    r2 = finetune(None, img, lab, kn=KN, iterations=5, crop=CROP, checkpoint=ck, resume=ck, device="cpu")
    assert r2.iterations == 5 and read_checkpoint(ck)["iters"] == 5


def test_validation_records_scores(tmp_path):
    img, lab = synthetic()
    vimg, vlab = synthetic(shape=(8, 32, 48), seed=5)
    r = finetune(None, img, lab, kn=KN, iterations=2, crop=CROP, val_image=vimg, val_labels=vlab,
                 validate_every=2, checkpoint=tmp_path / "v.pt", device="cpu")
    assert len(r.validation) == 1 and np.isfinite(r.validation[0]["val_loss"])
    assert r.best_checkpoint is not None and r.best_checkpoint.is_file()


def test_bad_input_is_reported_and_nothing_written(tmp_path):
    from napari_segneuron.io import InputError

    img, lab = synthetic()
    ck = tmp_path / "never.pt"
    cases = [
        dict(image=img, labels=lab[:, :40]),                          # shape mismatch
        dict(image=img, labels=np.zeros_like(lab)),                   # no foreground
        dict(image=img, labels=lab, crop=(16, 64, 64)),               # crop larger than volume
        dict(image=img, labels=lab, crop=(8, 30, 30)),                # not multiples of 16
    ]
    for kw in cases:
        kw.setdefault("crop", CROP)
        with pytest.raises(InputError):
            finetune(None, kn=KN, iterations=2, checkpoint=ck, device="cpu", **kw)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingInputError, match="cannot read"):
        finetune(None, img, lab, kn=KN, crop=CROP, iterations=2, checkpoint=ck, resume=bad, device="cpu")
    assert not ck.exists()
    assert issubclass(TrainingInputError, ValueError)


# ---------------------------------------------------------------- pretrain
def test_patch_mask_ratio_and_noise():
    rng = np.random.default_rng(0)
    m = patch_mask((20, 32, 32), rng)
    assert 0.45 <= m.mean() <= 0.75
    img = np.full((20, 32, 32), 0.5, np.float32)
    out = mask_with_noise(img, m, rng)
    assert np.all(out[~m] == 0.5) and out[m].std() < 1e-3 + img.std() + 1e-5


def test_pretraining_beats_noise_baseline_and_transfers():
    rng = np.random.default_rng(0)
    vol = ndimage.gaussian_filter(rng.random((16, 48, 48)), 3)
    vol = ((vol - vol.min()) / (vol.max() - vol.min()) * 255).astype(np.uint8)
    torch.manual_seed(0)
    r = pretrain([vol], kn=KN, iterations=40, batch_size=1, crop=CROP, lr=1e-2, warmup=0,
                 augment=A.AugmentConfig.none(), device="cpu")
    s = PretrainSampler([vol], CROP, A.AugmentConfig.none(), seed=7)
    x, clean, _ = s.batch(4)
    with torch.no_grad():
        rec, _ = r.model.eval()(torch.from_numpy(x))
    net_mse = float(((rec.numpy() - clean) ** 2).mean())
    noise_mse = float(((x - clean) ** 2).mean())          # baseline: keep the noisy input
    assert net_mse < 0.75 * noise_mse, (net_mse, noise_mse)
    with torch.no_grad():
        assert float(pretrain_loss(r.model, s.batch(1), "cpu")[0]) >= 0
    target = build_mnet(KN)
    names = transfer_encoder(r.model, target)
    assert names and not any(n.startswith(("up", "outputs")) for n in names)
    sd = r.model.mnet.state_dict()
    assert all(torch.equal(target.state_dict()[n], sd[n]) for n in names)


# ---------------------------------------------------------------- CLI
def test_cli_finetune_and_pretrain(tmp_path):
    import tifffile
    from napari_segneuron.cli import main

    img, lab = synthetic()
    tifffile.imwrite(tmp_path / "img.tif", img)
    tifffile.imwrite(tmp_path / "lab.tif", lab)
    out = tmp_path / "ft.pt"
    args = ["finetune", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), "-o", str(out), "--weights", "none",
            "--kn", "4,8,12,16,20", "--iterations", "2", "--crop", "8,32,32", "--device", "cpu"]
    assert main(args) == 0 and read_checkpoint(out)["iters"] == 2
    assert main(args) == 2                                   # refuses to overwrite
    pre = tmp_path / "pre.pt"
    assert main(["pretrain", str(tmp_path / "img.tif"), "-o", str(pre), "--kn", "4,8,12,16,20",
                 "--iterations", "2", "--crop", "8,32,32", "--device", "cpu"]) == 0
    assert read_checkpoint(pre)["iters"] == 2
    assert main(["finetune", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), "-o", str(tmp_path / "x.pt"),
                 "--weights", str(pre), "--iterations", "1", "--crop", "8,32,32", "--device", "cpu"]) == 0


def test_balanced_affinity_weights():
    from napari_segneuron.training.finetune import balance_weights

    t = torch.zeros(1, 3, 4, 10, 10)
    t[:, :, :, :, :8] = 1  # 80 % inside, 20 % boundary in every channel
    w = torch.ones_like(t)
    w[:, :, 0] = 0  # masked voxels stay masked
    b = balance_weights(t, w)
    assert float(b[:, :, 0].abs().max()) == 0.0
    for c in range(3):
        pos, neg = float((b[0, c] * t[0, c]).sum()), float((b[0, c] * (1 - t[0, c])).sum())
        assert pos == pytest.approx(neg)  # both classes weigh the same
    # a channel with a single boundary voxel gets at most the clip ratio
    t2 = torch.ones(1, 1, 2, 10, 10)
    t2[0, 0, 0, 0, 0] = 0
    b2 = balance_weights(t2, torch.ones_like(t2), max_ratio=10.0)
    assert float(b2.max()) == pytest.approx(10.0)


def test_weight_average_and_mixed_precision_finetune(tmp_path):
    from napari_segneuron._model import load_model
    from napari_segneuron.training.finetune import WeightAverage

    torch.manual_seed(0)
    net = build_mnet(KN)
    avg = WeightAverage(net, decay=0.5)
    first = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    avg.update(net)
    k = next(k for k, v in first.items() if v.is_floating_point())
    torch.testing.assert_close(avg.shadow[k], first[k] + 0.5)
    # finetune with an average and bf16 autocast: finite losses, the average is what comes back and is kept
    img, lab = synthetic()
    ck = tmp_path / "ft.pt"
    r = finetune(build_mnet(KN), img, lab, iterations=4, batch_size=1, crop=CROP, warmup=0, ema_decay=0.9,
                 mixed_precision=True, augment=A.AugmentConfig.none(), checkpoint=ck, checkpoint_every=2,
                 device="cpu")
    assert all(np.isfinite(v) for _, v in r.history)
    ema = load_model(tmp_path / "ft_ema.pt", device="cpu")
    raw = load_model(ck, device="cpu")
    sd_r, sd_e, sd_raw = r.model.state_dict(), ema.state_dict(), raw.state_dict()
    k = next(k for k in sd_r if sd_r[k].is_floating_point() and sd_r[k].numel() > 1)
    torch.testing.assert_close(sd_r[k].float(), sd_e[k].float())
    assert not torch.allclose(sd_e[k].float(), sd_raw[k].float())


# ---------------------------------------------------------------- issue 33: what a finetune inherits
def _sample_block(tmp_path=None):
    """A 16×64×64 corner of the bundled FIB-25 crop (20 nm, the default model's grid), its labels, a mask."""
    from napari_segneuron.samples import load_labels, load_raw

    raw, lab = load_raw()[:16, :64, :64], load_labels()[:16, :64, :64].astype(np.uint32)
    mask = np.zeros(raw.shape, bool)
    mask[:, 8:56, 8:56] = True
    return raw, lab, mask


def test_finetune_inherits_the_parents_declarations_and_records_it(tmp_path):
    """A model finetuned from the bundled default declares what the default declares (fg_threshold
    0.75, 20 nm, the reference neurite width) and names its parent and training data."""
    from napari_segneuron._model import fetch_weights, load_model, load_named
    from napari_segneuron._model.weights import sha256_of

    raw, lab, mask = _sample_block()
    parent = load_named("default", device="cpu")
    for start in ("default", parent):  # a registry name, and the loaded model (the dock's case)
        out = tmp_path / f"child-{type(start).__name__}.pt"
        finetune(start, raw, lab, mask=mask, iterations=2, batch_size=1, crop=CROP, checkpoint=out, device="cpu",
                 metadata={"training_data": {"image": "em", "labels": "painted"}})
        child = load_model(out)
        assert child.info["fg_threshold"] == parent.info["fg_threshold"] == 0.75
        assert child.info["voxel_size_nm"] == parent.info["voxel_size_nm"] == (20.0, 20.0, 20.0)
        assert child.info["neurite_halfwidth"] == pytest.approx(5.627)
        assert child.info["name"] == out.stem  # the parent's name is not inherited
        meta = child.info["metadata"]
        assert meta["parent"]["name"] == "default" and meta["parent"]["sha256"] == sha256_of(fetch_weights("default"))
        assert meta["parent"]["path"] == str(fetch_weights("default"))
        assert set(meta["inherited_from_parent"]) == {"voxel_size_nm", "fg_threshold", "neurite_halfwidth"}
        assert meta["training_data"] == {"image": "em", "labels": "painted", "image_shape": [16, 64, 64],
                                         "mask_box": [[0, 16], [8, 56], [8, 56]], "n_labels": meta["training_data"]
                                         ["n_labels"], "n_volumes": 1, "iterations": 2}
        assert meta["training_data"]["n_labels"] > 3
    # the registry's declarations count where a checkpoint declares none, and a declared scoring is kept
    tiny = build_mnet(KN)
    tiny.info = {"name": "tiny", "fg_threshold": 0.6, "voxel_size_nm": (8.0, 8.0, 8.0),
                 "metadata": {"scoring": "median-all"}}
    r = finetune(tiny, raw, lab, iterations=1, crop=CROP, checkpoint=tmp_path / "t.pt", device="cpu",
                 metadata={"fg_threshold": 0.4})  # metadata overrides what is inherited
    meta = read_checkpoint(r.checkpoint)["metadata"]
    assert meta["voxel_size_nm"] == [8.0, 8.0, 8.0] and meta["scoring"] == "median-all"
    assert meta["fg_threshold"] == 0.4 and "fg_threshold" not in meta["inherited_from_parent"]
    # fresh weights have no parent and declare nothing
    meta = read_checkpoint(finetune(None, raw, lab, kn=KN, iterations=1, crop=CROP, checkpoint=tmp_path / "f.pt",
                                    device="cpu").checkpoint)["metadata"]
    assert "parent" not in meta and meta.get("fg_threshold") is None and meta.get("voxel_size_nm") is None


def test_cli_finetune_inherits_and_declares_the_magnified_grid(tmp_path, capsys):
    """``napari-segneuron finetune`` from the default: the checkpoint keeps its foreground threshold
    and voxel size; trained at a magnification it declares the voxel size it was trained at."""
    import tifffile

    from napari_segneuron._model import load_model
    from napari_segneuron.cli import main

    raw, lab, _ = _sample_block()
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "lab.tif", lab)
    common = [str(tmp_path / "raw.tif"), str(tmp_path / "lab.tif"), "--weights", "default", "--iterations", "1",
              "--crop", "8,32,32", "--threads", "1"]
    assert main(["finetune", *common, "--magnify", "1", "-o", str(tmp_path / "one.pt")]) == 0
    info = load_model(tmp_path / "one.pt").info
    assert info["fg_threshold"] == 0.75 and info["voxel_size_nm"] == (20.0, 20.0, 20.0)
    assert info["neurite_halfwidth"] is None  # a magnification chosen by hand drops the reference
    meta = info["metadata"]
    assert meta["parent"]["name"] == "default"
    assert meta["training_data"]["image"] == str((tmp_path / "raw.tif").resolve())
    assert meta["training_data"]["labels"] == str((tmp_path / "lab.tif").resolve())
    assert meta["training_data"]["iterations"] == 1
    assert main(["finetune", *common, "--magnify", "2", "-o", str(tmp_path / "two.pt")]) == 0
    info = load_model(tmp_path / "two.pt").info
    assert info["voxel_size_nm"] == (10.0, 10.0, 10.0) and info["metadata"]["magnify"] == 2.0  # 20 nm / 2
    assert info["fg_threshold"] == 0.75 and info["metadata"]["parent"]["name"] == "default"


def test_cancel_before_the_first_step_writes_nothing(tmp_path):
    img, lab = synthetic()
    token = CancelToken()
    token.cancel()
    with pytest.raises(TrainingCancelled) as exc:
        finetune(None, img, lab, kn=KN, iterations=5, crop=CROP, checkpoint=tmp_path / "c.pt", cancel=token,
                 device="cpu")
    res = exc.value.result
    assert res.cancelled and res.iterations == 0 and res.checkpoint is None
    assert "before the first step" in str(exc.value)
    with pytest.raises(TrainingCancelled) as exc:
        pretrain([img], kn=KN, iterations=5, crop=CROP, checkpoint=tmp_path / "p.pt", cancel=token, device="cpu")
    assert exc.value.result.iterations == 0 and exc.value.result.checkpoint is None
    assert list(tmp_path.iterdir()) == []


def test_cancel_during_the_precision_probe_stops_it_and_writes_nothing(tmp_path, monkeypatch):
    """The one-off fp32/bf16 timing (seconds to a minute on a CPU) is announced and can be cancelled."""
    from napari_segneuron.training import step_precision

    img, lab = synthetic()
    token = CancelToken()
    heard = []

    def probe(net, shape, device, requested, *, log=None, announce=None, loss=None, **kw):
        announce(step_precision.PROBE_MESSAGE)
        token.cancel()  # the user presses Cancel while a step is being timed
        loss(False).backward()
        raise AssertionError("the probe was not cancelled")

    monkeypatch.setattr(step_precision, "use_mixed_precision", probe)
    with pytest.raises(TrainingCancelled) as exc:
        finetune(None, img, lab, kn=KN, iterations=5, crop=CROP, checkpoint=tmp_path / "c.pt", cancel=token,
                 device="cpu", mixed_precision=True, progress=lambda d, t, m: heard.append((d, t, m)))
    assert exc.value.result.iterations == 0 and exc.value.result.checkpoint is None
    assert heard == [(0, 5, step_precision.PROBE_MESSAGE)]
    assert "Timing one training step (fp32 vs bf16)" in step_precision.PROBE_MESSAGE
    assert list(tmp_path.iterdir()) == []


def test_time_budget_starts_after_the_probe_and_progress_counts_its_seconds(tmp_path, monkeypatch):
    """A time budget is training time: the precision probe before it is not counted; progress
    reports seconds of the budget, and 'iteration N' without the (huge) cap."""
    import time

    from napari_segneuron.training import step_precision
    from napari_segneuron.training.loop import NO_ITERATION_CAP

    img, lab = synthetic()
    probe_s, budget_s = 2.0, 1.5

    def probe(net, shape, device, requested, *, announce=None, **kw):
        announce(step_precision.PROBE_MESSAGE)
        time.sleep(probe_s)
        return False

    monkeypatch.setattr(step_precision, "use_mixed_precision", probe)
    heard, stamps = [], []
    r = finetune(None, img, lab, kn=KN, iterations=NO_ITERATION_CAP, crop=CROP, checkpoint=tmp_path / "c.pt",
                 device="cpu", mixed_precision=True, time_limit_s=budget_s, time_schedule=True,
                 progress=lambda d, t, m: heard.append((d, t, m)), loss_callback=lambda it, lv: stamps.append(time.time()))
    meta = read_checkpoint(r.checkpoint)["metadata"]
    assert meta["setup_s"] >= probe_s - 0.1
    assert stamps[-1] - stamps[0] >= budget_s - 0.6  # trained for the budget, after the probe
    assert r.wall_time_s >= probe_s + budget_s - 0.3
    assert heard[0] == (0, 2, step_precision.PROBE_MESSAGE)  # seconds of the budget, ceil(1.5)
    steps = [m for _, _, m in heard[1:]]
    assert steps[0].startswith("iteration 1, loss ") and steps[0].endswith(" of 0.025 min)")
    assert all(str(NO_ITERATION_CAP) not in m for m in steps)
    assert all(t == 2 and 0 <= d <= 2 for d, t, _ in heard)
    # with a cap, the cap is shown
    r = finetune(None, img, lab, kn=KN, iterations=2, crop=CROP, device="cpu",
                 progress=lambda d, t, m: heard.append((d, t, m)))
    assert heard[-1] == (2, 2, heard[-1][2]) and heard[-1][2].startswith("iteration 2/2, loss ")
