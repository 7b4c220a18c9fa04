"""The waterz run: in this process (output silenced) or in a worker process.

The worker is a fresh interpreter running this package's own entry point
(``python -m napari_segneuron.segmentation._waterz_main SPEC.json``), never the user's
script: unlike ``multiprocessing``'s "spawn" it does not re-import ``__main__``, so a
script without an ``if __name__ == "__main__":`` guard (napari started from a script, as
in napari's examples) runs once.  Arrays travel through memory-mapped files in a private
scratch directory (in RAM under /dev/shm when it has room), the spec and the result
through files there."""
from __future__ import annotations

import json
import multiprocessing.spawn
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from typing import Callable, Optional

import numpy as np

from ..cancel import CancelToken, Cancelled
from .defaults import SCORING_FUNCTIONS, ProgressFn
from .history import _chain_history

# waterz's own log lines, mapped to progress steps (for the worker's progress reports)
_STAGES = (
    ("performing initial watershed", "watershed"),
    ("counting regions", "reading fragments"),
    ("extracting region graph", "building the region graph"),
    ("computing initial scores", "scoring edges"),
    ("merging until", "merging"),
)
_TOTAL_STEPS = len(_STAGES) + 3
_ENTRY = "napari_segneuron.segmentation._waterz_main"  # the worker's own module (see ``_command``)
_LIVE: set = set()  # running worker processes (``subprocess.Popen``)
_LIVE_LOCK = threading.Lock()


def _silence_stdout(log_path: Optional[str]) -> tuple:
    """Send fd 1 and 2 (C++ ``std::cout``) and ``sys.stdout``/``sys.stderr`` (waterz's
    Cython ``print``) to ``log_path`` or /dev/null; returns what ``_restore_stdout`` needs.
    Processes without usable fds 1/2 (e.g. pythonw) only get the Python-level swap."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    try:
        fds: Optional[tuple[int, int]] = (os.dup(1), os.dup(2))
    except OSError:
        fds = None
    if fds is not None:
        fd = os.open(log_path or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    py = open(log_path or os.devnull, "a", buffering=1)
    old = (sys.stdout, sys.stderr)
    sys.stdout = sys.stderr = py
    return fds, old, py


def _restore_stdout(saved: tuple) -> None:
    fds, (out, err), py = saved
    sys.stdout, sys.stderr = out, err
    py.close()
    if fds is not None:
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        os.close(fds[0])
        os.close(fds[1])


def _waterz_job(
    aff: np.ndarray,
    fragments: Optional[np.ndarray],
    frag_out: np.ndarray,
    scoring: str,
    discretize_queue: int,
    max_threshold: float,
    low: float,
    high: float,
) -> dict[str, np.ndarray]:
    """Run waterz to ``max_threshold`` and turn its history into the replay tables.

    ``frag_out`` (uint32, volume shape) receives the fragments.  ``fragments``, if given,
    must already be uint64 with background 0 (it is overwritten by waterz)."""
    import waterz

    thresholds = [0.0, max_threshold] if max_threshold > 0 else [0.0]
    gen = waterz.agglomerate(
        aff,
        thresholds,
        fragments=fragments,
        aff_threshold_low=low,
        aff_threshold_high=high,
        return_merge_history=True,
        scoring_function=SCORING_FUNCTIONS.get(scoring, scoring),
        discretize_queue=discretize_queue,
    )
    seg, _ = next(gen)  # threshold 0: nothing merged yet, these are the fragments
    if seg.size and int(seg.max()) >= 2**31 - 1:
        raise RuntimeError("more than 2**31 fragments; split the volume")
    np.copyto(frag_out, seg, casting="unsafe")
    del seg
    history: list = []
    if len(thresholds) > 1:
        _, history = next(gen)
    for _ in gen:
        pass
    m = len(history)
    a = np.fromiter((h["a"] for h in history), np.int64, count=m)
    b = np.fromiter((h["b"] for h in history), np.int64, count=m)
    scores = np.fromiter((h["score"] for h in history), np.float32, count=m)
    del history
    n_nodes = int(frag_out.max()) + 1
    sizes = np.bincount(frag_out.reshape(-1), minlength=n_nodes).astype(np.int64)
    present = sizes > 0
    present[0] = False
    order, join = _chain_history(n_nodes, a, b, present)
    return {
        "order": order,
        "join": join,
        "scores": scores,
        "sizes": sizes,
        "merges": np.stack([a, b], axis=1) if m else np.zeros((0, 2), np.int64),
    }


def _worker_main(spec: dict) -> None:
    """The worker process's work (called by ``_waterz_main.main``)."""
    with open(spec["started"], "w"):  # tells the parent that the spawn itself worked
        pass
    saved = _silence_stdout(spec["log"])
    try:
        shape = tuple(spec["shape"])
        aff = np.memmap(spec["aff"], np.float32, mode="r", shape=(3,) + shape)
        frag_out = np.memmap(spec["frag"], np.uint32, mode="r+", shape=shape)
        fragments = frag_out.astype(np.uint64) if spec["given_fragments"] else None
        result = _waterz_job(
            aff, fragments, frag_out, spec["scoring"], spec["queue"], spec["max_threshold"], spec["low"], spec["high"],
        )
        frag_out.flush()
        del aff, frag_out, fragments
        np.savez(spec["result"] + ".tmp.npz", **result)
        os.replace(spec["result"] + ".tmp.npz", spec["result"])
    except BaseException:  # reported to the parent through a file
        with open(spec["error"], "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        _restore_stdout(saved)


def _scratch_dir(nbytes: int) -> str:
    """A private temp directory in RAM (/dev/shm) when it has room, else on disk.

    Containers often give /dev/shm only 64 MB; writing past that would kill the process
    (SIGBUS), so the disk (page cache) is used then."""
    shm = "/dev/shm"
    try:
        if os.path.isdir(shm) and shutil.disk_usage(shm).free > nbytes + (256 << 20):
            return tempfile.mkdtemp(prefix="segneuron-waterz-", dir=shm)
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="segneuron-waterz-")


