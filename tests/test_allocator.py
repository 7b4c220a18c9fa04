"""retain_freed_memory: glibc serves and keeps large blocks, so a second same-size
allocation reuses memory instead of page-faulting new memory."""
import resource
import subprocess
import sys
import textwrap

import pytest

from napari_segneuron.allocator import _libc

SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    from napari_segneuron.allocator import retain_freed_memory, retaining
    if sys.argv[1] == "on":
        assert retain_freed_memory() and retaining()

    def layer_like_step():  # tensors of 40-80 MiB made, filled and freed in a forward's order
        a = torch.ones(10 << 20)
        b = torch.ones(12 << 20)
        del a
        c = torch.ones(10 << 20)
        d = torch.ones(20 << 20)
        del b, c
        e = torch.ones(10 << 20)
        del d, e

    for _ in range(3):  # warm up
        layer_like_step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        layer_like_step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.skipif(_libc() is None, reason="not glibc")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    faults = {}
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(out.stdout.strip())
    pages = 10 * (62 << 22) // resource.getpagesize()  # 248 MiB per step
    assert faults["off"] > 0.5 * pages, faults  # each fresh block faulted in page by page
    assert faults["on"] < 0.1 * faults["off"], faults


def test_cli_predictor_reports_the_setting():
    from napari_segneuron.allocator import retain_freed_memory
    from napari_segneuron.inference import Predictor
    from napari_segneuron._model import MNet

    try:
        on = retain_freed_memory()
        settings = Predictor(MNet(kn=(4, 8, 8, 8, 8)), tile=(8, 32, 32), overlap=(2, 8, 8), tune="off").settings()
        assert settings["retain_freed_memory"] is on
    finally:
        retain_freed_memory(False)


RELEASE_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from napari_segneuron.allocator import release_freed_memory, retain_freed_memory

    def rss_mib():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 2**20

    retain_freed_memory()
    x = torch.ones(64 << 20)  # 256 MiB, kept by the process after it is freed
    del x
    kept = rss_mib()
    assert release_freed_memory()
    print(kept, rss_mib())
    """
)


@pytest.mark.skipif(_libc() is None, reason="not glibc")
def test_release_hands_kept_memory_back():
    out = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT], capture_output=True, text=True, check=True)
    kept, after = (float(v) for v in out.stdout.split())
    assert kept - after > 200, (kept, after)  # most of the 256 MiB block went back to the system
