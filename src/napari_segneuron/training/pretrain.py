"""Self-supervised pretraining (SegNeuron): multi-scale noise masking, image + HOG reconstruction.

Patches of (z, xy) size drawn from {2,4,5} x {4,8,16} voxels are masked at a
50-70 % ratio and filled with Gaussian noise of the crop's mean and std. The
MNet encoder sees the masked crop; its two decoders reconstruct the clean
image and the per-slice HOG visualisation (skimage). Loss (SegNeuron):
``image_weight`` * MSE(image) + ``hog_weight`` * MSE(HOG), 0.2 and 1 by default.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cancel import CancelToken
from .augment import AugmentConfig, random_flip_rotate, zoom_pair
from .checkpoints import _atomic_torch_save, load_weights_only, read_checkpoint, read_optimizer_state, write_checkpoint
from .data import TrainingInputError, check_crop, normalize_image, _as3d
from .finetune import TrainResult, autocast_for, build_mnet, mnet_from_state_dict
from .loop import (LoopConfig, LoopResult, choose_step_precision, learning_rate, pick_device, restore_optimizer,
                   run_loop, set_lr)


class PretrainNet(nn.Module):
    """MNet body plus two 1-channel heads: image (affinity decoder) and HOG (foreground decoder)."""

    def __init__(self, kn: Sequence[int] = (16, 32, 48, 64, 128), fmu: str = "sub", mnet=None):
        super().__init__()
        self.mnet = mnet if mnet is not None else build_mnet(kn, fmu)
        k0 = self.mnet.kn[0]
        self.image_head = nn.Conv3d(k0, 1, 1)
        self.hog_head = nn.Conv3d(k0, 1, 1)

    @property
    def kn(self):
        return self.mnet.kn

    def forward(self, x: torch.Tensor):
        e = self.mnet.encode(x)
        return (torch.sigmoid(self.image_head(self.mnet.decode(e, ""))),
                torch.sigmoid(self.hog_head(self.mnet.decode(e, "_"))))


def hog_map(volume: np.ndarray, pixels_per_cell: int = 4, orientations: int = 9) -> np.ndarray:
    """Per-slice HOG visualisation of a 0..1 volume, scaled to 0..1 per volume."""
    from skimage.feature import hog
    vol = np.asarray(volume, dtype=np.float32)
    out = np.empty_like(vol)
    for z in range(vol.shape[0]):
        _, vis = hog(vol[z], orientations=orientations, pixels_per_cell=(pixels_per_cell, pixels_per_cell),
                     cells_per_block=(1, 1), visualize=True, feature_vector=True)
        out[z] = vis
    m = float(out.max())
    return out / m if m > 0 else out


def patch_mask(shape: Sequence[int], rng: np.random.Generator, z_sizes=(2, 4, 5), xy_sizes=(4, 8, 16),
               ratio=(0.5, 0.7)) -> np.ndarray:
    """Boolean mask (True = hidden) of randomly chosen patches of one random size."""
    pz = int(rng.choice(z_sizes))
    pxy = int(rng.choice(xy_sizes))
    grid = tuple(-(-s // p) for s, p in zip(shape, (pz, pxy, pxy)))
    n = int(np.prod(grid))
    k = int(round(n * rng.uniform(*ratio)))
    flat = np.zeros(n, dtype=bool)
    flat[rng.choice(n, size=k, replace=False)] = True
    m = flat.reshape(grid)
    m = m.repeat(pz, 0).repeat(pxy, 1).repeat(pxy, 2)
    return m[: shape[0], : shape[1], : shape[2]]


def mask_with_noise(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace masked voxels by Gaussian noise with the crop's mean and std."""
    noise = rng.normal(float(img.mean()), float(img.std()) + 1e-6, img.shape).astype(np.float32)
    return np.where(mask, noise, img).astype(np.float32)


