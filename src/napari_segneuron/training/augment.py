"""Augmentations for training crops (numpy, channel-first targets).

Spatial augmentations (flips, xy 90-degree rotations, zoom) act on the *labels*
before targets are computed, so affinities stay exact. Intensity jitter (random
monotone histogram curves, histogram equalisation, brightness / contrast / gamma,
noise, blur) acts on the image only. The two SegNeuron mixing augmentations act on a finished
sample: frequency-domain amplitude mixing (image only) and spatial CutMix
(image, affinities, foreground and loss weights pasted together).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage


@dataclass
class AugmentConfig:
    """Probabilities and ranges for every augmentation; defaults follow SegNeuron where it says."""

    flip: bool = True
    rotate90: bool = True
    intensity: float = 0.8            # probability of brightness/contrast/gamma jitter
    brightness: float = 0.15          # +- shift on the 0..1 scale
    contrast: tuple = (0.6, 1.5)
    gamma: tuple = (0.7, 1.4)
    noise: float = 0.3                # probability of Gaussian noise
    noise_std: tuple = (0.01, 0.1)
    blur: float = 0.2                 # probability of Gaussian blur in xy
    blur_sigma: tuple = (0.3, 1.5)
    freq_mix: float = 0.25            # probability of amplitude mixing (SegNeuron 0.25)
    freq_band: float = 0.1            # half-width of the swapped low-frequency band, fraction of size
    spatial_mix: float = 0.25         # probability of CutMix (SegNeuron 0.25)
    mix_box_fraction: float = 70 / 128  # box side / crop side (SegNeuron: 70 on 128)
    freq_strength: tuple = (1.0, 1.0)  # blend of the borrowed amplitudes (1 = replace)
    zoom: float = 0.0                 # probability of scale augmentation
    zoom_range: tuple = (0.7, 1.4)    # >1 magnifies
    zoom_xy_only: float = 0.5         # share of zooms that leave z alone
    histogram: float = 0.0            # probability of a random monotone intensity remapping
    histogram_points: int = 5         # inner control points of that remapping curve
    equalize: float = 0.0             # probability of blending towards the histogram-equalised image

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Every augmentation off."""
        return cls(flip=False, rotate90=False, intensity=0.0, noise=0.0, blur=0.0,
                   freq_mix=0.0, spatial_mix=0.0, zoom=0.0, histogram=0.0, equalize=0.0)

    @classmethod
    def robust(cls) -> "AugmentConfig":
        """Strong scale and contrast augmentation for a model meant for unseen stacks: zoom 0.5-2x
        (half of the samples), wide contrast / gamma, random monotone histogram remapping,
        histogram equalisation and frequent amplitude mixing."""
        return cls(contrast=(0.4, 1.8), gamma=(0.5, 2.0), brightness=0.2, freq_mix=0.5,
                   freq_strength=(0.5, 1.0), zoom=0.5, zoom_range=(0.5, 2.0), histogram=0.3, equalize=0.15)


def random_flip_rotate(arrays: Sequence[np.ndarray], rng: np.random.Generator,
                       flip: bool = True, rotate: bool = True) -> list:
    """Apply one random flip / xy-rotation to several (..., Z, Y, X) arrays alike."""
    out = list(arrays)
    if flip:
        for axis in (-3, -2, -1):
            if rng.random() < 0.5:
                out = [np.flip(a, axis=axis) for a in out]
    if rotate:
        k = int(rng.integers(4))
        if k and all(a.shape[-1] == a.shape[-2] for a in out):
            out = [np.rot90(a, k, axes=(-2, -1)) for a in out]
        elif k % 2 == 0 and k:
            out = [np.rot90(a, 2, axes=(-2, -1)) for a in out]
    return [np.ascontiguousarray(a) for a in out]


def histogram_remap(img: np.ndarray, rng: np.random.Generator, points: int = 5) -> np.ndarray:
    """A random monotone (order-keeping) intensity curve on a 0..1 image.

    The curve runs through (0, 0), ``points`` random inner control points whose heights are
    sorted uniform draws, and (1, 1), linearly interpolated: it stretches some intensity
    ranges and squeezes others, as stains and detector settings do.
    """
    xs = np.linspace(0.0, 1.0, points + 2)
    ys = np.concatenate([[0.0], np.sort(rng.uniform(0.0, 1.0, points)), [1.0]])
    return np.interp(img, xs, ys).astype(np.float32)


def equalize(img: np.ndarray, amount: float = 1.0) -> np.ndarray:
    """Blend a 0..1 image towards its global histogram-equalised version (``amount`` 1 = fully)."""
    flat = img.ravel()
    ranks = np.empty(flat.size, dtype=np.float64)
    order = np.argsort(flat, kind="stable")
    ranks[order] = np.arange(flat.size)
    # equal values share their mean rank so the mapping stays a function of intensity
    uniq, inv = np.unique(flat, return_inverse=True)
    mean_rank = np.bincount(inv, weights=ranks) / np.bincount(inv)
    eq = (mean_rank[inv] / max(flat.size - 1, 1)).reshape(img.shape)
    return ((1.0 - amount) * img + amount * eq).astype(np.float32)


