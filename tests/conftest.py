"""Shared fixtures: a tiny random-weights MNet checkpoint, the sample data, notification capture.

GUI tests and machines without a display: before any QApplication exists, a subprocess
probe starts one (under pytest-xvfb's Xvfb) and opens an OpenGL context. If that fails,
because Xvfb or a library Qt needs is missing, the tests that need Qt are skipped and
one line says which command installs what is missing; every other test still runs.
A Qt that cannot even be imported (libGL missing) switches pytest-qt off before it
loads. ``NAPARI_SEGNEURON_GUI_TESTS=require`` (set by .ci/run) makes this an error.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY_KN = (4, 8, 12, 16, 20)
# no automatic speed probe in tests (results must not depend on timing; tests of the probe fake it)
os.environ.setdefault("NAPARI_SEGNEURON_AUTOTUNE", "off")

ROOT = Path(__file__).resolve().parent.parent
GUI_FIXTURES = {"qtbot", "qapp", "make_napari_viewer", "make_napari_viewer_proxy"}
_PROBE = """
import sys
from qtpy.QtGui import QOpenGLContext
from qtpy.QtWidgets import QApplication, QWidget
app = QApplication(sys.argv[:1])
w = QWidget()
w.resize(32, 32)
w.show()
app.processEvents()
ctx = QOpenGLContext()
if not ctx.create():
    sys.exit("Qt starts, but cannot create an OpenGL context (libGL / Mesa missing?)")
w.close()
print("platform", app.platformName())
"""


class _Gui:
    """Whether Qt can open windows here; ``reason`` is None when it can (or is untested)."""

    checked = False
    reason: str | None = None
    import_error: str | None = None


def _qt_import_error() -> str | None:
    """Importing Qt never aborts (only starting it does), so this check runs in-process."""
    try:
        from qtpy import QtGui, QtTest, QtWidgets  # noqa: F401
    except Exception as err:  # ImportError, qtpy's binding errors, a missing libGL
        return f"{type(err).__name__}: {err}"
    return None


def _fix_command() -> str:
    try:
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "system_deps.sh"), "--print-command"],
            capture_output=True, text=True, timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or (
        "the system packages look complete; see which library Qt misses with: QT_DEBUG_PLUGINS=1 "
        f"{sys.executable} -c 'from qtpy.QtWidgets import QApplication; QApplication([])'"
    )


def _probe_gui() -> str | None:
    """Start a QApplication in a subprocess (a failing one aborts its process, not ours)."""
    if _Gui.import_error:
        return f"Qt cannot be imported ({_Gui.import_error})"
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        if not shutil.which("Xvfb"):
            return "no display and Xvfb is not installed"
    try:
        run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "starting a QApplication timed out"
    if run.returncode == 0:
        return None
    lines = [ln.strip() for ln in (run.stderr + run.stdout).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Fatal Python error", "Current thread", "File ", "Thread 0x"))]
    detail = (useful or lines or [f"exit code {run.returncode}"])[0]
    return f"Qt cannot start a window here ({detail[:200]})"


def pytest_addoption(parser, pluginmanager):
    # runs when this conftest is loaded, before any plugin's pytest_configure
    _Gui.import_error = _qt_import_error()
    if _Gui.import_error:
        # pytest-qt imports QtGui/QtWidgets in its pytest_configure: that would stop the whole run
        pluginmanager.set_blocked("pytest-qt")


def _needs_gui(item) -> bool:
    return bool(GUI_FIXTURES.intersection(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config, items):
    gui = [item for item in items if _needs_gui(item)]
    if not gui and not _Gui.import_error:
        return
    if not _Gui.checked:
        _Gui.checked = True
        cause = _probe_gui()
        if cause:
            _Gui.reason = f"GUI tests skipped: {cause}. Fix: {_fix_command()}"
    if _Gui.reason is None:
        return
    if os.environ.get("NAPARI_SEGNEURON_GUI_TESTS") == "require":
        raise pytest.UsageError(
            _Gui.reason.replace("GUI tests skipped", "GUI tests cannot run", 1) + " (NAPARI_SEGNEURON_GUI_TESTS=require)"
        )
    mark = pytest.mark.skip(reason="needs Qt with a display (see 'GUI tests skipped' at the end)")
    for item in gui:
        item.add_marker(mark)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Without a usable Qt, a test module that imports the widgets at top level is skipped,
    not an error."""
    report = yield
    if _Gui.import_error and report.failed and isinstance(collector, pytest.Module):
        if "ImportError" in str(report.longrepr) or "QtBindingsNotFoundError" in str(report.longrepr):
            report.outcome = "skipped"
            report.longrepr = (str(collector.path), 0, "Skipped: imports Qt, which cannot be imported here")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Without a usable Qt, a test that fails only because it imports Qt is a skip."""
    report = yield
    if _Gui.import_error and report.failed and call.excinfo is not None and (
        call.excinfo.errisinstance(ImportError)
        or _Gui.import_error.split(": ", 1)[-1] in str(call.excinfo.value)  # e.g. wrapped by npe2
    ):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), 0, "Skipped: imports Qt, which cannot be imported here")
    return report


def pytest_terminal_summary(terminalreporter):
    if _Gui.reason:
        terminalreporter.write_line(_Gui.reason, yellow=True, bold=True)


def pytest_configure(config):
    # Tiny tensors on a shared 2-core CI box: one intra-op thread is 5-10x faster than
    # several threads fighting over the cores (measured). Override with TORCH_NUM_THREADS.
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small MNet (kn=(4,8,12,16,20)) with random weights, saved like a real checkpoint."""
    import torch

    from napari_segneuron._model import MNet, save_checkpoint

    torch.manual_seed(0)
    model = MNet(kn=TINY_KN)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(model, path, iters=0, metadata={"name": "tiny-test"})
    return path