class PretrainSampler:
    """Random crops (flip/rotate, optional zoom) -> (masked input, clean image, HOG)."""

    def __init__(self, images: Sequence[np.ndarray], crop: Sequence[int], augment: Optional[AugmentConfig] = None,
                 weights: Optional[Sequence[float]] = None, seed: int = 0, hog_cell: int = 4,
                 precompute_hog: bool = True):
        self.images = [normalize_image(_as3d(a, "pretraining image")) for a in images]
        # HOG of whole slices once (then cropped/flipped with the image): ~20x faster per step
        self.hogs = [hog_map(a, hog_cell) for a in self.images] if precompute_hog else None
        if not self.images:
            raise TrainingInputError("no images to pretrain on")
        self.crop = check_crop(crop, [a.shape for a in self.images], [f"image {i}" for i in range(len(self.images))])
        self.augment = augment if augment is not None else AugmentConfig(zoom=0.0)
        w = np.asarray(weights if weights is not None else [a.size for a in self.images], dtype=np.float64)
        self.p = w / w.sum()
        self.rng = np.random.default_rng(seed)
        self.hog_cell = hog_cell

    def clean_crop(self):
        """A clean augmented crop and its HOG map (None unless precomputed)."""
        rng, cfg, crop = self.rng, self.augment, self.crop
        idx = int(rng.choice(len(self.images), p=self.p))
        img = self.images[idx]
        hg = None if self.hogs is None else self.hogs[idx]
        src = crop
        if cfg.zoom > 0 and rng.random() < cfg.zoom:
            f = float(np.exp(rng.uniform(np.log(cfg.zoom_range[0]), np.log(cfg.zoom_range[1]))))
            fz = 1.0 if rng.random() < cfg.zoom_xy_only else f
            want = (round(crop[0] / fz), round(crop[1] / f), round(crop[2] / f))
            src = tuple(max(1, min(int(w), s)) for w, s in zip(want, img.shape))
        o = [int(rng.integers(0, s - c + 1)) for s, c in zip(img.shape, src)]
        sl = tuple(slice(a, a + n) for a, n in zip(o, src))
        c = img[sl]
        h = None if hg is None else hg[sl]
        if src != crop:
            c = zoom_pair(c, None, crop)[0]
            h = None if h is None else zoom_pair(h, None, crop)[0]
        arrs = random_flip_rotate([c] if h is None else [c, h], rng, cfg.flip, cfg.rotate90)
        return arrs[0].astype(np.float32), (None if h is None else arrs[1].astype(np.float32))

    def sample(self):
        clean, hg = self.clean_crop()
        if hg is None:
            hg = hog_map(clean, self.hog_cell)
        masked = mask_with_noise(clean, patch_mask(clean.shape, self.rng), self.rng)
        return masked[None], clean[None], hg[None]

    def batch(self, n: int):
        items = [self.sample() for _ in range(n)]
        return tuple(np.stack([it[i] for it in items]) for i in range(3))


def transfer_encoder(pretrained, model, include_decoders: bool = False) -> list:
    """Copy pretrained encoder weights into ``model`` (an MNet); returns the copied names.

    ``pretrained``: a PretrainNet, an MNet, a state dict or a checkpoint path.
    As in SegNeuron, decoders (``up*``) and heads (``outputs*``) stay as they are
    unless ``include_decoders``.
    """
    if isinstance(pretrained, PretrainNet):
        sd = pretrained.mnet.state_dict()
    elif isinstance(pretrained, nn.Module):
        sd = pretrained.state_dict()
    elif isinstance(pretrained, dict):
        sd = pretrained
    else:
        sd = read_checkpoint(pretrained)["model_weights"]
    own = model.state_dict()
    take = {}
    for k, v in sd.items():
        if k not in own or own[k].shape != v.shape or k.startswith("outputs"):
            continue
        if k.startswith("up") and not include_decoders:
            continue
        take[k] = v
    if not take:
        raise TrainingInputError("the pretrained weights share no encoder layers with this model (different kn?)")
    own.update(take)
    model.load_state_dict(own)
    return sorted(take)


def pretrain_loss(net: PretrainNet, batch, device, image_weight: float = 0.2, hog_weight: float = 1.0,
                  mixed_precision: bool = False):
    x, clean, hogm = (torch.from_numpy(b).to(device) for b in batch)
    with autocast_for(torch.device(device), mixed_precision):
        rec, rh = net(x)
    rec, rh = rec.float(), rh.float()
    l_img, l_hog = F.mse_loss(rec, clean), F.mse_loss(rh, hogm)
    return image_weight * l_img + hog_weight * l_hog, l_img, l_hog


def load_pretrain_net(path) -> PretrainNet:
    ck = read_checkpoint(path)
    net = PretrainNet(mnet=mnet_from_state_dict(ck["model_weights"]))
    heads = Path(str(path) + ".heads")
    if heads.is_file():
        saved = load_weights_only(heads)
        net.image_head.load_state_dict(saved["image_head"])
        net.hog_head.load_state_dict(saved["hog_head"])
    return net


