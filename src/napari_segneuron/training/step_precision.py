"""Mixed precision for training only where it makes a step faster: measured, not guessed.

Whether bfloat16 autocast speeds up an MNet training step on a CPU depends on more than its
flags. On a Xeon that exposes ``avx512_bf16`` but no AMX (2026-12-01, 2 threads), a finetune
step of 2 x 16x96x96 took 2.0 s with bf16 and 1.7 s in fp32, while a 1 x 16x64x64 step was 2x
faster with bf16. So when mixed precision is asked for on a CPU that has bf16 natively, one
training step is timed in each precision on the real batch shape (a few seconds, once per
machine, architecture and shape) and bf16 is kept only if it is measurably faster. The answer
is cached next to the inference probe's (``$NAPARI_SEGNEURON_CACHE/train_precision.json``);
``NAPARI_SEGNEURON_AUTOTUNE=off`` skips the measurement and keeps the flag-based choice.
GPUs keep reduced precision (their fast path); CPUs without native bf16 never use it.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

CACHE_NAME = "train_precision.json"
#: bump when the measurement changes meaning (older answers are then measured again)
PROBE_VERSION = 1
#: bf16 must be at least this much faster than fp32 to be used
MIN_GAIN = 0.05
#: what ``announce`` hears before the measurement (the training docks and the CLI show it; a time
#: budget starts after it)
PROBE_MESSAGE = ("Timing one training step (fp32 vs bf16) to pick the faster precision, once for this machine "
                 "and batch; the time budget starts after it…")

#: ``timer(model, shape, device, mixed)``: seconds per step (tests fake it)
Timer = Callable[[torch.nn.Module, Sequence[int], torch.device, bool], float]
#: ``loss(mixed)``: a training loss on a fixed batch, its forward pass in autocast when ``mixed``
LossFn = Callable[[bool], torch.Tensor]


def cache_path() -> Path:
    from .._model.registry import cache_dir

    return cache_dir() / CACHE_NAME


def _key(model: torch.nn.Module, shape: Sequence[int], device: torch.device) -> str:
    from ..autotune import machine_key, model_key

    return f"{machine_key(device)} || {model_key(model)} || {torch.get_num_threads()} threads || {tuple(shape)}"


def _store(path: Path, key: str, entry: dict) -> None:
    from ..atomic import atomic_output
    from ..autotune import _read_cache

    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_cache(path)
    data[key] = entry
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))


def loss_on_one_batch(sampler, batch_size: int, loss_of: Callable) -> LossFn:
    """``loss(mixed)``: ``loss_of(batch, mixed)`` on one batch of a training ``sampler``, drawn on
    first use without moving the sampler's random state (a run's crops stay the same whether or
    not a step was timed)."""
    held: list = []

    def loss(mixed: bool) -> torch.Tensor:
        if not held:
            state = copy.deepcopy(sampler.rng.bit_generator.state)
            held.append(sampler.batch(batch_size))
            sampler.rng.bit_generator.state = state
        return loss_of(held[0], mixed)

    return loss


def time_training_step(model: torch.nn.Module, loss: LossFn, device: torch.device, mixed: bool,
                       repeats: int = 3) -> float:
    """Seconds for one forward + backward pass of ``loss(mixed)``, the run's own loss on one of
    its batches (best of ``repeats`` after a warm-up). The weights, buffers and gradients are
    left as they were."""
    device = torch.device(device)
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}
    was_training = model.training
    best = math.inf
    try:
        model.train()
        for i in range(max(1, repeats) + 1):
            t0 = time.perf_counter()
            loss(mixed).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first pass is the warm-up (kernel selection, allocations)
                best = min(best, time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        for n, p in model.named_parameters():
            p.grad = grads[n]
        model.train(was_training)
    return best


def use_mixed_precision(model: torch.nn.Module, shape: Sequence[int], device, requested: bool, *,
                        flags=None, timer: Optional[Timer] = None, path: Optional[Path] = None,
                        measure: Optional[bool] = None, log: Optional[Callable[[str], None]] = None,
                        announce: Optional[Callable[[str], None]] = None, loss: Optional[LossFn] = None) -> bool:
    """Whether a training run asked to use mixed precision (``requested``) should use it here.

    ``shape`` is the batch's (N, C, Z, Y, X), part of the cache key; ``loss`` is what a step
    computes (``loss_on_one_batch``), timed unless ``timer`` fakes the timing (tests); ``flags``
    fakes the CPU flags; ``measure`` False skips the measurement (default: measure unless
    ``NAPARI_SEGNEURON_AUTOTUNE=off``); ``announce`` hears a line just before a measurement
    (for a progress bar: it takes a few seconds), ``log`` the outcome."""
    from ..autotune import _read_cache, auto_disabled
    from ..precision import choose_precision, note_once

    if not requested:
        return False
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return False
    precision = choose_precision(device, True, training=True, flags=flags)
    if precision.dtype is None:
        note_once(precision.note)
        return False
    if device.type != "cpu" or not (measure if measure is not None else not auto_disabled()):
        return True
    path = path or cache_path()
    key = _key(model, shape, device)
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and entry.get("version") == PROBE_VERSION and isinstance(entry.get("mixed"), bool):
        return entry["mixed"]
    if timer is None:
        if loss is None:
            raise ValueError("use_mixed_precision needs the run's loss (or a timer) to measure a step")

        def timer(m, shp, dev, mixed):
            return time_training_step(m, loss, dev, mixed)
    if announce is not None:
        announce(PROBE_MESSAGE)
    fp32 = timer(model, shape, device, False)
    bf16 = timer(model, shape, device, True)
    mixed = bf16 < fp32 * (1.0 - MIN_GAIN)
    message = (f"training step {tuple(shape)}: bfloat16 {bf16:.2f} s, fp32 {fp32:.2f} s on this CPU; "
               f"{'using bfloat16' if mixed else 'using fp32 (mixed precision would be slower here)'}")
    if log is not None:
        log(message)
    note_once(message)
    try:
        _store(path, key, {"version": PROBE_VERSION, "mixed": mixed, "bf16_s": round(bf16, 4),
                           "fp32_s": round(fp32, 4)})
    except OSError:  # a read-only cache folder only costs the measurement next time
        pass
    return mixed
