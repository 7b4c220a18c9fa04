"""Finetuning the light-microscopy (LM) ViT3D model on one stack and its neuron mask (Qt-free).

The target is a boolean mask (True = neuron) of the image's shape: a painted labels layer
(> 0) or a tracing turned into tubes by :func:`rasterize_swc`. :func:`finetune_lm` trains a
copy of the start model (``lm_default``, a checkpoint or a model instance) on random crops
of the stack (most of them centred on the neuron; the loss, augmentation and input
normalisation are those the bundled model was trained with, :mod:`.lm`) for a wall-clock
budget and/or a number of steps, the learning rate decaying over whichever ends first.
It is cancellable and writes a ``save_vit3d`` checkpoint that ``load_vit3d`` reads back.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..cancel import CancelToken
from ..lm_render import Render, rasterise
from .data import TrainingInputError
from .loop import LoopConfig, LoopResult, pick_device, run_loop
from .lm import CropSource, LMTrainer

DEFAULT_CROP = (20, 112, 112)
#: metadata of the start model that stays true after finetuning (the rest described its training)
KEPT_METADATA = ("threshold", "dice_threshold", "tuned_threshold", "threshold_note", "voxel_size_nm", "init")
ModelLike = Union[torch.nn.Module, str, Path, None]


@dataclass
class LMFinetuneResult:
    """The trained model (eval mode), its checkpoint (None if none was written) and the run."""

    model: torch.nn.Module
    checkpoint: Optional[Path]
    iterations: int
    history: list = field(default_factory=list)  # (iteration, loss)
    cancelled: bool = False
    wall_time_s: float = 0.0
    metadata: dict = field(default_factory=dict)


def rasterize_swc(nodes: np.ndarray, shape: Sequence[int],
                  voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """A boolean (Z, Y, X) mask of ``shape``: tubes of the SWC radius around every edge.

    ``nodes`` is (N, 7) SWC (id, type, x, y, z, radius, parent) in physical units, x = column,
    y = row, z = slice times ``voxel_size`` (z, y, x), as ``io.write_swc`` writes them. A voxel
    is inside when its centre lies within the radius interpolated along the edge; the voxels
    the centreline crosses are always inside (so a tube is at least one voxel wide); a node
    without parent or children becomes a ball. Parts outside the volume are clipped.
    Uses the renderer's rasteriser (``lm_render.rasterise``), so a render's own nodes give
    back its mask.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise TrainingInputError(f"the mask shape must be three positive sizes (z, y, x), got {shape}")
    vs = np.asarray(voxel_size, dtype=np.float64)
    if vs.shape != (3,) or not np.all(vs > 0):
        raise TrainingInputError(f"the voxel size must be three positive numbers (z, y, x), got {tuple(voxel_size)}")
    nodes = np.asarray(nodes, dtype=np.float64)
    if nodes.size == 0:
        return np.zeros(shape, dtype=bool)
    if nodes.ndim != 2 or nodes.shape[1] != 7:
        raise TrainingInputError(f"SWC nodes must be an (N, 7) array, got shape {nodes.shape}")
    vox = nodes.copy()
    vox[:, 2:5] = nodes[:, 2:5] / vs[::-1]  # x, y, z in voxels
    ids = set(int(i) for i in vox[:, 0])
    has_parent = np.array([p >= 0 and int(p) in ids for p in vox[:, 6]])
    parents = {int(p) for p, ok in zip(vox[:, 6], has_parent) if ok}
    alone = ~has_parent & np.array([int(i) not in parents for i in vox[:, 0]])
    vox[alone, 6] = vox[alone, 0]  # a zero-length edge to itself: a ball of the node's radius
    mask, _ = rasterise(vox, shape, tuple(vs))
    return mask


def paths_to_mask(paths: Sequence[np.ndarray], shape: Sequence[int], voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
                  *, path_scale: Optional[Sequence[float]] = None, offset: Sequence[float] = (0.0, 0.0, 0.0),
                  radius: Optional[Mapping[str, float]] = None,
                  default_radius: Optional[float] = None) -> np.ndarray:
    """Rasterise napari Shapes paths into a neuron mask of an image's ``shape`` and ``voxel_size``.

    ``paths``: (k, 3) (z, y, x) vertices in the Shapes layer's data coordinates, drawn with
    ``path_scale`` (the layer's scale; default: the image's) and shifted by ``offset`` (z, y, x,
    physical: the layer's translate minus the image's). ``radius`` is the layer's
    ``metadata['swc_radius']`` (vertex -> radius, physical); vertices without one (hand-drawn
    paths) get ``default_radius``, one xy voxel when None.
    """
    from ..swc import paths_to_swc, radius_key as _radius_key

    vs = tuple(float(v) for v in voxel_size)
    paths = [np.asarray(p, dtype=np.float64)[:, -3:] for p in paths if len(p)]
    if not paths:
        return np.zeros(tuple(int(s) for s in shape), dtype=bool)
    r0 = float(default_radius) if default_radius else min(vs[1:])
    known = dict(radius or {})
    radii = {key: float(known.get(key, r0)) for p in paths for key in map(_radius_key, p)}
    nodes = paths_to_swc(paths, tuple(path_scale) if path_scale is not None else vs, radii)
    nodes[:, 2:5] += np.asarray(offset, dtype=np.float64)[::-1]
    return rasterize_swc(nodes, shape, vs)


