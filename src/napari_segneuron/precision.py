"""What a device computes natively: CPU flags, bf16/fp16 support, and the autocast to use.

Reduced precision only pays where the hardware has it: on CPUs without bf16 instructions
PyTorch emulates bfloat16 and an MNet step is several times *slower* than fp32 (finetune:
~40 s vs ~6 s per step on an AVX2-only AMD EPYC). So ``--half`` (predict), ``--mixed-precision``
(finetune / pretrain) and the dock's half-precision box only turn autocast on where it is
native, detected at run time:

- CUDA: bfloat16 where ``torch.cuda.is_bf16_supported()`` (training) , else float16;
  inference uses float16 (the usual fast path on GPUs);
- CPU: bfloat16 when the CPU has ``avx512_bf16`` or ``amx_bf16`` (x86, from /proc/cpuinfo) or
  ``bf16`` (aarch64); otherwise fp32, with one note per process;
- MPS: float16.

Everything takes the flags as an optional argument so the decision can be tested with a
faked capability.
"""
from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Optional, Union

import torch

#: CPU flags (Linux /proc/cpuinfo names) that mean bfloat16 arithmetic runs in hardware
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: flags worth printing in benchmarks and notes (the vector units PyTorch's kernels use)
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "bf16")

_NOTED: set[str] = set()


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and not model:
                    model = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), frozenset(flags)


def cpu_model() -> str:
    """The CPU's model name (e.g. 'AMD EPYC 7B13'), or the architecture when unknown."""
    return _cpuinfo()[0]


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    return _cpuinfo()[1]


def cpu_capability() -> str:
    """PyTorch's own view of the CPU's vector unit ('AVX2', 'AVX512', ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        return "unknown"


def reported_flags(flags: Optional[Iterable[str]] = None) -> list[str]:
    """The subset of ``REPORTED_FLAGS`` this CPU has, for benchmarks and provenance."""
    have = cpu_flags() if flags is None else set(flags)
    return [f for f in REPORTED_FLAGS if f in have]


def cpu_has_native_bf16(flags: Optional[Iterable[str]] = None, capability: Optional[str] = None) -> bool:
    """True when bfloat16 runs in hardware on this CPU (``flags``/``capability`` fake it in tests)."""
    have = cpu_flags() if flags is None else set(flags)
    if have:
        return any(f in have for f in NATIVE_BF16_FLAGS)
    # no flags to read (no /proc/cpuinfo): PyTorch's capability string, when it names bf16 / AMX
    cap = (cpu_capability() if capability is None else capability).upper()
    return "BF16" in cap or "AMX" in cap


@dataclass(frozen=True)
class Precision:
    """The autocast a run uses: ``dtype`` None means fp32; ``note`` says why a request was declined."""

    dtype: Optional[torch.dtype]
    note: str = ""

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).replace("torch.", "")

    def autocast(self, device_type: str):
        if self.dtype is None:
            return torch.autocast(device_type, enabled=False)
        return torch.autocast(device_type, dtype=self.dtype)


def choose_precision(device: Union[str, torch.device], requested: bool, training: bool = False,
                     flags: Optional[Iterable[str]] = None, capability: Optional[str] = None,
                     cuda_bf16: Optional[bool] = None) -> Precision:
    """The reduced precision to use on ``device`` when ``requested``, only where it is native."""
    dev = torch.device(device)
    if not requested:
        return Precision(None)
    if dev.type == "cuda":
        if training:
            bf16 = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
            return Precision(torch.bfloat16 if bf16 else torch.float16)
        return Precision(torch.float16)
    if dev.type == "mps":
        return Precision(None if training else torch.float16)
    if dev.type == "cpu":
        if cpu_has_native_bf16(flags, capability):
            return Precision(torch.bfloat16)
        return Precision(None, "this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16): reduced precision "
                               "would be emulated and slower, so fp32 is used")
    return Precision(None, f"no reduced precision on {dev.type}: fp32 is used")


def note_once(message: str) -> None:
    """Print ``note: message`` to stderr once per process."""
    if message and message not in _NOTED:
        _NOTED.add(message)
        print(f"note: {message}", file=sys.stderr)
