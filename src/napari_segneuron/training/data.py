"""Training volumes, input checks and the random crop sampler used by finetuning."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .augment import (AugmentConfig, amplitude_mix, cutmix, intensity_jitter, random_box, random_flip_rotate,
                      zoom_pair, zoom_source_shape)
from .targets import affinities_from_labels, affinity_mask

try:  # the package-wide user-facing error, if present
    from ..io import InputError as _InputBase  # type: ignore
except Exception:  # pragma: no cover - io.py not there yet
    _InputBase = ValueError


class TrainingInputError(_InputBase):
    """Bad training input (shapes, empty labels, crop too big, unreadable checkpoint)."""


def normalize_image(img: np.ndarray) -> np.ndarray:
    """Scale raw intensities to float32 0..1 exactly as inference does.

    Integers are divided by their dtype maximum (uint8 / 255); float data already
    in 0..1 is kept, any other float range is min-max scaled.
    """
    a = np.asarray(img)
    try:
        from ..io import intensity_scale  # the predictor's own rule
        offset, scale = intensity_scale(a)
    except Exception:  # pragma: no cover - inference module unavailable
        if np.issubdtype(a.dtype, np.integer):
            offset, scale = 0.0, float(np.iinfo(a.dtype).max)
        else:
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            offset, scale = (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, max(hi - lo, 1e-12))
    out = (a.astype(np.float32) - np.float32(offset)) / np.float32(scale)
    return np.clip(out, 0.0, 1.0, out=out)


@dataclass
class TrainVolume:
    """One annotated volume: image (Z,Y,X), instance labels, optional annotated-voxel mask.

    ``z_affinity=False`` marks labels that are only valid per slice (e.g. ids
    derived from 2D membrane masks): the z affinity is then left out of the loss.
    """

    image: np.ndarray
    labels: np.ndarray
    mask: Optional[np.ndarray] = None
    z_affinity: bool = True
    weight: float = 1.0
    name: str = "volume"
    _norm: np.ndarray = field(default=None, repr=False)
    _box: Optional[tuple] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.image = _as3d(self.image, f"{self.name} image")
        self.labels = _as3d(self.labels, f"{self.name} labels")
        if self.labels.shape != self.image.shape:
            raise TrainingInputError(
                f"{self.name}: labels shape {self.labels.shape} differs from image shape {self.image.shape}")
        if not np.issubdtype(self.labels.dtype, np.integer):
            if not np.all(np.mod(self.labels, 1) == 0):
                raise TrainingInputError(f"{self.name}: labels must be integer ids")
            self.labels = self.labels.astype(np.int64)
        if self.mask is not None:
            self.mask = _as3d(self.mask, f"{self.name} mask").astype(bool)
            if self.mask.shape != self.image.shape:
                raise TrainingInputError(
                    f"{self.name}: mask shape {self.mask.shape} differs from image shape {self.image.shape}")
        fg = self.labels > 0 if self.mask is None else (self.labels > 0) & self.mask
        if not fg.any():
            raise TrainingInputError(f"{self.name}: the labels contain no foreground (all 0 / unannotated)")
        self._norm = normalize_image(self.image)
        self._box = None
        if self.mask is not None and not self.mask.all():
            nz = [np.flatnonzero(self.mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
            self._box = tuple((int(n[0]), int(n[-1]) + 1) for n in nz)

    def annotated_box(self) -> Optional[tuple]:
        """Per axis (start, stop) of the annotated voxels' bounding box; None without a mask."""
        return self._box


