"""Training and scoring the light-microscopy ViT3D foreground model on rendered stacks.

``make_renders`` draws LM-like stacks (:mod:`napari_segneuron.lm_render`), ``LMTrainer``
trains one model on random crops (soft Dice + weighted BCE, xy flips/rotations) with
resumable state, ``evaluate`` scores a model on whole held-out renders (Dice, HD95 in
voxels). ``scripts/train_lm_model.py`` runs scratch / "center" / "average" side by side.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..lm_render import Render, render_sample


def normalise_lm(volume: np.ndarray, low: float = 0.5, high: float = 99.95) -> np.ndarray:
    """Percentile-normalise an LM stack to float32 in [0, 1] (background ~0, neurites up to 1)."""
    v = np.asarray(volume, dtype=np.float32)
    sample = v[:: max(1, v.shape[0] // 16)]
    lo, hi = np.percentile(sample, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def make_renders(
    n: int, seed: int, shape: Sequence[int] = (40, 160, 160), morphologies: Sequence[np.ndarray] = (),
    real_fraction: float = 0.35, progress: Optional[Callable[[int, int, str], None]] = None,
) -> list[Render]:
    """``n`` renders from ``seed``; a fraction uses the given real morphologies (SWC arrays)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        morph = None
        if morphologies and rng.random() < real_fraction:
            morph = morphologies[int(rng.integers(len(morphologies)))]
        out.append(render_sample(rng, shape, morph))
        if progress:
            progress(i + 1, n, "rendering")
    return out


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    denom = pred.sum() + truth.sum()
    return float(2.0 * np.logical_and(pred, truth).sum() / denom) if denom else 1.0


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """95th-percentile symmetric surface distance in voxels (inf when one mask is empty)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    if not pred.any() or not truth.any():
        return float("inf")
    sp = pred & ~ndi.binary_erosion(pred)
    st = truth & ~ndi.binary_erosion(truth)
    d_to_t = ndi.distance_transform_edt(~st)[sp]
    d_to_p = ndi.distance_transform_edt(~sp)[st]
    return float(np.percentile(np.concatenate([d_to_t, d_to_p]), 95))


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    for axis in (0, 1):
        if rng.random() < 0.5:
            x, y = np.flip(x, axis), np.flip(y, axis)
    # intensity jitter: gamma and contrast on the normalised image
    x = np.clip(x, 0, 1) ** rng.uniform(0.7, 1.4) * rng.uniform(0.8, 1.2)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)


class CropSource:
    """Random (Z,Y,X) crops from normalised renders, most of them centred near the neuron."""

    def __init__(self, renders: Sequence[Render], crop: Sequence[int], fg_fraction: float = 0.8):
        self.images = [normalise_lm(r.stack) for r in renders]
        self.masks = [r.mask for r in renders]
        self.fg = [np.argwhere(m) for m in self.masks]
        self.crop = tuple(int(c) for c in crop)
        self.fg_fraction = fg_fraction

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(size):
            i = int(rng.integers(len(self.images)))
            img, m = self.images[i], self.masks[i]
            shape = img.shape
            if len(self.fg[i]) and rng.random() < self.fg_fraction:
                centre = self.fg[i][int(rng.integers(len(self.fg[i])))]
                start = [int(np.clip(c - s // 2 + rng.integers(-s // 4, s // 4 + 1), 0, n - s))
                         for c, s, n in zip(centre, self.crop, shape)]
            else:
                start = [int(rng.integers(0, n - s + 1)) for s, n in zip(self.crop, shape)]
            sl = tuple(slice(a, a + s) for a, s in zip(start, self.crop))
            x, y = _augment(img[sl], m[sl].astype(np.float32), rng)
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)[:, None])


def loss_fn(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 3.0) -> torch.Tensor:
    """Weighted BCE + soft Dice (the foreground is a few % of a crop)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=torch.tensor(pos_weight, device=logits.device))
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    soft_dice = 1 - (2 * inter + 1) / (p.sum() + target.sum() + 1)
    return bce + soft_dice


