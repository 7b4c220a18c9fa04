"""Per-machine inference settings, chosen by a short timed probe and cached.

What is fastest depends on the machine, not on a rule: on an AVX2-only AMD EPYC large tiles
cost more per voxel than small ones and ``channels_last_3d`` is 20 % slower, while on an
AVX-512 Xeon both help. So the first time a model architecture runs on a machine, a probe of
a few seconds times one forward pass per candidate:

1. threads (all available cores, half of them) with contiguous fp32 on a small tile;
2. memory format (contiguous vs ``channels_last_3d``) with the faster thread count;
3. reduced precision (bf16 on CPUs that have it natively, fp16 on GPUs), used only with
   ``--half`` and only if it measured faster: ``--half`` never makes a run slower;
4. tile sizes, smallest first, giving µs per voxel as a function of the tile's size; the
   predictor then picks, for each volume, the tile that minimises the predicted time
   (tiles x voxels per tile x µs per voxel), so thin stacks get thin tiles.

The result is stored in ``$NAPARI_SEGNEURON_CACHE/autotune.json`` keyed by the machine
(CPU model, PyTorch's vector unit, the relevant flags, core count; or the GPU's name) and
the model architecture (class, channel widths, parameter shapes: not the weights), printed
once, and recorded in the output's provenance. ``--autotune`` measures again;
``NAPARI_SEGNEURON_AUTOTUNE=off`` turns the automatic probe off (fixed defaults).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .precision import choose_precision, cpu_capability, cpu_model, reported_flags

Triple = tuple[int, int, int]
CACHE_NAME = "autotune.json"
#: bump when the probe changes meaning (older cache entries are then measured again)
PROBE_VERSION = 4  # 4: one-pass norm statistics and buffered stage inputs changed every timing
#: tile candidates (z, y, x), smallest first; rounded up to the network's tile multiple
TILE_CANDIDATES: tuple[Triple, ...] = ((16, 64, 64), (24, 128, 128), (24, 192, 192), (24, 256, 256))
#: the probe stops measuring larger tiles once it has run this long (seconds)
DEFAULT_BUDGET_S = 10.0
#: a larger tile is no longer tried once its cost per voxel is this much above the best so far
WORSE_STOP = 1.3
#: largest tile (voxels) for a network whose first layer has 16 channels; scaled by 16 / width
#: (MNet's first feature maps dominate memory: a 4 M-voxel tile of the default kn=(8, ...) model
#: needs about 1 GiB)
MAX_TILE_VOXELS_AT_16 = 2**22
#: the planner uses tiles up to this many times the largest size the probe measured
EXTRAPOLATE = 2.0


@dataclass(frozen=True)
class Config:
    """One way to run the network."""

    threads: int
    channels_last: bool
    precision: str = "fp32"  # "fp32", "bfloat16" or "float16"

    @property
    def label(self) -> str:
        fmt = "channels_last_3d" if self.channels_last else "contiguous"
        return f"{self.threads} thread{'s' if self.threads != 1 else ''}, {fmt}, {self.precision}"


@dataclass
class Tuning:
    """The probe's result for one (machine, model architecture)."""

    machine: str
    model: str
    threads: int
    channels_last: bool
    #: fastest precision measured: "fp32", or the native reduced one when it was faster
    precision: str
    #: fp32 time / reduced-precision time (0 when the device has no native reduced precision)
    reduced_speedup: float
    #: [[tile voxels, µs per voxel], ...] for the chosen threads and format, fp32, increasing size
    curve: list
    #: every measurement: {"config": label, "tile": [z, y, x], "us_per_voxel": float}
    measurements: list = field(default_factory=list)
    seconds: float = 0.0
    created: str = ""
    version: int = PROBE_VERSION
    #: largest tile the planner may use (memory: fewer voxels for wider networks)
    max_tile_voxels: int = 0
    #: 1-minute load average per core while the probe ran (-1 unknown); above BUSY_LOAD the
    #: timings were shared with other work, so the record is measured again on a quieter machine
    load_per_core: float = -1.0

    @property
    def config(self) -> Config:
        return Config(self.threads, self.channels_last, "fp32")

    @property
    def largest_tile_voxels(self) -> int:
        """The planner's limit: at most ``EXTRAPOLATE`` x the largest size measured (beyond it the
        cost per voxel is a guess: on an AVX-512 Xeon a 3.7 M-voxel tile cost 1.6x the
        0.9 M-voxel one per voxel, which the extrapolated curve missed), and ``max_tile_voxels``."""
        measured = int(EXTRAPOLATE * max(v for v, _ in self.curve))
        return min(int(self.max_tile_voxels), measured) if self.max_tile_voxels else measured

    def us_per_voxel(self, voxels: float) -> float:
        """Predicted µs per voxel for a tile of ``voxels``: interpolated in log(size); beyond the
        largest measured size the last rise continues (a fall is not extrapolated)."""
        pts = sorted((float(v), float(u)) for v, u in self.curve)
        xs = np.log([v for v, _ in pts])
        us = [u for _, u in pts]
        x = math.log(max(voxels, 1.0))
        if len(pts) > 1 and x > xs[-1]:
            slope = max(0.0, (us[-1] - us[-2]) / (xs[-1] - xs[-2]))
            return float(us[-1] + slope * (x - xs[-1]))
        return float(np.interp(x, xs, us))

    def summary(self) -> str:
        sizes = ", ".join(f"{int(round(v ** (1 / 3)))}^3-ish {u:.2f}" for v, u in self.curve)
        half = (f"; --half: {self.precision} ({self.reduced_speedup:.2f}x fp32)" if self.reduced_speedup
                else "; --half: no native reduced precision here")
        return (f"{self.threads} threads, {'channels_last_3d' if self.channels_last else 'contiguous'}{half}; "
                f"µs per voxel by tile size: {sizes}")

    def provenance(self) -> dict:
        return {"machine": self.machine, "model": self.model, "threads": self.threads,
                "channels_last": self.channels_last, "half_precision": self.precision,
                "reduced_speedup": round(self.reduced_speedup, 3),
                "us_per_voxel_by_tile_voxels": [[int(v), round(u, 3)] for v, u in self.curve],
                "probe_seconds": round(self.seconds, 2), "measured": self.created,
                "load_per_core": self.load_per_core}


