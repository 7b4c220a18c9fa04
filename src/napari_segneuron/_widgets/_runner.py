"""Run one long task at a time off the GUI thread: progress bars, Cancel, notifications.

Every long action of the docks goes through :class:`TaskRunner`:

* the work runs in a napari ``thread_worker`` (so the viewer stays usable);
* the core function gets ``progress=callable(done, total, message)`` and
  ``cancel=CancelToken``; progress is forwarded to the GUI thread through a Qt signal
  and shown both in the dock (QProgressBar + status line) and in napari's activity
  dock (``napari.utils.progress`` with the real total);
* the Cancel button sets the token; a cancelled run ends with a warning notification and
  the bar reads "<task>: cancelled";
* every exception ends as a napari notification and in the dock's status line (never a
  traceback in the console): the worker function catches everything and returns an outcome.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Optional

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from ..cancel import CancelToken, Cancelled

LOG = logging.getLogger("napari_segneuron")

# Exceptions whose message is written for the user (shown as is).
_USER_ERRORS: tuple[type, ...] = ()


def _user_error_types() -> tuple[type, ...]:
    global _USER_ERRORS
    if not _USER_ERRORS:
        types: list[type] = []
        try:
            from ..io import InputError

            types.append(InputError)
        except Exception:  # pragma: no cover
            pass
        try:
            from .._model import WeightsError

            types.append(WeightsError)
        except Exception:  # pragma: no cover
            pass
        _USER_ERRORS = tuple(types)
    return _USER_ERRORS


def error_message(exc: BaseException, what: str = "") -> str:
    """A one-line message for a notification."""
    if isinstance(exc, _user_error_types()):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"{what} ran out of memory: use a smaller tile/batch, or Preview on a smaller region".strip()
    text = str(exc) or type(exc).__name__
    prefix = f"{what} failed: " if what else ""
    return f"{prefix}{type(exc).__name__}: {text}"


# -- notifications (one place, so tests can watch them) ---------------------------------
def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    LOG.info("error: %s", message)
    show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    LOG.info("warning: %s", message)
    show_warning(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    LOG.info("info: %s", message)
    show_info(message)


@dataclass
class Outcome:
    status: str  # "ok" | "cancelled" | "error"
    value: Any = None
    error: Optional[BaseException] = None
    seconds: float = 0.0


class _Bridge(QObject):
    progressed = Signal(int, int, str)


class TaskRunner(QObject):
    """One task at a time; owns a progress bar, a status label and a Cancel button."""

    started = Signal(str)
    finished = Signal(str, str)  # task name, outcome status

    def __init__(self, progress_bar: QProgressBar, status: QLabel, cancel_button: QPushButton, parent=None):
        super().__init__(parent)
        self.progress_bar = progress_bar
        self.status = status
        self.cancel_button = cancel_button
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self.token: Optional[CancelToken] = None
        self.worker = None
        self.task: Optional[str] = None
        self.last_outcome: Optional[Outcome] = None
        self._pbar = None
        self._pbar_total = None

    # -- state --------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.task is not None

    def cancel(self) -> None:
        if self.token is not None and not self.token.cancelled:
            self.token.cancel()
            self.status.setText(f"Cancelling {self.task}…")

    def show_error(self, message: str) -> None:
        """An error in the dock's status line (replacing what it said) and as a notification."""
        self.status.setText(f"⚠ {message}")
        notify_error(message)

    # -- running ------------------------------------------------------------------------
    def start(
        self,
        name: str,
        fn: Callable[..., Any],
        on_done: Callable[[Any], None],
        on_cancelled: Optional[Callable[[], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
        keep_result_when_cancelled: bool = False,
    ):
        """Run ``fn(progress=..., cancel=...)`` in a thread; call ``on_done(value)`` in the GUI thread.

        A run whose token was cancelled is discarded ("nothing changes") unless
        ``keep_result_when_cancelled`` (training: the returned result holds the last checkpoint).
        """
        if self.busy:
            notify_warning(f"Wait for '{self.task}' to finish (or press Cancel) before starting '{name}'")
            return None
        from napari.qt.threading import create_worker

        token = CancelToken()
        bridge = self._bridge

        def progress(done: int, total: int, message: str = "") -> None:
            bridge.progressed.emit(int(done), int(total), str(message))

        def work() -> Outcome:
            t0 = time.perf_counter()
            try:
                value = fn(progress=progress, cancel=token)
                if token.cancelled:
                    # a kept result (training: the last checkpoint) still goes to on_done
                    kept = value if keep_result_when_cancelled else None
                    return Outcome("cancelled", kept, seconds=time.perf_counter() - t0)
                return Outcome("ok", value, seconds=time.perf_counter() - t0)
            except Cancelled:
                return Outcome("cancelled", seconds=time.perf_counter() - t0)
            except BaseException as exc:  # noqa: BLE001 - reported as a notification
                LOG.debug("%s failed:\n%s", name, traceback.format_exc())
                return Outcome("error", error=exc, seconds=time.perf_counter() - t0)

        self.task = name
        self.token = token
        self._start_progress(name)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"{name}…")
        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(lambda out: self._on_returned(name, out, on_done, on_cancelled, on_error))
        self.worker = worker
        self.started.emit(name)
        worker.start()
        return worker

    def run_sync(self, name: str, fn: Callable[..., Any]) -> Outcome:
        """Run in the GUI thread (short tasks); same error handling."""
        t0 = time.perf_counter()
        try:
            return Outcome("ok", fn(), seconds=time.perf_counter() - t0)
        except Cancelled:
            return Outcome("cancelled")
        except Exception as exc:  # noqa: BLE001
            LOG.debug("%s failed:\n%s", name, traceback.format_exc())
            self.show_error(error_message(exc, name))
            return Outcome("error", error=exc)

    # -- GUI-thread callbacks -----------------------------------------------------------
    def _start_progress(self, name: str) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat(f"{name}: %p%")
        self._pbar_total = None
        try:
            from napari.utils import progress as napari_progress

            self._pbar = napari_progress(total=1, desc=f"SegNeuron: {name}")
        except Exception:  # pragma: no cover - napari without activity dock
            self._pbar = None

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self.task is None:
            return
        total = max(int(total), 1)
        done = max(0, min(int(done), total))
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(done)
        if message:
            self.status.setText(f"{self.task}: {message} ({done}/{total})")
        pbar = self._pbar
        if pbar is not None:
            try:
                if self._pbar_total != total or done < pbar.n:
                    pbar.reset(total=total)
                    self._pbar_total = total
                if message:
                    pbar.set_description(f"SegNeuron {self.task}: {message}")
                if done > pbar.n:
                    pbar.update(done - pbar.n)
            except Exception:  # pragma: no cover - progress display must never break a run
                pass

    def _close_progress(self) -> None:
        if self._pbar is not None:
            try:
                self._pbar.close()
            except Exception:  # pragma: no cover
                pass
        self._pbar = None

    def _on_returned(self, name, out: Outcome, on_done, on_cancelled, on_error) -> None:
        self._close_progress()
        self.cancel_button.setEnabled(False)
        self.task = None
        self.token = None
        self.last_outcome = out
        if out.status == "ok":
            self.progress_bar.setValue(self.progress_bar.maximum())
            self.status.setText(f"{name}: done in {out.seconds:.1f} s")
            try:
                on_done(out.value)
            except Exception as exc:  # noqa: BLE001
                LOG.debug("%s (finishing) failed:\n%s", name, traceback.format_exc())
                out = Outcome("error", error=exc, seconds=out.seconds)
                self.last_outcome = out
                self.show_error(error_message(exc, name))
        elif out.status == "cancelled":
            self.progress_bar.setFormat(f"{name}: cancelled")
            self.status.setText(f"{name}: cancelled after {out.seconds:.1f} s")
            if out.value is not None:
                try:
                    on_done(out.value)  # says itself what was kept
                except Exception as exc:  # noqa: BLE001
                    LOG.debug("%s (finishing) failed:\n%s", name, traceback.format_exc())
                    self.show_error(error_message(exc, name))
            else:
                self.progress_bar.setValue(0)
                notify_warning(f"{name} was cancelled; nothing was changed")
            if on_cancelled is not None:
                on_cancelled()
        else:
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat(f"{name}: failed")
            self.show_error(error_message(out.error, name))
            if on_error is not None:
                on_error(out.error)
        self.finished.emit(name, out.status)
