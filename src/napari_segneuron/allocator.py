"""Keep freed memory for reuse (glibc), so each network layer does not page-fault fresh memory.

Every MNet layer allocates tensors of tens of MB. glibc hands blocks that large out with
``mmap`` and returns them with ``munmap`` when freed, so the next layer's output is new
memory again and the kernel zero-fills it page by page: on a 2-core Xeon that was about a
fifth of a forward pass (benchmarks/bench_inference.py prints the comparison). Serving them
from the heap and keeping freed memory for reuse removes that cost. The price is that the
process keeps its peak memory until it exits, which suits a command-line run; the napari
process is left as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_KEEP = 2**31 - 1  # the largest value mallopt takes: keep up to 2 GiB of freed memory at the top

_state = {"retained": False}


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def retain_freed_memory(enable: bool = True) -> bool:
    """Serve large blocks from the heap and keep freed memory (``enable=False`` restores glibc's
    defaults). Returns whether the setting is in effect; False where the C library is not glibc."""
    libc = _libc()
    if libc is None:
        return False
    mmap_max, trim = (0, _KEEP) if enable else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    ok = bool(libc.mallopt(_M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
    _state["retained"] = ok and enable
    return _state["retained"] if enable else ok


def retaining() -> bool:
    """Whether ``retain_freed_memory`` is in effect in this process."""
    return _state["retained"]


def release_freed_memory() -> bool:
    """Hand the freed memory this process keeps back to the system now (glibc ``malloc_trim``),
    e.g. before starting another memory-hungry process. Returns whether anything could be done."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True