# -- keys and cache -------------------------------------------------------------------------
def auto_disabled() -> bool:
    """``NAPARI_SEGNEURON_AUTOTUNE=off`` (or 0/no/false): no automatic probe; fixed defaults
    (the test suite sets it; ``--autotune`` still measures)."""
    return os.environ.get("NAPARI_SEGNEURON_AUTOTUNE", "").strip().lower() in ("0", "off", "no", "false")


def available_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def machine_key(device: torch.device) -> str:
    """Identifies what the timings depend on: CPU model, vector unit, relevant flags, cores; or the GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda|{torch.cuda.get_device_name(device)}|torch {torch.__version__}"
    if device.type != "cpu":
        return f"{device.type}|{cpu_model()}|torch {torch.__version__}"
    flags = ",".join(reported_flags())
    return f"cpu|{cpu_model()}|{cpu_capability()}|{flags}|{available_threads()} cores|torch {torch.__version__}"


def model_key(model: torch.nn.Module) -> str:
    """The architecture (class, widths, parameter shapes), not the weights' values."""
    desc = type(model).__name__
    if hasattr(model, "kn"):
        desc += f"(kn={tuple(model.kn)}, fmu={getattr(model, 'fmu', '')!r})"
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return f"{desc}|{hashlib.sha1(shapes.encode()).hexdigest()[:12]}"


def cache_path() -> Path:
    from ._model.registry import cache_dir

    return cache_dir() / CACHE_NAME


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


#: load average per core above which a probe's timings count as taken on a busy machine
BUSY_LOAD = 1.0
#: ... and below which the machine counts as quiet enough to measure again
QUIET_LOAD = 0.5


def load_per_core() -> float:
    """The 1-minute load average per core (-1 where the OS does not report it)."""
    try:
        return float(os.getloadavg()[0]) / max(1, os.cpu_count() or 1)
    except (AttributeError, OSError):
        return -1.0


