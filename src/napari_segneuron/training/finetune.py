"""Supervised finetuning of MNet on affinities and foreground (SegNeuron's objective).

Loss = ``aff_weight`` * BCE(affinity logits, affinity targets)
     + ``fg_weight``  * BCE(foreground logit, label > 0),
both averaged over voxels the loss weights keep (annotated voxels; the z
affinity of 2D-only labels is dropped). Adam, warm-up then cosine / poly /
constant learning rate, atomic checkpoints in the official layout.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..cancel import CancelToken
from .augment import AugmentConfig
from .checkpoints import read_checkpoint, read_optimizer_state, write_checkpoint
from .data import CropSampler, TrainingInputError, TrainVolume, normalize_image
from .loop import (LoopConfig, LoopResult, choose_step_precision,
                   learning_rate, pick_device, restore_optimizer, run_loop, set_lr)

#: what a finetune keeps from its starting weights' declarations (``model.info`` / checkpoint
#: metadata): the physical voxel size they work at, the foreground threshold to segment with, the
#: reference neurite half-width of ``scale_estimate`` (finetuning on the user's stack does not change
#: the training scale) and a declared edge scoring / merge threshold. ``finetune(metadata=)`` entries
#: override them: a block trained at a magnification declares the voxel size it was trained at
#: (``training.grid.block_on_model_grid``), a magnification chosen by hand drops neurite_halfwidth.
INHERITED_METADATA = ("voxel_size_nm", "fg_threshold", "neurite_halfwidth", "scoring", "threshold")

ModelLike = Union["torch.nn.Module", str, Path, None]


@dataclass
class TrainResult:
    model: torch.nn.Module
    checkpoint: Optional[Path]
    iterations: int
    best_checkpoint: Optional[Path] = None
    best_score: Optional[dict] = None
    history: list = field(default_factory=list)       # (iteration, loss)
    validation: list = field(default_factory=list)    # dicts per validation
    cancelled: bool = False
    wall_time_s: float = 0.0


def build_mnet(kn: Sequence[int] = (16, 32, 48, 64, 128), fmu: str = "sub"):
    from .._model.mnet import MNet
    return MNet(1, kn=tuple(kn), fmu=fmu)


def mnet_from_state_dict(sd: dict):
    """An MNet built and strictly loaded from ``sd`` (architecture read off the shapes)."""
    from .._model.weights import WeightsError, model_from_state_dict

    try:
        return model_from_state_dict(sd)
    except WeightsError as exc:
        raise TrainingInputError(str(exc)) from None


def resolve_model(model: ModelLike, kn: Sequence[int] = (16, 32, 48, 64, 128), fmu: str = "sub"):
    """An MNet from an instance, a checkpoint path / registry name, or None (fresh weights).

    A path or name is loaded on the CPU with ``model.info`` (what its checkpoint declares, the
    registry's voxel size / foreground threshold where the checkpoint declares none, as
    ``_model.load_named`` does), so a finetune from it inherits those declarations."""
    if model is None:
        return build_mnet(kn, fmu)
    if isinstance(model, torch.nn.Module):
        return model
    from .._model.registry import REGISTRY, declare_from_registry, fetch_weights
    from .._model.weights import load_model

    key = str(model)
    p = Path(key)
    if not p.is_file():
        try:
            p = Path(fetch_weights(key))
        except Exception as exc:
            raise TrainingInputError(f"cannot find weights {model!r}: {exc}") from exc
    entry = REGISTRY.get(key)
    try:
        net = load_model(p, device="cpu", name=entry.name if entry is not None else None)
    except Exception as exc:
        raise TrainingInputError(f"{p} does not hold MNet weights: {exc}") from None
    return declare_from_registry(net, key)


def declared_by(model) -> dict:
    """The ``INHERITED_METADATA`` a starting model declares: ``model.info``'s own entries (which
    hold the registry's fallbacks of ``load_named``), else its checkpoint metadata; tuples as lists."""
    info = getattr(model, "info", None) or {}
    saved = info.get("metadata") if isinstance(info.get("metadata"), dict) else {}
    out = {}
    for key in INHERITED_METADATA:
        value = info.get(key)
        if value is None:
            value = saved.get(key)
        if value is not None:
            out[key] = [float(v) for v in value] if isinstance(value, (tuple, list)) else value
    return out


def parent_record(model) -> Optional[dict]:
    """``{name, path, sha256, iters}`` of the weights a finetune starts from (None: fresh weights,
    or a module without ``info``)."""
    info = getattr(model, "info", None)
    if not info:
        return None
    rec = {k: info.get(k) for k in ("name", "path", "sha256", "iters") if info.get(k) is not None}
    return rec or None


