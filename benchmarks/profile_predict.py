"""Where the time of a default ``predict`` goes: stage timers for the CLI process and the dock.

Three measurements on one stack (default: the 40x256x256 corner of the unlabeled FIB-25 cube):

1. ``napari-segneuron predict STACK -o OUT.zarr`` with every default, as a plain subprocess
   (wall clock of the whole process; the autotune probe cached beforehand, as on any second run);
2. the same command line in a subprocess that wraps the pipeline's functions with timers and
   prints each stage's exclusive seconds and share of the process: interpreter start, imports,
   model load, predictor set-up (autotune cache or probe), reading, the *Magnify* ``auto``
   estimate, each test-time-augmentation view's forward passes, merging the views, tiling and
   accumulation (blend), normalising and writing, and what is left;
3. the dock's predict path without Qt: ``Predictor`` built as the SegNeuron dock builds it, the
   ``auto`` magnification estimated as the dock does, then ``predict`` (same stage table).

It also times the official-style sliding window (``bench_inference.official_style_predict``:
20x128x128 crops, stride 10x64x64, Gaussian blend, fp32, batch 1, our forward pass) on the
same stack and prints the ratios and how many voxels each plan computes per output voxel.

    python benchmarks/profile_predict.py [--stack 40x256x256] [--weights default|kn16] [--cold]
                                         [--extra "--tta off"] [--no-official]

``--cold`` also profiles a first run (no autotune cache: the probe runs). ``--extra`` adds
arguments to both CLI runs (e.g. ``--tta off --magnify 1``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")

VIEW_NAMES = ("view 1 forward (as is)", "view 2 forward (flip y)", "view 3 forward (flip x)",
              "view 4 forward (flip y+x)")


# -- stage timers (used in the instrumented child and in process) ----------------------------
class Stages:
    """Exclusive seconds per stage: a stage's own time, without the stages nested in it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list] = []  # [name, start, nested seconds]

    def enter(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), 0.0])

    def leave(self) -> None:
        name, start, nested = self._stack.pop()
        total = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + total - nested
        self.calls[name] = self.calls.get(name, 0) + 1
        if self._stack:
            self._stack[-1][2] += total

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def current(self) -> str:
        return self._stack[-1][0] if self._stack else ""

    def wrap(self, owner, attr: str, name, static: bool = False) -> None:
        """Replace ``owner.attr`` by a timed version; ``name`` may be a function of the call's arguments."""
        fn = getattr(owner, attr)
        fn = fn.__func__ if isinstance(fn, staticmethod) else fn
        stages = self

        def timed(*a, **k):
            stages.enter(name(*a, **k) if callable(name) else name)
            try:
                return fn(*a, **k)
            finally:
                stages.leave()

        setattr(owner, attr, staticmethod(timed) if static else timed)


def instrument(stages: Stages) -> None:
    """Wrap the pipeline's stages (the modules must be importable; nothing runs)."""
    import napari_segneuron.autotune as autotune
    import napari_segneuron.inference as inference
    import napari_segneuron.io as io
    import napari_segneuron.resample as resample
    import napari_segneuron.scale_estimate as scale_estimate
    import napari_segneuron.cli.predict as cli_predict

    P = inference.Predictor
    state = {"view": 0, "in_estimate": False}
    forward_once = P._forward_once

    def view_name(*_a, **_k) -> str:
        name = VIEW_NAMES[min(state["view"], 3)]
        state["view"] += 1
        return ("scale estimate: " if state["in_estimate"] else "") + name

    def forward(self, batch):
        state["view"] = 0
        stages.enter("scale estimate: merge TTA views" if state["in_estimate"] else "merge TTA views")
        try:
            return original_forward(self, batch)
        finally:
            stages.leave()

    original_forward = P._forward
    P._forward = forward
    stages.wrap(P, "_forward_once", view_name)
    del forward_once
    tiles = P._predict_tiles
    flush = P._flush
    read_slab = P._read_slab

    def predict_tiles(self, *a, **k):
        stages.enter("scale estimate: tiling, accumulate" if state["in_estimate"] else "tiling, accumulate, blend")
        try:
            return tiles(self, *a, **k)
        finally:
            stages.leave()

    P._predict_tiles = predict_tiles

    def flush_timed(*a, **k):
        stages.enter("scale estimate: normalise, hand out" if state["in_estimate"] else "normalise + write output")
        try:
            return flush(*a, **k)
        finally:
            stages.leave()

    P._flush = staticmethod(flush_timed)

    def slab_timed(*a, **k):
        stages.enter("scale estimate: read + scale slabs" if state["in_estimate"] else "read + scale slabs")
        try:
            return read_slab(*a, **k)
        finally:
            stages.leave()

    P._read_slab = staticmethod(slab_timed)
    stages.wrap(autotune, "tuning_for", "autotune (cache or probe)")
    stages.wrap(autotune, "probe", "autotune probe")
    estimate = scale_estimate.estimate_magnification

    def estimate_timed(*a, **k):
        state["in_estimate"] = True
        stages.enter("scale estimate: other")
        try:
            return estimate(*a, **k)
        finally:
            stages.leave()
            state["in_estimate"] = False

    scale_estimate.estimate_magnification = estimate_timed
    stages.wrap(resample, "predict_resampled", lambda *a, **k: "scale estimate: resample" if state["in_estimate"]
                else "resample to/from model grid")
    stages.wrap(io, "read_volume", "read input")
    stages.wrap(io, "write_prediction", "normalise + write output")
    stages.wrap(cli_predict, "load_weights", "model load")
    stages.wrap(cli_predict, "make_predictor", "predictor set-up")
    import napari_segneuron.atomic as atomic

    atomic_output = atomic.atomic_output

    class _Timed:
        def __init__(self, *a, **k):
            self.cm = atomic_output(*a, **k)

        def __enter__(self):
            return self.cm.__enter__()

        def __exit__(self, *exc):
            stages.enter("normalise + write output")
            try:
                return self.cm.__exit__(*exc)
            finally:
                stages.leave()

    atomic.atomic_output = _Timed


