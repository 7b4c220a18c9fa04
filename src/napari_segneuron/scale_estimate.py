"""Label-free magnification: how much finer a stack's neurites look to the model than its training data.

The default model is scale sensitive: larval serial-section TEM (finer neurites and membranes than
the fly medulla it learned) segments far better shown 1.3-1.5x larger (see MODEL_CARD.md). The
user's labels can pick that factor (``calibration``); this module picks it without labels.

The statistic is the model's own **neurite half-width**: the mean distance, within each xy
section, from a voxel inside a neurite (both xy affinities and the foreground above 0.5) to the
nearest boundary, in model voxels. Shown at the right scale, a stack's neurites should be as wide
as those of the training data, so the estimate is

    magnify = reference half-width / measured half-width

iterated once more at the first estimate (the statistic is not exactly proportional to the
scale). The reference is the model's half-width on the FIB-25 crop it was trained on, at its
true scale; checkpoints declare it as ``neurite_halfwidth`` in their metadata. Estimates below
``DEAD_ZONE`` count as 1, so stacks like the training data are predicted as before, and the
estimate never shrinks a stack (``LIMITS``). Measured with the default model
(benchmarks/bench_scale_estimate.py): fib25_b 0.96 -> 1, the unlabeled FIB-25 cube at its
documented 10 nm 1.16 -> 1, fib25_b given as 10 nm 1.9, the larval VNC stack at its true 4.6 nm 1.45.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from .cancel import CancelToken
from .io import InputError, as_volume

# estimates below this are taken as 1: the statistic's spread between crops of the same tissue
# reaches 20 % (fib25_b 0.96, the unlabeled FIB-25 cube at its documented 10 nm 1.16, fib25_c 0.80)
DEAD_ZONE = 1.25
# never shrinks: the model segments neurites wider than its training data's well (fib25_b shown 2x
# too large: VI 0.340 against 0.365 at its true scale; fib25_c, estimate 0.80: 0.249 at 1, 0.300
# shrunk to 0.75), while finer ones are what it misses (MODEL_CARD.md)
LIMITS = (1.0, 3.0)
STEP = 0.05  # estimates are rounded to this, so a re-run gives the same number
# sample blocks on the model grid at magnification 1 (z, y, x) and how many of them
BLOCK = (32, 160, 160)
N_BLOCKS = 3
# a stack up to this many times one block is measured whole (small crops hold few neurites:
# parts of them give noisy half-widths)
WHOLE = 4
MIN_INTERIOR = 2000  # fewer neurite voxels than this in all blocks: no estimate
MIN_BOUNDARY = 0.02  # sections with fewer boundary voxels than this fraction are not measured


@dataclass
class ScaleEstimate:
    """What ``estimate_magnification`` found: ``magnify`` is what to predict with."""

    magnify: float
    raw: Optional[float]  # the estimate before rounding and the dead zone (None: none possible)
    reference: Optional[float]
    halfwidths: list = field(default_factory=list)  # (magnification tried, half-width measured)
    note: str = ""

    def record(self) -> dict:
        """JSON-ready, for provenance."""
        return {"magnify": self.magnify, "raw": None if self.raw is None else round(self.raw, 3),
                "reference": self.reference, "halfwidths": [[m, w] for m, w in self.halfwidths], "note": self.note}

    def summary(self) -> str:
        if self.raw is None:
            return f"magnification 1 ({self.note})"
        tried = ", ".join(f"{w:.2f} at {m:g}×" for m, w in self.halfwidths)
        return (f"magnification {self.magnify:g} (estimate {self.raw:.2f}; neurite half-width {tried} "
                f"model voxels, the model's reference {self.reference:.2f})")


def neurite_halfwidth(affinities: Any, foreground: Any) -> tuple[float, int]:
    """Mean in-section distance (voxels) from neurite interior to the nearest boundary, and how
    many interior voxels it averaged. Interior: y and x affinities and foreground > 0.5.
    Sections with almost no boundary (``MIN_BOUNDARY``) show no neurites and are skipped."""
    from scipy import ndimage

    aff = np.asarray(affinities)
    fg = np.asarray(foreground)
    interior = (aff[1] > 0.5) & (aff[2] > 0.5)
    total, count = 0.0, 0
    for z in range(interior.shape[0]):
        if interior[z].mean() > 1.0 - MIN_BOUNDARY:
            continue  # (almost) no boundary in this section: no neurite to measure
        dist = ndimage.distance_transform_edt(interior[z])
        keep = interior[z] & (fg[z] > 0.5)
        total += float(dist[keep].sum())
        count += int(keep.sum())
    return (total / count if count else float("nan")), count


def reference_halfwidth(model: Any) -> Optional[float]:
    """The half-width the weights declare for their training data at its true scale (None: unknown)."""
    value = (getattr(model, "info", None) or {}).get("neurite_halfwidth")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return float(value)


def sample_boxes(shape: Sequence[int], block: Sequence[int], n: int = N_BLOCKS) -> list[tuple[slice, ...]]:
    """Up to ``n`` boxes of ``block`` voxels (clipped to ``shape``) spread along the stack's
    diagonal: the centre first, then towards the corners; one box when the stack is small."""
    shape = [int(s) for s in shape]
    size = [min(int(b), s) for b, s in zip(block, shape)]
    if all(s <= b for s, b in zip(shape, block)) or n <= 1:
        fracs = [0.5]
    else:
        fracs = [0.5, 0.2, 0.8][:n]
    boxes = []
    for f in fracs:
        start = [int(round((s - b) * f)) for s, b in zip(shape, size)]
        box = tuple(slice(a, a + b) for a, b in zip(start, size))
        if box not in boxes:
            boxes.append(box)
    return boxes


def _blocks(volume: Any, voxel: Sequence[float], model_voxel: Sequence[float]) -> list[np.ndarray]:
    """The sample blocks (``BLOCK`` model voxels at magnification 1, in the stack's voxels)."""
    block = [max(1, int(round(b * mv / v))) for b, mv, v in zip(BLOCK, model_voxel, voxel)]
    if np.prod([float(s) for s in volume.shape]) <= WHOLE * np.prod([float(b) for b in block]):
        return [np.asarray(volume)]
    return [np.asarray(volume[box]) for box in sample_boxes(volume.shape, block)]


@contextmanager
def _plain(predictor: Any) -> Iterator[None]:
    """``predictor`` with test-time augmentation off for the duration ("min" would thin every
    neurite's interior and inflate the estimate)."""
    saved = getattr(predictor, "tta", False)
    predictor.tta = False
    try:
        yield
    finally:
        predictor.tta = saved


def measured_halfwidth(
    predictor: Any,
    blocks: Sequence[np.ndarray],
    voxel_size: Optional[Sequence[float]],
    magnify: float = 1.0,
    progress: Optional[Callable[[], None]] = None,
    cancel: Optional[CancelToken] = None,
) -> tuple[float, int]:
    """The model's neurite half-width (model voxels) over ``blocks`` predicted at ``magnify``,
    pooled over all their interior voxels, and that voxel count."""
    from .calibration import magnified_voxel_size

    shown = magnified_voxel_size(voxel_size, predictor.model_voxel_size, magnify)
    total, count = 0.0, 0
    for data in blocks:
        if cancel is not None:
            cancel.raise_if_cancelled()
        grid: dict = {}
        with _plain(predictor):  # the reference was measured without test-time augmentation
            aff, fg = predictor.predict(data, voxel_size=shown, model_grid=grid, cancel=cancel)
        if grid.get("affinities") is not None:
            aff, fg = grid["affinities"], grid["foreground"]
        width, n = neurite_halfwidth(aff, fg)
        if n:
            total += width * n
            count += n
        if progress is not None:
            progress()
    return (total / count if count else float("nan")), count


def estimate_magnification(
    predictor: Any,
    volume: Any,
    voxel_size: Optional[Sequence[float]] = None,
    *,
    reference: Optional[float] = None,
    rounds: int = 2,
    progress: Optional[Callable[..., None]] = None,
    cancel: Optional[CancelToken] = None,
) -> ScaleEstimate:
    """Estimate, without labels, the magnification at which ``volume``'s neurites look to the
    predictor's model as wide as its training data's (see the module docstring).

    Predicts up to ``N_BLOCKS`` sample blocks (``BLOCK`` model voxels each) at magnification 1,
    then once more at the first estimate. ``voxel_size`` is the stack's own (None: the model's
    assumed). Returns magnification 1 with a ``note`` when the weights declare no reference or
    voxel size, or the stack shows too little neurite interior to measure.
    """
    from .resample import parse_voxel_size

    ref = reference if reference is not None else reference_halfwidth(getattr(predictor, "model", None))
    model_voxel = parse_voxel_size(getattr(predictor, "model_voxel_size", None), "model voxel size")
    if ref is None:
        return ScaleEstimate(1.0, None, None, note="these weights declare no neurite half-width to compare with")
    if model_voxel is None:
        return ScaleEstimate(1.0, None, ref, note="these weights declare no voxel size, so there is no grid to magnify onto")
    volume = as_volume(volume)
    if volume.ndim != 3:
        raise InputError(f"the stack must be 3D (z, y, x), got shape {tuple(volume.shape)}")
    voxel = parse_voxel_size(voxel_size)
    blocks = _blocks(volume, voxel or model_voxel, model_voxel)
    from .image_checks import content_warning

    if all(content_warning(b) for b in blocks):  # constant or noise: no neurites to measure
        return ScaleEstimate(1.0, None, ref, note="the image shows no structure to measure its scale on")
    rounds = max(1, int(rounds))
    steps = rounds * len(blocks)
    done = 0
    magnify = 1.0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps, f"estimating the scale ({magnify:g}×)")

    tried = []
    for r in range(rounds):
        width, count = measured_halfwidth(predictor, blocks, voxel, magnify, progress=tick, cancel=cancel)
        if count < MIN_INTERIOR or not math.isfinite(width) or width <= 0:
            return ScaleEstimate(1.0, None, ref, tried, note="too little neurite interior in the stack to measure its scale")
        tried.append((magnify, round(width, 3)))
        raw = magnify * ref / width
        magnify = min(max(raw, LIMITS[0]), LIMITS[1])
        if r == 0 and raw < DEAD_ZONE:
            break  # like the training data, or wider neurites: no second round needed
    chosen = 1.0 if raw < DEAD_ZONE else round(round(magnify / STEP) * STEP, 2)
    if progress is not None:
        progress(steps, steps, f"scale: {chosen:g}×")
    return ScaleEstimate(float(chosen), float(raw), ref, tried)