def _start_model(model: ModelLike, device=None) -> torch.nn.Module:
    """A ViT3D model from an instance (copied), a registry name / checkpoint file, or None (lm_default)."""
    from .._model.vit3d import DEFAULT_LM_WEIGHTS, ViT3DSeg, load_lm_model
    from .._model.weights import WeightsError

    if isinstance(model, torch.nn.Module):
        if not isinstance(model, ViT3DSeg):
            raise TrainingInputError(
                f"finetune_lm trains the light-microscopy ViT3D model, not a {type(model).__name__} "
                "(EM models train with training.finetune)")
        return copy.deepcopy(model).cpu()
    try:
        return load_lm_model(DEFAULT_LM_WEIGHTS if model is None else model, device="cpu")
    except WeightsError as exc:
        raise TrainingInputError(str(exc)) from None


def _check_inputs(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 3:
        raise TrainingInputError(
            f"The LM image must be a 3D stack (Z, Y, X); got shape {image.shape}"
            + (" (RGB/multichannel: pick one channel)" if image.ndim == 4 else ""))
    if image.dtype.kind not in "biuf":
        raise TrainingInputError(f"The LM image must hold numbers, not {image.dtype}")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise TrainingInputError("The LM image holds NaN or infinite values")
    mask = np.asarray(mask)
    if mask.shape != image.shape:
        raise TrainingInputError(
            f"The neuron mask is {'×'.join(map(str, mask.shape))} but the image is "
            f"{'×'.join(map(str, image.shape))}: they must have the same shape")
    mask = mask > 0 if mask.dtype != bool else mask
    if not mask.any():
        raise TrainingInputError("The neuron mask is empty: paint or trace the neuron first (voxels > 0 = neuron)")
    return image, mask


def _lr_factor(frac: float, step: int, warmup: int, final: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``final`` as ``frac`` goes 0 -> 1."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac))))


def finetune_lm(
    model_or_path: ModelLike,
    image: np.ndarray,
    mask: np.ndarray,
    *,
    minutes: Optional[float] = None,
    iterations: Optional[int] = None,
    crop: Sequence[int] = DEFAULT_CROP,
    batch_size: int = 2,
    lr: float = 3e-4,
    checkpoint: Union[str, Path, None] = None,
    overwrite: bool = False,
    checkpoint_every: int = 100,
    half: bool = False,
    device=None,
    metadata: Optional[Mapping] = None,
    progress: Optional[Callable[..., None]] = None,
    cancel: Optional[CancelToken] = None,
    loss_callback: Optional[Callable[[int, float], None]] = None,
    fg_fraction: float = 0.8,
    seed: int = 0,
) -> LMFinetuneResult:
    """Finetune the LM foreground model on ``image`` (Z, Y, X) with ``mask`` (> 0 = neuron).

    ``model_or_path``: a ViT3DSeg (not changed: a copy trains), a checkpoint file or registry
    name, or None for the bundled ``lm_default``. Training stops after ``minutes`` of wall
    clock and/or ``iterations`` steps (at least one of them), the learning rate (``lr``,
    the encoder at 0.3x) warming up for a few steps, then decaying (cosine to 5%) over the
    budget. ``crop`` (z, y, x) is clipped to the image. ``checkpoint`` is written atomically
    every ``checkpoint_every`` steps, at the end and on cancel (fp16 tensors with ``half``);
    an existing file is refused unless ``overwrite``. Its metadata keeps the start model's
    thresholds, adds its steps to ``steps`` and records ``finetuned_from``; ``metadata``
    entries override. ``progress(done, total, message)`` counts seconds of the budget (or
    steps without one), ``loss_callback(iteration, loss)`` sees every step. Cancelling
    (``cancel``) stops within the current step, writes the last finished step and raises
    ``TrainingCancelled`` whose ``.result`` is the LMFinetuneResult.
    """
    t0 = time.time()
    image, mask = _check_inputs(image, mask)
    if minutes is None and iterations is None:
        raise TrainingInputError("Set a training budget: minutes and/or iterations")
    if minutes is not None and not minutes > 0:
        raise TrainingInputError(f"minutes must be positive, got {minutes}")
    if iterations is not None and int(iterations) < 1:
        raise TrainingInputError(f"iterations must be at least 1, got {iterations}")
    if int(batch_size) < 1 or not lr > 0:
        raise TrainingInputError("the batch size must be at least 1 and the learning rate positive")
    crop = tuple(int(c) for c in crop)
    if len(crop) != 3 or min(crop) < 1:
        raise TrainingInputError(f"the crop must be three positive sizes (z, y, x), got {crop}")
    ckpt = Path(checkpoint).expanduser() if checkpoint is not None else None
    if ckpt is not None and ckpt.exists() and not overwrite:
        raise TrainingInputError(f"{ckpt} already exists: choose another checkpoint file (nothing is replaced)")
    net = _start_model(model_or_path)
    patch = tuple(int(p) for p in getattr(net, "tile_multiple", (1, 1, 1)))
    if any(s < p for s, p in zip(image.shape, patch)):
        raise TrainingInputError(
            f"The image ({'×'.join(map(str, image.shape))}) is smaller than one model patch "
            f"({'×'.join(map(str, patch))} voxels, z × y × x): use a larger stack")
    crop = tuple(min(c, s) for c, s in zip(crop, image.shape))

    start_meta = dict(net.info.get("metadata") or {})
    start_name = str(net.info.get("name") or start_meta.get("name") or "vit3d")
    start_steps = int(start_meta.get("steps", 0) or 0)
    meta = {k: start_meta[k] for k in KEPT_METADATA if k in start_meta}
    meta.update({
        "name": ckpt.stem if ckpt is not None else f"{start_name}-finetuned",
        "finetuned_from": {"name": start_name, "steps": start_steps,
                           **({"sha256": net.info["sha256"]} if net.info.get("sha256") else {})},
        "trained_by": "napari_segneuron.training.lm_finetune",
        "finetune": {"image_shape": list(image.shape), "foreground_fraction": round(float(mask.mean()), 5),
                     "crop": list(crop), "batch_size": int(batch_size), "lr": float(lr),
                     "minutes": minutes, "iterations": iterations, "seed": int(seed)},
    })
    meta.setdefault("threshold", 0.5)

    dev = pick_device(device)
    torch.manual_seed(seed)
    net = net.to(dev).float()
    net.train()
    source = CropSource([Render(image, mask, np.zeros((0, 7)), (1.0, 1.0, 1.0))], crop, fg_fraction=fg_fraction)
    trainer = LMTrainer(net, lr=lr, seed=seed)
    budget = 60.0 * float(minutes) if minutes is not None else None
    cap = int(iterations) if iterations is not None else None
    warmup = max(1, min(10, (cap or 100) // 10))
    result = LMFinetuneResult(model=net, checkpoint=None, iterations=0, metadata=meta)
    saved = [0]

    def save(it: int, run: LoopResult) -> Optional[Path]:
        from .._model.vit3d import save_vit3d

        m = dict(meta, steps=start_steps + it, finetune=dict(
            meta["finetune"], steps=it, wall_time_s=round(time.time() - t0, 1),
            final_loss=round(run.history[-1][1], 5) if run.history else None))
        m.update(metadata or {})
        result.metadata = m
        if ckpt is None or it < 1 or saved[0] == it:
            return None
        save_vit3d(net, ckpt, iters=start_steps + it, metadata=m, half=half)
        saved[0] = it
        return ckpt

    def lr_at(it: int, elapsed: float) -> float:
        """The budget's fraction used (steps or time, whichever is further) sets the decay."""
        frac = max(it / cap if cap else 0.0, elapsed / budget if budget else 0.0)
        return lr * _lr_factor(frac, it, warmup)

    def finished(run: LoopResult) -> LMFinetuneResult:
        result.iterations, result.history, result.checkpoint = run.iterations, run.history, run.checkpoint
        result.cancelled, result.wall_time_s, result.model = run.cancelled, run.wall_time_s, net.eval()
        return result

    return finished(run_loop(net, lambda it, cur: trainer.train_step(source, int(batch_size), cur, dev), LoopConfig(
        iterations=cap, minutes=minutes, schedule=lr_at, checkpoint_every=checkpoint_every, save=save,
        on_cancel=finished, cancel=cancel, progress=progress, loss_callback=loss_callback, log_every=0,
        unit="step", smoothing=0.9, t0=t0)))