def _stage(log_path: str) -> int:
    """How far the worker got, read from waterz's log lines."""
    try:
        with open(log_path, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return 0
    step = 0
    for i, (needle, _) in enumerate(_STAGES):
        if needle in text:
            step = i + 1
    return step


def _failure_message(exitcode: Optional[int], spec: dict) -> str:
    """Why the worker process ended without a result, in words a user can act on."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = (
            " (likely out of memory: the system killed it; try a smaller volume or region, scoring='mean', "
            "or fewer fragments)" if -exitcode == signal.SIGKILL else ""
        )
        return f"The waterz worker was killed by signal {-exitcode} ({name}){hint}."
    if os.path.exists(spec["error"]):
        with open(spec["error"]) as f:
            lines = f.read().strip().splitlines()
        return f"The waterz worker failed (exit code {exitcode}). {lines[-1] if lines else ''}".strip()
    if not os.path.exists(spec["started"]):  # the interpreter or the import failed
        last = ""
        try:
            with open(spec["stderr"], errors="replace") as f:
                lines = [ln for ln in f.read().strip().splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else ""
        except (KeyError, OSError):
            pass
        return f"The waterz worker failed (exit code {exitcode}) before starting its work. {last}".strip()
    return f"The waterz worker stopped (exit code {exitcode}) without a result."


def _run_in_worker(
    prepare: Callable[[np.ndarray], Optional[np.ndarray]],
    shape: tuple[int, int, int],
    opts: dict,
    progress: ProgressFn,
    cancel: Optional[CancelToken],
) -> tuple[np.ndarray, dict]:
    nvox = int(np.prod(shape))
    tmp = _scratch_dir(nvox * 16)
    proc = None
    try:
        aff_path, frag_path = os.path.join(tmp, "affinities.f32"), os.path.join(tmp, "fragments.u32")
        aff_view = np.memmap(aff_path, np.float32, mode="w+", shape=(3,) + shape)
        frag_view = np.memmap(frag_path, np.uint32, mode="w+", shape=shape)
        fragments = prepare(aff_view)  # writes the affinities, returns the fragments to start from
        if fragments is not None:
            np.copyto(frag_view, fragments, casting="unsafe")
        aff_view.flush()
        frag_view.flush()
        given = fragments is not None
        del aff_view, fragments
        spec = dict(
            opts, shape=list(shape), aff=aff_path, frag=frag_path, given_fragments=given,
            log=os.path.join(tmp, "waterz.log"), result=os.path.join(tmp, "result.npz"),
            error=os.path.join(tmp, "error.txt"), started=os.path.join(tmp, "started"),
            stderr=os.path.join(tmp, "stderr.txt"),
        )
        with open(os.path.join(tmp, "spec.json"), "w") as f:
            json.dump(spec, f)
        proc = _start(os.path.join(tmp, "spec.json"), spec["stderr"])
        last = -1
        while proc.poll() is None:
            if cancel is not None and cancel.cancelled:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise Cancelled("cancelled by the user")
            if progress is not None:
                step = _stage(spec["log"])
                if step != last:
                    last = step
                    progress(1 + step, _TOTAL_STEPS, "waterz: " + (_STAGES[step - 1][1] if step else "starting"))
            try:
                proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        if progress is not None and proc.returncode == 0:  # a fast run can finish between two polls
            step = _stage(spec["log"])
            if step != last:
                progress(1 + step, _TOTAL_STEPS, "waterz: " + (_STAGES[step - 1][1] if step else "starting"))
        if proc.returncode != 0 or not os.path.exists(spec["result"]):
            raise RuntimeError(_failure_message(proc.returncode, spec))
        with np.load(spec["result"]) as z:
            result = {k: z[k] for k in z.files}
        frags = np.array(frag_view)
        del frag_view
        return frags, result
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with _LIVE_LOCK:
                _LIVE.discard(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _command(spec_path: str) -> list[str]:
    """The worker's command line: this interpreter (``multiprocessing.set_executable`` is
    honoured) running ``_waterz_main``.  ``-P`` keeps the working directory off
    ``sys.path``; the bootstrap puts the directory this package was imported from first
    when it is not on the path already (a source checkout added at run time), so the
    worker runs the same code as the caller."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    boot = (
        "import sys\n"
        f"root = {root!r}\n"
        "if root not in sys.path: sys.path.insert(0, root)\n"
        f"from {_ENTRY} import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    flags = ["-P"] if sys.version_info >= (3, 11) else []
    return [multiprocessing.spawn.get_executable(), *flags, "-c", boot, spec_path]


def _start(spec_path: str, stderr_path: str) -> subprocess.Popen:
    """Start the worker process (stdin/stdout closed; stderr, before the worker silences it,
    to ``stderr_path`` so a failed start can say why)."""
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            _command(spec_path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            close_fds=True,
        )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    return proc


def _active_workers() -> list[int]:
    """Process ids of the waterz workers running now (for tests and diagnostics)."""
    with _LIVE_LOCK:
        return [p.pid for p in _LIVE if p.poll() is None]