def training_data_record(volumes: Sequence[TrainVolume]) -> dict:
    """What a finetune trained on (the first volume; ``n_volumes`` counts them): shape, the
    annotated (mask) box as [[start, stop], ...] or None for the whole volume, labelled ids."""
    v = volumes[0]
    box = v.annotated_box()
    labels = v.labels if v.mask is None else v.labels[v.mask]
    return {"image_shape": [int(n) for n in v.image.shape],
            "mask_box": None if box is None else [[int(a), int(b)] for a, b in box],
            "n_labels": int(np.unique(labels[labels > 0]).size),
            "n_volumes": len(volumes)}


def masked_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the weighted voxels."""
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    return loss / weight.sum().clamp_min(1.0)


def balance_weights(target: torch.Tensor, weight: torch.Tensor, max_ratio: float = 10.0) -> torch.Tensor:
    """Reweight so that 0s (boundaries) and 1s weigh equally per channel, the ratio clipped to ``max_ratio``.

    Boundary voxels are a small minority of the affinities; without balancing
    the network under-predicts thin boundaries and a single gap merges two neurons.
    """
    dims = [d for d in range(target.ndim) if d != 1]
    pos = (weight * target).sum(dim=dims, keepdim=True)
    neg = (weight * (1 - target)).sum(dim=dims, keepdim=True)
    total = pos + neg
    w_pos = (0.5 * total / pos.clamp_min(1.0)).clamp(1.0 / max_ratio, max_ratio)
    w_neg = (0.5 * total / neg.clamp_min(1.0)).clamp(1.0 / max_ratio, max_ratio)
    return weight * torch.where(target > 0.5, w_pos, w_neg)


def autocast_for(device: torch.device, enabled: bool, flags=None):
    """Mixed precision context where the device has it natively (``precision.choose_precision``):
    bfloat16 on CPUs with avx512_bf16 / amx_bf16 and on CUDA when supported, else float16 on
    CUDA; fp32 (one note) on CPUs without native bf16, where emulated bf16 is several times
    slower. ``flags`` fakes the CPU flags in tests. No-op if disabled."""
    from ..precision import choose_precision, note_once

    device = torch.device(device)
    if not enabled or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    precision = choose_precision(device, True, training=True, flags=flags)
    note_once(precision.note)
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def segmentation_loss(model, batch: dict, device, aff_weight: float = 1.0, fg_weight: float = 1.0,
                      balance: bool = False, mixed_precision: bool = False):
    """Return (total, affinity, foreground) losses for a numpy batch."""
    t = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
    with autocast_for(torch.device(device), mixed_precision):
        aff_logits, fg_logits = model.forward_logits(t["image"])
    aff_logits, fg_logits = aff_logits.float(), fg_logits.float()
    w_aff = balance_weights(t["aff"], t["w_aff"]) if balance else t["w_aff"]
    l_aff = masked_bce(aff_logits, t["aff"], w_aff)
    l_fg = masked_bce(fg_logits, t["fg"], t["w_fg"])
    return aff_weight * l_aff + fg_weight * l_fg, l_aff, l_fg


class WeightAverage:
    """Exponential moving average of a model's weights (evaluated and exported instead of the raw weights)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                       for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(self.decay).add_(v.detach().float(), alpha=1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def model_copy(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` holding the averaged weights."""
        m = copy.deepcopy(model)
        m.load_state_dict(self.shadow)
        return m


@torch.no_grad()
def predict_volume(model, image: np.ndarray, device=None) -> tuple:
    """Whole-volume prediction (pads Y, X to multiples of 16): (aff (3,Z,Y,X), fg (Z,Y,X)) float32."""
    device = pick_device(device) if device is None else torch.device(device)
    img = normalize_image(image)
    z, y, x = img.shape
    py, px = (-y) % 16, (-x) % 16
    padded = np.pad(img, ((0, 0), (0, py), (0, px)), mode="reflect")
    was_training = model.training
    model.eval()
    aff, fg = model(torch.from_numpy(padded)[None, None].to(device))
    model.train(was_training)
    return aff[0, :, :, :y, :x].float().cpu().numpy(), fg[0, 0, :, :y, :x].float().cpu().numpy()


def _segmentation_api():
    """The package's agglomeration + metrics, or None while they are missing/broken."""
    import importlib
    importlib.invalidate_caches()
    try:
        seg = importlib.import_module("napari_segneuron.segmentation")
        return seg if all(hasattr(seg, n) for n in ("agglomerate", "variation_of_information",
                                                      "adapted_rand_error")) else None
    except Exception:
        return None