def pretrain(
    images: Sequence[np.ndarray],
    *,
    model=None,
    kn: Sequence[int] = (16, 32, 48, 64, 128),
    fmu: str = "sub",
    iterations: int = 1000,
    batch_size: int = 2,
    crop: Sequence[int] = (20, 96, 96),
    lr: float = 1e-3,
    min_lr: float = 1e-5,
    schedule: str = "cosine",
    warmup: int = 20,
    image_weight: float = 0.2,
    hog_weight: float = 1.0,
    augment: Optional[AugmentConfig] = None,
    weights: Optional[Sequence[float]] = None,
    checkpoint=None,
    checkpoint_every: int = 100,
    resume=None,
    device=None,
    seed: int = 0,
    threads: Optional[int] = None,
    time_limit_s: Optional[float] = None,
    metadata: Optional[dict] = None,
    progress: Optional[Callable] = None,
    cancel: Optional[CancelToken] = None,
    loss_callback: Optional[Callable] = None,
    log: Optional[Callable[[str], None]] = None,
    mixed_precision: bool = False,
) -> TrainResult:
    """Masked image + HOG reconstruction on raw volumes; returns a TrainResult whose model is a PretrainNet.

    The checkpoint holds the MNet weights in the official layout (load it with
    ``transfer_encoder`` or as a start for ``finetune``); the two extra heads go
    to ``<checkpoint>.heads``. ``time_limit_s`` counts from the end of the set-up (the precision
    probe); ``progress`` then reports seconds of it, else iterations (``NO_ITERATION_CAP``: none).
    A cancel before the first step writes nothing (``TrainingCancelled.result.checkpoint`` None).
    """
    t0 = time.time()
    say = log or (lambda s: None)
    if threads:
        torch.set_num_threads(int(threads))
    sampler = PretrainSampler(images, crop, augment, weights=weights, seed=seed)
    start, opt_state = 0, None
    if resume is not None:
        net = load_pretrain_net(resume)
        start, opt_state = read_checkpoint(resume)["iters"], read_optimizer_state(resume)
    elif isinstance(model, PretrainNet):
        net = model
    elif isinstance(model, nn.Module):
        net = PretrainNet(mnet=model)
    else:
        net = PretrainNet(kn, fmu)
    dev = pick_device(device)
    net = net.to(dev).float().train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    meta = {"kn": list(net.kn), "fmu": net.mnet.fmu, "trained_by": "napari_segneuron.training.pretrain",
            "crop": list(sampler.crop), "image_weight": image_weight, "hog_weight": hog_weight,
            "input_normalization": "uint8/255", **(metadata or {})}

    def save(it: int, run: LoopResult) -> Optional[Path]:
        if ckpt is None:
            return None
        write_checkpoint(net.mnet, ckpt, it, dict(meta, iterations_done=it, setup_s=round(run.setup_s, 1)),
                         optimizer_state={"optimizer": opt.state_dict(), "iters": it})
        _atomic_torch_save({"image_head": net.image_head.state_dict(), "hog_head": net.hog_head.state_dict()},
                           Path(str(ckpt) + ".heads"))
        return ckpt

    def setup(announce) -> None:
        nonlocal mixed_precision
        mixed_precision = choose_step_precision(net, sampler, batch_size, dev, mixed_precision, lambda b, mixed: (
            pretrain_loss(net, b, dev, image_weight, hog_weight, mixed)[0]), say, announce)
        restore_optimizer(opt, opt_state, sampler, seed, start, say)

    def step(it: int, cur: float):
        set_lr(opt, cur)
        batch = sampler.batch(batch_size)
        opt.zero_grad(set_to_none=True)
        loss, li, lh = pretrain_loss(net, batch, dev, image_weight, hog_weight, mixed_precision)
        loss.backward()
        opt.step()
        return loss.item(), f"img {li.item():.5f} hog {lh.item():.5f}"

    def as_result(run: LoopResult) -> TrainResult:
        return TrainResult(model=net, checkpoint=run.checkpoint, iterations=run.iterations, history=run.history,
                           cancelled=run.cancelled, wall_time_s=run.wall_time_s)

    return as_result(run_loop(net, step, LoopConfig(
        iterations=iterations, time_limit_s=time_limit_s, start=start,
        schedule=lambda it, _elapsed: learning_rate(it, iterations, lr, min_lr, schedule, warmup),
        checkpoint_every=checkpoint_every, save=save, setup=setup, on_cancel=as_result, cancel=cancel,
        progress=progress, loss_callback=loss_callback, log=say, log_prefix="pretrain ", unit="pretraining iteration",
        t0=t0)))
