"""Cooperative cancellation and progress reporting shared by every long task."""
from __future__ import annotations

import threading
from typing import Callable, Optional, Protocol


class Cancelled(Exception):
    """Raised inside a long task when its CancelToken was cancelled."""


class CancelToken:
    """A flag a GUI or CLI sets and a long task checks between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


class ProgressCallback(Protocol):
    def __call__(self, done: int, total: int, message: str = "") -> None: ...


ProgressFn = Optional[Callable[..., None]]


def check(cancel: Optional[CancelToken]) -> None:
    """Raise Cancelled if ``cancel`` is set; a None token never cancels."""
    if cancel is not None:
        cancel.raise_if_cancelled()