def _vi_total(v) -> float:
    if isinstance(v, dict):
        return float(v.get("vi", v.get("total", sum(float(x) for x in v.values()))))
    if isinstance(v, (tuple, list)):
        return float(sum(float(x) for x in v[:2]))
    return float(v)


def score_prediction(aff: np.ndarray, fg: Optional[np.ndarray], gt: np.ndarray,
                     thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                     use_foreground: bool = True) -> Optional[dict]:
    """Agglomerate and score against ``gt`` over thresholds; best VI wins. None if unavailable."""
    seg = _segmentation_api()
    if seg is None:
        return None
    try:  # in-process: no worker start-up, works from any script or thread
        ag = seg.agglomerate(aff, fg if use_foreground else None, worker=False)
    except TypeError:
        ag = seg.agglomerate(aff, fg if use_foreground else None)
    best = None
    for t in thresholds:
        labels = ag.labels(t)
        vi = seg.variation_of_information(labels, gt)
        ar = seg.adapted_rand_error(labels, gt)
        row = {"threshold": float(t), "vi": _vi_total(vi), "vi_parts": vi, "arand": _vi_total(ar) if not
               isinstance(ar, (tuple, list, dict)) else ar}
        if best is None or row["vi"] < best["vi"]:
            best = row
    return best


def validate(model, image: np.ndarray, labels: np.ndarray, device=None,
             aff_weight: float = 1.0, fg_weight: float = 1.0,
             thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)) -> dict:
    """Loss on the whole validation volume plus VI/ARAND when agglomeration is available."""
    aff, fg = predict_volume(model, image, device)
    lab = np.asarray(labels)
    from .targets import affinities_from_labels
    tgt = affinities_from_labels(lab)
    eps = 1e-6
    bce = lambda p, t: float(-(t * np.log(p + eps) + (1 - t) * np.log(1 - p + eps)).mean())  # noqa: E731
    out = {"val_loss": aff_weight * bce(aff, tgt) + fg_weight * bce(fg, (lab > 0).astype(np.float32))}
    try:
        sc = score_prediction(aff, fg, lab, thresholds)
    except Exception as exc:  # agglomeration is someone else's module: never kill training over it
        sc, out["score_error"] = None, repr(exc)
    if sc is not None:
        out.update(sc)
    return out


def _better(new: dict, old: Optional[dict]) -> bool:
    if old is None:
        return True
    if "vi" in new and "vi" in old:
        return new["vi"] < old["vi"]
    if "vi" in new:
        return True
    if "vi" in old:
        return False
    return new["val_loss"] < old["val_loss"]