@pytest.fixture(scope="session")
def tiny_model_cpu(tiny_checkpoint):
    from napari_segneuron._model import load_model

    return load_model(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def sample_raw():
    from napari_segneuron.samples import load_raw

    return load_raw()


@pytest.fixture(scope="session")
def sample_labels():
    from napari_segneuron.samples import load_labels

    return load_labels()


@pytest.fixture
def notifications(monkeypatch):
    """Collect the (level, message) of every notification the docks raise."""
    from napari_segneuron._widgets import _runner

    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(_runner, "notify_error", lambda m: seen.append(("error", m)))
    monkeypatch.setattr(_runner, "notify_warning", lambda m: seen.append(("warning", m)))
    monkeypatch.setattr(_runner, "notify_info", lambda m: seen.append(("info", m)))
    for mod_name in ("segment", "train"):
        try:
            mod = __import__(f"napari_segneuron._widgets.{mod_name}", fromlist=["x"])
        except Exception:
            continue
        for level in ("error", "warning", "info"):
            if hasattr(mod, f"notify_{level}"):
                monkeypatch.setattr(mod, f"notify_{level}", lambda m, lv=level: seen.append((lv, m)))
    return seen


@pytest.fixture
def rng():
    return np.random.default_rng(0)


#: the sample corner the training-dock tests train on
TRAINING_CROP = (slice(0, 16), slice(0, 64), slice(0, 96))


@pytest.fixture
def small_training_setup():
    """A function that puts the sample corner (image 'em', labels 'truth') in a viewer and
    points a training dock at it with a small, fast CPU configuration."""
    def setup(viewer, train):
        from napari_segneuron.samples import load_labels, load_raw

        viewer.add_image(load_raw()[TRAINING_CROP], name="em")
        viewer.add_labels(load_labels()[TRAINING_CROP].astype(np.uint32), name="truth")
        train.image_combo.set_value(viewer.layers["em"])
        train.labels_combo.set_value(viewer.layers["truth"])
        train.settings.crop.value = (8, 32, 32)
        train.settings.batch_size.value = 1
        train.settings.device.value = "cpu"

    return setup