def _as3d(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise TrainingInputError(f"{what} must be 2D or 3D (Z, Y, X), got shape {a.shape}")
    if a.size == 0:
        raise TrainingInputError(f"{what} is empty")
    return a


def check_crop(crop: Sequence[int], shapes: Sequence[tuple], names: Sequence[str]) -> tuple:
    """Validate a (Z, Y, X) crop: Y and X multiples of 16 that fit every volume."""
    crop = tuple(int(c) for c in crop)
    if len(crop) != 3 or min(crop) < 1:
        raise TrainingInputError(f"crop must be three positive sizes (Z, Y, X), got {crop}")
    if crop[1] % 16 or crop[2] % 16:
        raise TrainingInputError(f"crop Y and X must be multiples of 16 (the network pools 4 times), got {crop}")
    for shape, name in zip(shapes, names):
        if any(c > s for c, s in zip(crop, shape)):
            raise TrainingInputError(
                f"crop {crop} is larger than {name} of shape {tuple(shape)}; use a smaller crop")
    return crop


class CropSampler:
    """Draw augmented training samples (image, affinities, foreground, loss weights) from volumes."""

    def __init__(self, volumes: Sequence[TrainVolume], crop: Sequence[int], augment: Optional[AugmentConfig] = None,
                 amp_sources: Optional[Sequence[np.ndarray]] = None, seed: int = 0):
        if not volumes:
            raise TrainingInputError("no training volumes given")
        self.volumes = list(volumes)
        self.crop = check_crop(crop, [v.image.shape for v in self.volumes], [v.name for v in self.volumes])
        self.augment = augment if augment is not None else AugmentConfig()
        w = np.array([max(v.weight, 0.0) for v in self.volumes], dtype=np.float64)
        self.p = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
        # raw volumes whose amplitude spectra may be borrowed (default: the training images)
        srcs = [normalize_image(_as3d(a, "amplitude source")) for a in (amp_sources or [])]
        self.amp_sources = [s for s in srcs if all(c <= d for c, d in zip(self.crop, s.shape))] or \
            [v._norm for v in self.volumes]
        self.rng = np.random.default_rng(seed)

    def _raw_crop(self, vol: TrainVolume):
        rng, cfg, crop = self.rng, self.augment, self.crop
        src = crop
        if cfg.zoom > 0 and rng.random() < cfg.zoom:
            f = float(np.exp(rng.uniform(np.log(cfg.zoom_range[0]), np.log(cfg.zoom_range[1]))))
            src, _ = zoom_source_shape(crop, vol.image.shape, f, zoom_z=rng.random() >= cfg.zoom_xy_only)
        box = vol.annotated_box()
        if box is None:
            o = [int(rng.integers(0, s - c + 1)) for s, c in zip(vol.image.shape, src)]
        else:  # crops centred in the annotated box: a small labelled block in a big stack still trains every step
            o = [int(np.clip(int(rng.integers(lo, hi)) - c // 2, 0, s - c))
                 for (lo, hi), s, c in zip(box, vol.image.shape, src)]
        sl = tuple(slice(a, a + c) for a, c in zip(o, src))
        img, lab = vol._norm[sl], vol.labels[sl]
        msk = None if vol.mask is None else vol.mask[sl]
        if src != crop:
            img, lab, msk = zoom_pair(img, lab, crop, msk)
        return img, lab, msk

    def sample_plain(self) -> dict:
        """One sample with spatial and intensity augmentation but no mixing."""
        vol = self.volumes[int(self.rng.choice(len(self.volumes), p=self.p))]
        img, lab, msk = self._raw_crop(vol)
        arrs = [img, lab] + ([] if msk is None else [msk])
        arrs = random_flip_rotate(arrs, self.rng, self.augment.flip, self.augment.rotate90)
        img, lab = arrs[0], arrs[1]
        msk = arrs[2] if msk is not None else None
        aff = affinities_from_labels(lab)
        w_aff = affinity_mask(msk, lab.shape)
        if not vol.z_affinity:
            w_aff[0] = 0.0
        fg = (lab > 0).astype(np.float32)[None]
        w_fg = np.ones_like(fg) if msk is None else msk.astype(np.float32)[None]
        return {"image": img.astype(np.float32)[None], "aff": aff, "fg": fg, "w_aff": w_aff, "w_fg": w_fg}

    def sample(self) -> dict:
        """One fully augmented sample, including SegNeuron's frequency and spatial mixing."""
        cfg, rng = self.augment, self.rng
        s = self.sample_plain()
        if cfg.freq_mix > 0 and rng.random() < cfg.freq_mix:
            src = self.amp_sources[int(rng.integers(len(self.amp_sources)))]
            o = [int(rng.integers(0, d - c + 1)) for d, c in zip(src.shape, self.crop)]
            other = src[tuple(slice(a, a + c) for a, c in zip(o, self.crop))]
            strength = float(rng.uniform(*cfg.freq_strength))
            s["image"] = np.clip(amplitude_mix(s["image"][0], other, cfg.freq_band, strength), 0, 1)[None]
        if cfg.spatial_mix > 0 and rng.random() < cfg.spatial_mix:
            other = self.sample_plain()
            s = cutmix(s, other, random_box(self.crop, cfg.mix_box_fraction, rng))
        s["image"] = intensity_jitter(s["image"][0], rng, cfg)[None]
        return s

    def batch(self, n: int) -> dict:
        """Stack ``n`` samples into float32 arrays with a leading batch axis."""
        items = [self.sample() for _ in range(n)]
        return {k: np.stack([it[k] for it in items]).astype(np.float32) for k in items[0]}
