"""One training loop for every trainer (EM finetune, pretraining, LM finetune; Qt-free).

:func:`run_loop` runs ``step_fn(iteration, lr) -> loss`` until an iteration cap or a wall-clock
budget ends it, sets the learning rate from the config's schedule, saves every
``checkpoint_every`` steps and at the end, reports progress (seconds of the budget when there
is one, else iterations), the loss of every step and a log line every ``log_every`` steps.
Cancelling stops within the current step (hooks in the forward and backward passes), saves the
last finished step (nothing when no step finished in this run) and raises
:class:`TrainingCancelled`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from ..cancel import CancelToken, Cancelled
from . import step_precision

#: ``iterations`` at or above this is "no cap" (a time budget ends the run): progress then says
#: "iteration 6", not "iteration 6/1000000000"
NO_ITERATION_CAP = 10**9

#: ``step_fn(iteration, lr)``: one optimisation step at 0-based ``iteration``; returns its loss, or
#: (loss, detail) where detail goes into the log line
StepFn = Callable[[int, float], Union[float, tuple]]


class TrainingCancelled(Cancelled):
    """Raised when training is cancelled; ``.result`` holds the model and the last checkpoint."""

    def __init__(self, result: Any):
        super().__init__("training cancelled by the user; last checkpoint kept"
                         if getattr(result, "checkpoint", None) is not None
                         else "training cancelled before the first step; nothing was saved")
        self.result = result


@dataclass
class LoopResult:
    """What a run of :func:`run_loop` did: steps (counted from 0, resumed runs included), the
    (iteration, loss) of each, the checkpoint last written, times and why it stopped."""

    iterations: int
    history: list = field(default_factory=list)
    checkpoint: Optional[Path] = None
    cancelled: bool = False
    wall_time_s: float = 0.0
    setup_s: float = 0.0
    stopped_by: str = ""  # "iterations", "time" or "cancel"


@dataclass
class LoopConfig:
    """How :func:`run_loop` runs.

    ``iterations``: the cap (None or >= ``NO_ITERATION_CAP``: none); ``minutes`` or
    ``time_limit_s``: the wall-clock budget, counted from the end of ``setup`` (at least one
    step runs); ``start``: the first iteration (a resumed run). ``schedule(iteration, elapsed_s)``
    gives the learning rate handed to the step. ``save(iteration, run)`` writes a checkpoint and
    returns its path (None: nothing written); ``after_step(iteration)`` runs after each step (e.g.
    validation). ``setup(announce)`` runs first with the cancel hooks on (e.g. the precision
    probe; ``announce`` shows a line on the progress bar). ``on_cancel(run)`` gives what
    ``TrainingCancelled.result`` holds (default: the LoopResult). ``smoothing`` > 0 shows an
    exponential running loss in progress and logs; ``unit`` names a step in progress messages."""

    iterations: Optional[int] = None
    minutes: Optional[float] = None
    time_limit_s: Optional[float] = None
    start: int = 0
    schedule: Callable[[int, float], float] = lambda it, elapsed: 1e-3
    checkpoint_every: int = 0
    save: Optional[Callable[[int, LoopResult], Optional[Path]]] = None
    after_step: Optional[Callable[[int], None]] = None
    setup: Optional[Callable[[Optional[Callable[[str], None]]], None]] = None
    on_cancel: Optional[Callable[[LoopResult], Any]] = None
    cancel: Optional[CancelToken] = None
    progress: Optional[Callable] = None
    loss_callback: Optional[Callable[[int, float], None]] = None
    log: Optional[Callable[[str], None]] = None
    log_every: int = 10
    log_prefix: str = ""
    unit: str = "iteration"
    smoothing: float = 0.0
    t0: Optional[float] = None  # when the run began (wall_time_s counts from it); default: now

    @property
    def budget_s(self) -> Optional[float]:
        if self.time_limit_s is not None:
            return float(self.time_limit_s)
        return 60.0 * float(self.minutes) if self.minutes is not None else None

    @property
    def cap(self) -> Optional[int]:
        return int(self.iterations) if self.iterations is not None and self.iterations < NO_ITERATION_CAP else None


def pick_device(device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def learning_rate(it: int, total: int, base: float, final: float, schedule: str, warmup: int) -> float:
    """Learning rate at iteration ``it`` (0-based): linear warm-up, then cosine / poly / constant."""
    if warmup > 0 and it < warmup:
        return base * (it + 1) / warmup
    if schedule == "constant":
        return base
    t = min(1.0, (it - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return final + 0.5 * (base - final) * (1 + math.cos(math.pi * t))
    if schedule == "poly":  # SegNeuron's decay, power 1.5
        return final + (base - final) * (1 - t) ** 1.5
    raise ValueError(f"unknown schedule {schedule!r}; use cosine, poly or constant")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def cancel_hooks(net: torch.nn.Module, cancel: Optional[CancelToken]) -> list:
    """Hooks that raise Cancelled inside a forward or backward pass as soon as ``cancel`` is set
    (a Cancel then takes a fraction of an iteration); remove them with ``h.remove()``."""
    if cancel is None:
        return []

    def check(*_args):
        if cancel.cancelled:
            raise Cancelled("cancelled by the user")

    hooks = [m.register_forward_pre_hook(check) for m in net.modules()]
    hooks += [p.register_hook(check) for p in net.parameters() if p.requires_grad]
    return hooks


def choose_step_precision(net: torch.nn.Module, sampler, batch_size: int, device, requested: bool,
                          loss_of: Callable, log=None, announce=None) -> bool:
    """Whether a run asked for mixed precision uses it (``step_precision.use_mixed_precision``,
    timed on one batch of ``sampler`` with ``loss_of(batch, mixed)``)."""
    return step_precision.use_mixed_precision(
        net, (batch_size, 1) + tuple(sampler.crop), device, requested, log=log, announce=announce,
        loss=step_precision.loss_on_one_batch(sampler, batch_size, loss_of))


def restore_optimizer(opt: torch.optim.Optimizer, state: Optional[dict], sampler, seed: int, start: int,
                      log: Optional[Callable[[str], None]] = None) -> None:
    """Seed torch for iteration ``start`` and load a resumed run's optimizer state (the sampler then
    draws from ``seed + start``); an unusable state leaves a fresh optimizer."""
    torch.manual_seed(seed + start)
    if state is None:
        return
    try:
        opt.load_state_dict(state["optimizer"])
        sampler.rng = np.random.default_rng(seed + start)
    except Exception:
        if log is not None:
            log("optimizer state not usable; continuing with a fresh optimizer")


def _progress(config: LoopConfig, it: int, t_train: float, message: str) -> None:
    """Progress: seconds of the time budget when there is one, else iterations."""
    budget = config.budget_s
    if budget:
        el = min(max(time.time() - t_train, 0.0), budget)
        config.progress(int(el), int(math.ceil(budget)), f"{message} ({el / 60:.1f} of {budget / 60:g} min)")
    else:
        config.progress(it, config.iterations, message)


def _announcer(config: LoopConfig) -> Optional[Callable[[str], None]]:
    if config.progress is None:
        return None
    budget = config.budget_s
    if budget:
        return lambda m: config.progress(0, int(math.ceil(budget)), m)
    return lambda m: config.progress(config.start, config.iterations, m)


def run_loop(model: torch.nn.Module, step_fn: StepFn, config: LoopConfig) -> LoopResult:
    """Train ``model`` with ``step_fn`` as ``config`` says; see the module docstring."""
    t0 = config.t0 if config.t0 is not None else time.time()
    say = config.log or (lambda s: None)
    budget, cap = config.budget_s, config.cap
    run = LoopResult(iterations=config.start)
    it, running, t_train = config.start, None, time.time()

    def save(i: int) -> None:
        if config.save is not None:
            path = config.save(i, run)
            if path is not None:
                run.checkpoint = Path(path)

    hooks = cancel_hooks(model, config.cancel)  # a Cancel also stops the set-up mid-step
    try:
        if config.setup is not None:
            config.setup(_announcer(config))
        t_train = time.time()
        run.setup_s = t_train - t0
        while True:
            if config.cancel is not None and config.cancel.cancelled:
                raise Cancelled("cancelled by the user")
            if cap is not None and it >= cap:
                run.stopped_by = "iterations"
                break
            elapsed = time.time() - t_train
            if budget is not None and it > config.start and elapsed >= budget:
                say(f"time limit reached at iteration {it}")
                run.stopped_by = "time"
                break
            lr = float(config.schedule(it, elapsed))
            out = step_fn(it, lr)
            loss, detail = (out[0], out[1]) if isinstance(out, tuple) else (out, "")
            lv = float(loss)
            it += 1
            run.iterations = it
            run.history.append((it, lv))
            running = lv if running is None or not config.smoothing else (
                config.smoothing * running + (1.0 - config.smoothing) * lv)
            if config.loss_callback is not None:
                config.loss_callback(it, lv)
            if config.progress is not None:
                _progress(config, it, t_train, f"{config.unit} {it}{f'/{cap}' if cap else ''}, loss {running:.4f}")
            if config.log_every and (it % config.log_every == 0 or it == config.start + 1):
                say(f"{config.log_prefix}it {it} loss {lv:.4f}{f' ({detail})' if detail else ''}"
                    f"{f' avg {running:.4f}' if config.smoothing else ''} lr {lr:.2e} t {time.time() - t0:.0f}s")
            if config.after_step is not None:
                config.after_step(it)
            if config.checkpoint_every and it % config.checkpoint_every == 0:
                save(it)
    except (Cancelled, KeyboardInterrupt) as exc:  # Ctrl-C also keeps the last step
        if it > config.start:  # a run cancelled before its first step writes nothing
            save(it)
        run.cancelled, run.stopped_by = True, "cancel"
        run.wall_time_s = time.time() - t0
        model.eval()
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise TrainingCancelled(config.on_cancel(run) if config.on_cancel is not None else run) from None
    finally:
        for h in hooks:
            h.remove()
    save(it)
    run.wall_time_s = time.time() - t0
    model.eval()
    return run