def finetune(
    model: ModelLike,
    image=None,
    labels=None,
    *,
    mask=None,
    z_affinity: bool = True,
    volumes: Optional[Sequence[TrainVolume]] = None,
    val_image=None,
    val_labels=None,
    iterations: int = 500,
    batch_size: int = 2,
    crop: Sequence[int] = (16, 96, 96),
    lr: float = 1e-3,
    min_lr: float = 1e-5,
    schedule: str = "cosine",
    warmup: int = 20,
    aff_weight: float = 1.0,
    fg_weight: float = 1.0,
    augment: Optional[AugmentConfig] = None,
    amp_sources: Optional[Sequence[np.ndarray]] = None,
    checkpoint=None,
    checkpoint_every: int = 100,
    keep_every: int = 0,
    validate_every: int = 0,
    resume=None,
    device=None,
    seed: int = 0,
    threads: Optional[int] = None,
    time_limit_s: Optional[float] = None,
    time_schedule: bool = False,
    metadata: Optional[dict] = None,
    progress: Optional[Callable] = None,
    cancel: Optional[CancelToken] = None,
    loss_callback: Optional[Callable] = None,
    log: Optional[Callable[[str], None]] = None,
    kn: Sequence[int] = (16, 32, 48, 64, 128),
    fmu: str = "sub",
    balance: bool = True,
    ema_decay: float = 0.0,
    mixed_precision: bool = False,
) -> TrainResult:
    """Finetune an MNet on labelled volumes (numpy arrays) and return the trained model.

    ``model``: an MNet, a checkpoint path / weights name, or None for fresh
    weights of size ``kn``. Give ``image`` + ``labels`` (+ ``mask`` of annotated
    voxels) and/or ``volumes`` (TrainVolume list). ``checkpoint`` is the file
    written atomically every ``checkpoint_every`` iterations and at the end
    (``<stem>_best.pt`` keeps the best validation, ``keep_every`` keeps numbered
    copies). ``resume`` continues from a checkpoint (weights, optimizer,
    iteration). ``time_limit_s`` stops early; with ``time_schedule`` the learning
    rate decays over whichever of iterations / time runs out first (for CPU
    machines of unknown speed); the budget's clock starts after the set-up (the precision probe
    of ``mixed_precision``, announced through ``progress``), ``wall_time_s`` and the checkpoint's
    ``setup_s`` say how long that took. ``iterations`` >= ``NO_ITERATION_CAP`` means no cap.
    ``progress(done, total, message)`` counts seconds of the budget when there is one, else
    iterations; ``loss_callback(iteration, loss)``. Cancelling writes the checkpoint of the last
    finished step and raises TrainingCancelled (``.result`` has the model and path; cancelled before
    the first step: ``iterations`` unchanged, ``checkpoint`` None, nothing written).
    The checkpoint's metadata keeps the starting weights' declarations (``INHERITED_METADATA``;
    ``metadata`` overrides them), records them under ``parent`` (name, path, sha256, iters) and
    ``inherited_from_parent``, and what trained under ``training_data`` (image_shape, mask_box,
    n_labels, n_volumes, iterations, plus a ``metadata['training_data']`` dict's entries, e.g.
    the image and labels names). ``balance`` weighs boundary and
    non-boundary affinities equally; ``ema_decay`` > 0 validates, keeps and
    returns an exponential moving average of the weights; ``mixed_precision``
    runs the forward pass in reduced-precision autocast where that is native and, on CPUs,
    measured faster for this batch (``step_precision.use_mixed_precision``).
    """
    t_start = time.time()
    say = log or (lambda s: None)
    if threads:
        torch.set_num_threads(int(threads))
    # ---- validate every input before touching any file
    vols = list(volumes or [])
    if image is not None or labels is not None:
        if image is None or labels is None:
            raise TrainingInputError("give both an image and a labels volume")
        vols.insert(0, TrainVolume(image, labels, mask=mask, z_affinity=z_affinity, name="training"))
    if not vols:
        raise TrainingInputError("no training data: give image and labels")
    if val_image is not None or val_labels is not None:
        if val_image is None or val_labels is None:
            raise TrainingInputError("validation needs both an image and labels")
        if np.shape(val_image) != np.shape(val_labels):
            raise TrainingInputError(
                f"validation labels shape {np.shape(val_labels)} differs from image shape {np.shape(val_image)}")
    if iterations < 1 or batch_size < 1:
        raise TrainingInputError("iterations and batch size must be at least 1")
    sampler = CropSampler(vols, crop, augment, amp_sources=amp_sources, seed=seed)
    start_iter, opt_state = 0, None
    if resume is not None:
        ck = read_checkpoint(resume)
        try:
            net = mnet_from_state_dict(ck["model_weights"])
        except Exception as exc:
            raise TrainingInputError(f"cannot resume from {resume}: {exc}") from exc
        start_iter, opt_state = ck["iters"], read_optimizer_state(resume)
        meta0 = ck["metadata"]  # the first run's declarations, parent and data
    else:
        net = resolve_model(model, kn, fmu)
        # what the starting weights declare about the data they work on still holds after finetuning
        start = net if getattr(net, "info", None) else model
        meta0 = declared_by(start)
        parent = parent_record(start)
        if parent is not None:
            meta0["parent"] = parent
    dev = pick_device(device)
    net = net.to(dev).float()
    net.train()
    result = TrainResult(model=net, checkpoint=None, iterations=start_iter, best_checkpoint=None,
                         best_score=meta0.get("best_score"))
    ckpt = Path(checkpoint) if checkpoint is not None else None
    best_path = ckpt.with_name(ckpt.stem + "_best" + ckpt.suffix) if ckpt else None
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ema = WeightAverage(net, ema_decay) if ema_decay > 0 else None
    first = meta0.get("training_data") if resume is not None else None  # a resumed run's data stay the first's
    data = dict(first if isinstance(first, dict) else training_data_record(vols),
                **dict((metadata or {}).get("training_data") or {}))
    meta = {"kn": list(net.kn), "fmu": net.fmu, "trained_by": "napari_segneuron.training.finetune",
            "crop": list(sampler.crop), "batch_size": batch_size, "lr": lr, "schedule": schedule,
            "aff_weight": aff_weight, "fg_weight": fg_weight, "input_normalization": "uint8/255",
            "balance": balance, "ema_decay": ema_decay, "mixed_precision": bool(mixed_precision),
            **{k: v for k, v in meta0.items() if k not in ("best_score", "dtype")}, **(metadata or {})}
    meta["training_data"] = data
    if resume is None:
        if "parent" in meta0:  # which declarations came from the parent (not set by ``metadata``)
            meta["inherited_from_parent"] = [k for k in INHERITED_METADATA
                                             if k in meta0 and meta.get(k) is not None and meta[k] == meta0[k]]
    def save(it: int, run: LoopResult) -> Optional[Path]:
        if ckpt is None:
            return None
        m = dict(meta, iterations_done=it, best_score=result.best_score,
                 wall_time_s=round(time.time() - t_start, 1), setup_s=round(run.setup_s, 1))
        if isinstance(m.get("training_data"), dict):
            m["training_data"] = dict(m["training_data"], iterations=it)
        state = {"optimizer": opt.state_dict(), "iters": it}
        if ema is not None:
            state["ema"] = ema.shadow
            write_checkpoint(ema.model_copy(net), ckpt.with_name(f"{ckpt.stem}_ema{ckpt.suffix}"), it,
                             dict(m, averaged="ema"))
        write_checkpoint(net, ckpt, it, m, optimizer_state=state)
        return ckpt

    def evaluated() -> torch.nn.Module:
        """The weights that are validated, kept and returned: the average when there is one."""
        return ema.model_copy(net) if ema is not None else net

    def after_step(it: int) -> None:
        if validate_every and val_image is not None and it % validate_every == 0:
            v = validate(evaluated(), val_image, val_labels, dev, aff_weight, fg_weight)
            v["iteration"] = it
            result.validation.append(v)
            say("validation " + " ".join(f"{k}={v[k]}" for k in v if k != "vi_parts"))
            if _better(v, result.best_score):
                result.best_score = {k: v[k] for k in v if k in ("val_loss", "vi", "arand", "threshold", "iteration")}
                if best_path is not None:
                    write_checkpoint(evaluated(), best_path, it, dict(meta, best_score=result.best_score))
                    result.best_checkpoint = best_path
        if keep_every and it % keep_every == 0 and ckpt is not None:
            write_checkpoint(evaluated(), ckpt.with_name(f"{ckpt.stem}_iter{it:06d}{ckpt.suffix}"), it,
                             dict(meta, iterations_done=it, wall_time_s=round(time.time() - t_start, 1)))

    def setup(announce) -> None:
        nonlocal mixed_precision
        mixed_precision = choose_step_precision(net, sampler, batch_size, dev, mixed_precision, lambda b, mixed: (
            segmentation_loss(net, b, dev, aff_weight, fg_weight, balance, mixed)[0]), say, announce)
        meta["mixed_precision"] = bool(mixed_precision)
        restore_optimizer(opt, opt_state, sampler, seed, start_iter, say)
        if ema is not None and opt_state is not None and isinstance(opt_state.get("ema"), dict):
            ema.shadow.update({k: v.float() if v.is_floating_point() else v for k, v in opt_state["ema"].items()
                               if k in ema.shadow})

    def lr_at(it: int, elapsed: float) -> float:
        eff = it
        if time_schedule and time_limit_s:  # decay over whichever of iterations / time runs out first
            eff = max(it, int(iterations * elapsed / time_limit_s))
            eff = it if it < warmup else max(eff, warmup)
        return learning_rate(eff, iterations, lr, min_lr, schedule, warmup)

    def step(it: int, cur: float):
        set_lr(opt, cur)
        batch = sampler.batch(batch_size)
        opt.zero_grad(set_to_none=True)
        loss, l_aff, l_fg = segmentation_loss(net, batch, dev, aff_weight, fg_weight, balance, mixed_precision)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at iteration {it}")
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(net)
        return loss.item(), f"aff {l_aff.item():.4f} fg {l_fg.item():.4f}"

    def finished(run: LoopResult) -> TrainResult:
        result.iterations, result.history, result.checkpoint = run.iterations, run.history, run.checkpoint
        result.cancelled, result.wall_time_s = run.cancelled, run.wall_time_s
        return result

    run = run_loop(net, step, LoopConfig(
        iterations=iterations, time_limit_s=time_limit_s, start=start_iter, schedule=lr_at,
        checkpoint_every=checkpoint_every, save=save, after_step=after_step, setup=setup, on_cancel=finished,
        cancel=cancel, progress=progress, loss_callback=loss_callback, log=say, smoothing=0.95, t0=t_start))
    finished(run)
    if ema is not None:
        result.model = ema.model_copy(net)
    result.model.eval()
    return result