def intensity_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Histogram remapping / equalisation, brightness, contrast, gamma, noise and blur on a 0..1 float image."""
    img = img.astype(np.float32, copy=True)
    if cfg.equalize > 0 and rng.random() < cfg.equalize:
        img = equalize(np.clip(img, 0.0, 1.0), float(rng.uniform(0.5, 1.0)))
    if cfg.histogram > 0 and rng.random() < cfg.histogram:
        img = histogram_remap(np.clip(img, 0.0, 1.0), rng, cfg.histogram_points)
    if rng.random() < cfg.intensity:
        mean = float(img.mean())
        img = (img - mean) * rng.uniform(*cfg.contrast) + mean + rng.uniform(-cfg.brightness, cfg.brightness)
        np.clip(img, 0.0, 1.0, out=img)
        img = img ** rng.uniform(*cfg.gamma)
    if rng.random() < cfg.blur:
        img = ndimage.gaussian_filter(img, sigma=(0, *([rng.uniform(*cfg.blur_sigma)] * 2)))
    if rng.random() < cfg.noise:
        img = img + rng.normal(0.0, rng.uniform(*cfg.noise_std), img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def amplitude_mix(img: np.ndarray, other: np.ndarray, band: float = 0.1, strength: float = 1.0) -> np.ndarray:
    """Per z-slice: keep ``img``'s phase, take the low-frequency amplitude from ``other``.

    ``band`` is the half-width of the centred square of swapped frequencies as a
    fraction of each in-plane size; ``strength`` in 0..1 blends the amplitudes
    (1 = replace). Output is not clipped (that would change the phase).
    """
    if img.shape != other.shape:
        raise ValueError(f"amplitude_mix needs equal shapes, got {img.shape} and {other.shape}")
    a = np.fft.fftshift(np.fft.fft2(img.astype(np.float64), axes=(-2, -1)), axes=(-2, -1))
    b = np.fft.fftshift(np.fft.fft2(other.astype(np.float64), axes=(-2, -1)), axes=(-2, -1))
    amp, phase = np.abs(a), np.angle(a)
    amp_b = np.abs(b)
    h, w = img.shape[-2:]
    ry, rx = max(1, int(round(band * h))), max(1, int(round(band * w)))
    cy, cx = h // 2, w // 2
    sl = (..., slice(cy - ry, cy + ry + 1), slice(cx - rx, cx + rx + 1))
    amp[sl] = (1 - strength) * amp[sl] + strength * amp_b[sl]
    mixed = np.fft.ifft2(np.fft.ifftshift(amp * np.exp(1j * phase), axes=(-2, -1)), axes=(-2, -1))
    return np.real(mixed).astype(np.float32)


def random_box(shape: Sequence[int], fraction: float, rng: np.random.Generator) -> tuple:
    """A full-depth box of side ``fraction`` of the xy size at a random place: (slice_y, slice_x)."""
    h, w = shape[-2:]
    by, bx = max(1, int(round(fraction * h))), max(1, int(round(fraction * w)))
    y0 = int(rng.integers(0, h - by + 1))
    x0 = int(rng.integers(0, w - bx + 1))
    return slice(y0, y0 + by), slice(x0, x0 + bx)


def cutmix(sample: dict, other: dict, box: tuple) -> dict:
    """Paste ``box`` (slice_y, slice_x) of ``other`` into ``sample``: image, targets and weights.

    Objects inside the box belong to another crop, so affinities that cross the
    box border (the first row / column inside it, whose predecessor lies
    outside) are set to 0.
    """
    sy, sx = box
    out = {k: v.copy() for k, v in sample.items()}
    for key in ("image", "aff", "fg", "w_aff", "w_fg"):
        if key in out and key in other:
            out[key][..., sy, sx] = other[key][..., sy, sx]
    if "aff" in out:
        if sy.start > 0:
            out["aff"][1, :, sy.start, sx] = 0.0
        if sx.start > 0:
            out["aff"][2, :, sy, sx.start] = 0.0
        if sy.stop < out["aff"].shape[-2]:
            out["aff"][1, :, sy.stop, sx] = 0.0
        if sx.stop < out["aff"].shape[-1]:
            out["aff"][2, :, sy, sx.stop] = 0.0
    return out


def zoom_source_shape(crop: Sequence[int], volume: Sequence[int], factor: float, zoom_z: bool) -> tuple:
    """Source box that, resized to ``crop``, shows the volume magnified by ``factor``.

    The factor is applied alike to y and x (and z when ``zoom_z``); when the volume is too
    small for the requested zoom-out, the factor is raised for all those axes together, so
    the aspect ratio never changes. Returns (source shape, factor actually used).
    """
    axes = (0, 1, 2) if zoom_z else (1, 2)
    f = max([factor] + [crop[a] / volume[a] for a in axes])
    src = tuple(int(round(c / f)) if a in axes else c for a, c in enumerate(crop))
    src = tuple(max(1, min(s, v)) for s, v in zip(src, volume))
    return src, f


def zoom_pair(img: np.ndarray, labels: Optional[np.ndarray], out_shape: Sequence[int],
              mask: Optional[np.ndarray] = None):
    """Resize image (linear) and labels / mask (nearest) to ``out_shape``."""
    factors = [o / s for o, s in zip(out_shape, img.shape)]
    zi = ndimage.zoom(img.astype(np.float32), factors, order=1, mode="nearest", grid_mode=True)
    zl = None if labels is None else ndimage.zoom(labels, factors, order=0, mode="nearest", grid_mode=True)
    zm = None if mask is None else ndimage.zoom(mask.astype(np.uint8), factors, order=0, mode="nearest",
                                                grid_mode=True)
    return _fit(zi, out_shape), None if zl is None else _fit(zl, out_shape), None if zm is None else _fit(zm, out_shape)


def _fit(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Crop or edge-pad to exactly ``shape`` (zoom can be off by one)."""
    a = a[tuple(slice(0, s) for s in shape)]
    pad = [(0, s - d) for s, d in zip(shape, a.shape)]
    if any(p[1] for p in pad):
        a = np.pad(a, pad, mode="edge")
    return a