class LMTrainer:
    """One model, its optimiser and its sampling RNG, saved and restored together."""

    def __init__(self, model: torch.nn.Module, lr: float = 1e-3, seed: int = 0, weight_decay: float = 1e-4,
                 encoder_lr_scale: float = 0.3):
        self.model = model
        enc = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
        rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if enc:  # the transformer (pretrained or not) learns more slowly than the conv decoder
            groups.append({"params": enc, "lr_scale": encoder_lr_scale})
        self.opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        self.rng = np.random.default_rng(seed)
        self.step = 0
        self.losses: list[float] = []

    def train(self, source: CropSource, steps: int, batch_size: int = 2, total_steps: Optional[int] = None,
              warmup: int = 20, lr: float = 1e-3) -> float:
        """``steps`` optimiser steps (cosine schedule over ``total_steps``); returns the mean loss."""
        self.model.train()
        total = total_steps or (self.step + steps)
        run = []
        for _ in range(steps):
            frac = min(1.0, self.step / max(1, total))
            scale = min(1.0, (self.step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
            run.append(self.train_step(source, batch_size, lr * scale))
        self.losses.extend(run)
        return float(np.mean(run)) if run else float("nan")

    def train_step(self, source: CropSource, batch_size: int, lr: float, device=None) -> float:
        """One optimiser step at learning rate ``lr`` (times each group's ``lr_scale``); returns the loss."""
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        x, y = source.batch(self.rng, batch_size)
        if device is not None:
            x, y = x.to(device), y.to(device)
        loss = loss_fn(self.model.forward_logits(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the LM training loss became {loss.item()} at step {self.step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        return loss.item()

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "rng": self.rng.bit_generator.state, "losses": self.losses}

    def save(self, path: Union[str, Path]) -> None:
        from ..atomic import atomic_output

        with atomic_output(path) as tmp:
            torch.save(self.state(), tmp)

    def load(self, path: Union[str, Path]) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own resume file
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])
        self.rng.bit_generator.state = state["rng"]
        self.losses = list(state["losses"])


@torch.no_grad()
def predict_whole(model: torch.nn.Module, volume: np.ndarray) -> np.ndarray:
    """Foreground probability of a normalised (Z,Y,X) volume in one forward pass (small volumes)."""
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return model(x)[0, 0].numpy()


def evaluate(model: torch.nn.Module, renders: Sequence[Render], threshold: float = 0.5) -> dict:
    """Mean Dice and HD95 (voxels) over whole held-out renders, with per-render values."""
    dices, hds = [], []
    for r in renders:
        prob = predict_whole(model, normalise_lm(r.stack))
        pred = prob > threshold
        dices.append(dice(pred, r.mask))
        hds.append(hd95(pred, r.mask))
    return {"dice": float(np.mean(dices)), "hd95": float(np.mean(hds)), "dice_each": dices, "hd95_each": hds}


def tune_threshold(model: torch.nn.Module, renders: Sequence[Render],
                   candidates: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> tuple[float, dict]:
    """The probability threshold with the best mean Dice on ``renders`` (use training renders)."""
    probs = [predict_whole(model, normalise_lm(r.stack)) for r in renders]
    scores = {float(t): float(np.mean([dice(p > t, r.mask) for p, r in zip(probs, renders)])) for t in candidates}
    return max(scores, key=scores.get), scores


def classical_threshold(stack: np.ndarray, mask: np.ndarray, sigma: float = 1.0) -> tuple[float, float]:
    """Best Dice over thresholds of the smoothed, normalised stack (a tuned classical baseline).
    Returns (dice, threshold)."""
    img = ndi.gaussian_filter(normalise_lm(stack), sigma)
    best = (0.0, 0.0)
    for t in np.linspace(0.02, 0.9, 45):
        best = max(best, (dice(img > t, mask), float(t)))
    return best