def load_cached(machine: str, model: str, path: Optional[Path] = None) -> Optional[Tuning]:
    entry = _read_cache(path or cache_path()).get(f"{machine} || {model}")
    if not isinstance(entry, dict) or entry.get("version") != PROBE_VERSION:
        return None
    try:
        return Tuning(**entry)
    except TypeError:
        return None


def store(tuning: Tuning, path: Optional[Path] = None) -> Path:
    """Add ``tuning`` to the cache file (atomic write; other entries kept)."""
    from .atomic import atomic_output

    path = path or cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_cache(path)
    data[f"{tuning.machine} || {tuning.model}"] = asdict(tuning)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))
    return path


# -- measuring ------------------------------------------------------------------------------
Measure = Callable[[Config, Triple, int], float]


def round_tile(tile: Sequence[int], multiple: Sequence[int]) -> Triple:
    return tuple(-(-int(t) // int(m)) * int(m) for t, m in zip(tile, multiple))  # type: ignore[return-value]


def time_forward(model: torch.nn.Module, device: torch.device, config: Config, tile: Triple, repeats: int = 1,
                 timer: Callable[[], float] = time.perf_counter, warmup: bool = True) -> float:
    """Seconds for one forward pass of a ``tile`` under ``config`` (best of ``repeats``, after a warm-up)."""
    from .precision import Precision

    device = torch.device(device)
    old_threads = torch.get_num_threads()
    fmt = torch.channels_last_3d if config.channels_last else torch.contiguous_format
    dtype = None if config.precision == "fp32" else getattr(torch, config.precision)
    precision = Precision(dtype)
    try:
        torch.set_num_threads(config.threads)
        model.to(memory_format=fmt)
        x = torch.rand((1, 1) + tuple(tile), device=device).contiguous(memory_format=fmt)

        def run() -> None:
            with torch.inference_mode(), precision.autocast(device.type):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        if warmup:
            run()
        best = math.inf
        for _ in range(max(1, repeats)):
            t0 = timer()
            run()
            best = min(best, timer() - t0)
        return best
    finally:
        torch.set_num_threads(old_threads)


def probe(model: torch.nn.Module, device: torch.device, multiple: Sequence[int] = (1, 16, 16),
          measure: Optional[Measure] = None, timer: Callable[[], float] = time.perf_counter,
          budget_s: Optional[float] = None, candidates: Optional[Sequence[Triple]] = None,
          threads: Optional[Sequence[int]] = None, reduced: Optional[str] = "auto") -> Tuning:
    """Time the candidates (see the module docstring) and return the fastest settings.

    ``measure(config, tile, repeats) -> seconds`` and ``timer`` can be faked (tests);
    ``threads`` defaults to this device's; ``reduced`` ("bfloat16" / "float16" / None for none)
    to "auto", the device's native reduced precision (``precision.choose_precision``).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    load_before = load_per_core()
    if measure is None:
        def measure(cfg: Config, tile: Triple, repeats: int) -> float:
            return time_forward(model, device, cfg, tile, repeats=repeats, timer=timer)
    if threads is None:
        n = available_threads()
        threads = sorted({n, max(1, n // 2)}, reverse=True) if device.type == "cpu" else [torch.get_num_threads()]
    if reduced == "auto":
        dtype = choose_precision(device, True).dtype
        reduced = None if dtype is None else str(dtype).replace("torch.", "")
    budget_s = DEFAULT_BUDGET_S if budget_s is None else budget_s
    tiles = [round_tile(t, multiple) for t in (candidates or TILE_CANDIDATES)]
    start = timer()
    log: list[dict] = []

    def cost(cfg: Config, tile: Triple, repeats: int = 1) -> float:
        us = measure(cfg, tile, repeats) / float(np.prod(tile)) * 1e6
        log.append({"config": cfg.label, "tile": list(tile), "us_per_voxel": round(us, 4)})
        return us

    small = tiles[0]
    best = Config(threads[0], False, "fp32")
    best_us = cost(best, small)
    for th in threads[1:]:
        cand = Config(th, False, "fp32")
        us = cost(cand, small)
        if us < best_us:
            best, best_us = cand, us
    cand = replace(best, channels_last=True)
    us = cost(cand, small)
    if us < best_us:
        best, best_us = cand, us
    speedup, half = 0.0, "fp32"
    if reduced:
        us = cost(replace(best, precision=reduced), small)
        speedup = best_us / us
        half = reduced if us < best_us else "fp32"
    curve = [[int(np.prod(small)), best_us]]
    lowest = best_us
    for k, tile in enumerate(tiles[1:]):
        if k > 0 and timer() - start > budget_s:  # at least two sizes, then within the budget
            break
        us = cost(best, tile, repeats=1)
        curve.append([int(np.prod(tile)), us])
        lowest = min(lowest, us)
        if us > WORSE_STOP * lowest:
            break
    width = int(getattr(model, "kn", (16,))[0])
    max_voxels = int(min(MAX_TILE_VOXELS_AT_16, MAX_TILE_VOXELS_AT_16 * 16 // max(width, 1)))
    return Tuning(machine=machine_key(device), model=model_key(model), threads=best.threads,
                  max_tile_voxels=max_voxels,
                  channels_last=best.channels_last, precision=half, reduced_speedup=speedup, curve=curve,
                  measurements=log, seconds=timer() - start,
                  load_per_core=round(max(load_before, load_per_core()), 2),
                  created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def tuning_for(model: torch.nn.Module, device: torch.device, multiple: Sequence[int] = (1, 16, 16),
               force: bool = False, quiet: bool = False, **probe_kwargs) -> Tuning:
    """The cached tuning for this machine and architecture; probed (and stored, and printed once) if
    there is none or ``force``."""
    device = torch.device(device)
    machine, arch = machine_key(device), model_key(model)
    if not force:
        cached = load_cached(machine, arch)
        now = load_per_core()
        if cached is not None and cached.load_per_core > BUSY_LOAD and 0 <= now < QUIET_LOAD:
            if not quiet:
                print(f"autotune: the cached timings were taken on a busy machine (load {cached.load_per_core:.1f} "
                      f"per core); measuring again now that it is quiet ({now:.1f})", file=sys.stderr)
        elif cached is not None:
            return cached
    if not quiet:
        print(f"autotune: timing {arch.split('|')[0]} on this machine once (a few seconds; cached, "
              "--autotune to redo)", file=sys.stderr)
    tuning = probe(model, device, multiple, **probe_kwargs)
    try:
        where = store(tuning)
    except OSError as err:  # a read-only cache still runs, just measures again next time
        where = f"not cached ({err})"
    if not quiet:
        print(f"autotune ({tuning.seconds:.1f} s, {where}): {tuning.summary()}", file=sys.stderr)
    return tuning


# -- choosing a tile for a volume -----------------------------------------------------------
def predicted_seconds(plan, tuning: Tuning) -> float:
    voxels = float(np.prod(plan.tile))
    return plan.n_tiles * voxels * tuning.us_per_voxel(voxels) * 1e-6


def candidate_tiles(tuning: Tuning, multiple: Sequence[int], z_options: Sequence[int] = (8, 16, 24, 32, 48, 64),
                    xy_options: Sequence[int] = (64, 96, 128, 160, 192, 224, 256, 320)) -> list[Triple]:
    """Tile sizes the planner may use: z / square xy from the options within the tuning's limit."""
    limit = tuning.largest_tile_voxels
    out = []
    for z in z_options:
        for xy in xy_options:
            t = round_tile((z, xy, xy), multiple)
            if np.prod(t) <= limit and t not in out:
                out.append(t)
    return out or [round_tile((z_options[0], xy_options[0], xy_options[0]), multiple)]  # the smallest, at least


def choose_tile(shape: Sequence[int], tuning: Tuning, overlap: Sequence[int], multiple: Sequence[int],
                plan_fn: Callable) -> tuple:
    """The (max) tile whose fitted plan on ``shape`` has the lowest predicted time; returns
    ``(tile, plan, seconds)``. ``plan_fn(shape, tile, overlap)`` builds a ``TilePlan``."""
    best = None
    for tile in candidate_tiles(tuning, multiple):
        ov = tuple(min(o, t - m) for o, t, m in zip(overlap, tile, multiple))
        plan = plan_fn(shape, tile, ov)
        secs = predicted_seconds(plan, tuning)
        if best is None or secs < best[2] - 1e-12:
            best = (tile, plan, secs)
    return best  # type: ignore[return-value]