def table(stages: dict[str, float], total: float, title: str) -> str:
    rows = sorted(stages.items(), key=lambda kv: -kv[1])
    lines = [f"  {title}", f"    {'stage':<44} {'seconds':>8} {'share':>7}"]
    for name, s in rows:
        lines.append(f"    {name:<44} {s:8.2f} {100 * s / total:6.1f}%")
    lines.append(f"    {'total':<44} {total:8.2f} {100.0:6.1f}%")
    return "\n".join(lines)


# -- child: the CLI with stage timers --------------------------------------------------------
def child(argv: list[str], launched: float, report: str) -> int:
    started = time.time()
    stages = Stages()
    t0 = time.perf_counter()
    import torch  # noqa: F401  (the heaviest import, counted on its own)

    stages.add("imports: torch", time.perf_counter() - t0)
    t0 = time.perf_counter()
    import numpy  # noqa: F401
    from napari_segneuron import cli

    import napari_segneuron.cli.predict  # noqa: F401
    import napari_segneuron.inference  # noqa: F401
    import zarr  # noqa: F401

    stages.add("imports: plugin, zarr, rest", time.perf_counter() - t0)
    instrument(stages)
    t0 = time.perf_counter()
    stages.enter("CLI other (parse, checks, progress)")
    rc = cli.main(argv)
    stages.leave()
    run_s = time.perf_counter() - t0
    Path(report).write_text(json.dumps({"rc": rc, "stages": stages.seconds, "calls": stages.calls,
                                        "startup": started - launched, "run": run_s}))
    return rc


def cli_command(stack: Path, out: Path, weights: str, extra: list[str]) -> list[str]:
    return ["predict", str(stack), "-o", str(out), "--weights", weights, "--overwrite", *extra]


def run_cli(stack: Path, work: Path, weights: str, extra: list[str], profiled: bool, label: str) -> dict:
    out = work / f"pred_{time.monotonic_ns()}.zarr"
    args = cli_command(stack, out, weights, extra)
    env = dict(os.environ)
    if profiled:
        report = work / f"report_{time.monotonic_ns()}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(report), str(time.time()), "--", *args]
    else:
        exe = Path(sys.executable).with_name("napari-segneuron")
        cmd = [str(exe) if exe.exists() else "napari-segneuron", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    result = {"wall": wall, "stderr": done.stderr}
    if profiled:
        data = json.loads(report.read_text())
        st = dict(data["stages"])
        st["interpreter start"] = max(0.0, data["startup"])
        accounted = sum(st.values())
        st["process exit, unaccounted"] = max(0.0, wall - accounted)
        result.update(stages=st, calls=data["calls"])
    return result


def dock_profile(volume, weights: str) -> tuple[dict, float]:
    """The dock's predict path, in process: Predictor as ``SegmentWidget._predictor`` builds it with the
    dock's defaults, the 'auto' magnification estimated as the worker does, then predict."""
    from napari_segneuron.calibration import magnified_voxel_size
    from napari_segneuron.inference import DEFAULT_TILING, Predictor
    from napari_segneuron.scale_estimate import estimate_magnification
    from napari_segneuron.tta import DEFAULT_TTA
    from napari_segneuron._model import load_named

    stages = Stages()
    instrument(stages)
    import napari_segneuron.scale_estimate as se

    t0 = time.perf_counter()
    stages.enter("model load")
    model = load_named(weights, device=None)
    stages.leave()
    stages.enter("predictor set-up")
    predictor = Predictor(model, tile=DEFAULT_TILING.tile, overlap=DEFAULT_TILING.overlap, batch_size=None,
                          device=None, half=False, tta=DEFAULT_TTA)
    stages.leave()
    stages.enter("dock other")
    est = se.estimate_magnification(predictor, volume, None)
    voxel = magnified_voxel_size(None, predictor.model_voxel_size, est.magnify)
    predictor.predict(volume, voxel_size=voxel)
    stages.leave()
    del estimate_magnification
    return stages.seconds, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volume", default=str(DATA / "fib25_unlabeled_raw.tif"))
    ap.add_argument("--stack", default="40x256x256", help="Z x Y x X crop from the volume's corner")
    ap.add_argument("--weights", default="default", help="'default' (bundled) or 'kn16' (random kn=(16,32,48,64,128) "
                    "MNet, the issue's architecture; its weights declare no scale, so magnify auto stays 1)")
    ap.add_argument("--extra", default="", help="extra CLI arguments for both CLI runs, e.g. '--tta off'")
    ap.add_argument("--cold", action="store_true", help="also profile a run without the autotune cache")
    ap.add_argument("--no-official", action="store_true", help="skip the official-style window")
    ap.add_argument("--no-dock", action="store_true", help="skip the dock's path")
    ap.add_argument("--child", nargs=2, metavar=("REPORT", "LAUNCHED"), help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args()
    if args.child:
        return child([a for a in rest if a != "--"], float(args.child[1]), args.child[0])

    import numpy as np
    import tifffile
    import torch

    from napari_segneuron.precision import cpu_capability, cpu_model, reported_flags

    work = Path(tempfile.mkdtemp(prefix="segneuron_profile_"))
    os.environ["NAPARI_SEGNEURON_CACHE"] = str(work / "cache")
    os.environ.pop("NAPARI_SEGNEURON_AUTOTUNE", None)
    print(f"CPU: {cpu_model()}; PyTorch {torch.__version__}, vector unit {cpu_capability()} "
          f"(ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}); flags "
          f"{' '.join(reported_flags())}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f}")
    crop = tuple(int(c) for c in args.stack.lower().split("x"))
    stack = np.ascontiguousarray(tifffile.imread(args.volume)[: crop[0], : crop[1], : crop[2]])
    path = work / f"stack_{args.stack}.tif"
    tifffile.imwrite(path, stack)
    weights = args.weights
    if weights == "kn16":
        from napari_segneuron._model import MNet, save_checkpoint

        torch.manual_seed(0)
        weights = str(save_checkpoint(MNet(kn=(16, 32, 48, 64, 128)), work / "kn16.pt", metadata={"name": "kn16"}))
    extra = shlex.split(args.extra)
    print(f"stack {stack.shape} from {Path(args.volume).name}; weights {args.weights}; "
          f"CLI: napari-segneuron {' '.join(cli_command(path, Path('OUT.zarr'), args.weights, extra))}\n")

    if args.cold:
        cold = run_cli(path, work, weights, extra, True, "cold profiled CLI")
        print(table(cold["stages"], cold["wall"], f"CLI, first run (autotune probe), whole process {cold['wall']:.1f} s"))
        print()
    else:  # fill the autotune cache the way a first run would
        run_cli(path, work, weights, extra + ["--magnify", "1", "--tta", "off"], False, "warm-up CLI")
    plain = run_cli(path, work, weights, extra, False, "CLI")
    prof = run_cli(path, work, weights, extra, True, "profiled CLI")
    notes = [l for l in prof["stderr"].splitlines() if l.startswith(("magnify", "note", "autotune"))]
    print(table(prof["stages"], prof["wall"], f"CLI with stage timers, whole process {prof['wall']:.1f} s "
                                              f"(plain CLI, no timers: {plain['wall']:.1f} s)"))
    for line in notes:
        print(f"    [{line[:150]}]")
    calls = {k: v for k, v in prof["calls"].items() if "forward" in k}
    print("    forward passes per view: " + ", ".join(f"{k}: {v}" for k, v in sorted(calls.items())))
    print()

    if not args.no_dock:
        from napari_segneuron.allocator import release_freed_memory

        st, total = dock_profile(stack, weights)
        print(table(st, total, f"dock's predict path (Predictor as the dock builds it, no Qt), {total:.1f} s "
                               f"after imports"))
        release_freed_memory()
        print()

    if not args.no_official:
        sys.path.insert(0, str(HERE))
        from bench_inference import official_counts, official_style_predict
        from napari_segneuron._model import load_named
        from napari_segneuron.allocator import release_freed_memory
        from napari_segneuron.inference import Predictor

        model = load_named(weights, device="cpu")
        secs = official_style_predict(model, stack, released_forward=False)[2]
        release_freed_memory()
        over = np.prod(official_counts(stack.shape)) * 20 * 128 * 128 / stack.size
        plan = Predictor(model, device="cpu").plan(stack.shape)
        print(f"  official-style window (20x128x128, stride 10x64x64, Gaussian, fp32, batch 1, our forward, in "
              f"process): {secs:.1f} s; it computes each voxel {over:.2f} times")
        print(f"  default plan on the model grid of this stack at magnify 1: {plan.n_tiles} tiles of {plan.tile}, "
              f"{plan.overcompute:.2f} voxels computed per output voxel")
        print(f"  speed-up of the default CLI (whole process) over the window: {secs / plain['wall']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
