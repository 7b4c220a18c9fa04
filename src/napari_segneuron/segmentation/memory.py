"""How much memory a waterz agglomeration needs, estimated before it starts.

waterz keeps per voxel the affinities, the fragments and its own copies, and per
region-graph edge its statistics: a sum and a count for mean scoring, a 256-bin histogram
for median scoring.  Measured on 6.5 Mvoxel volumes with 0.09-0.5 M edges (peak RSS of the
waterz run, two edge densities per scoring): ~113 bytes per edge with mean scoring, ~1190
with median, plus ~12 bytes per voxel.  The 17.8 GB kill of issue 16 fits: 2.09 M
fragments with ~14 M edges x 1190 bytes.  The constants below add a margin.
"""
from __future__ import annotations

import os
import resource
from typing import Optional

BYTES_PER_VOXEL = 40  # prepared affinities (12), fragments in and out (12), waterz's own copies
BYTES_PER_EDGE = {"mean": 150, "median": 1400, "median-all": 1400}
BYTES_PER_EDGE_OTHER = 1400  # a custom scoring type: assume a histogram
#: waterz's own seeds on real predictions (issue 16): ~7.5 voxels per fragment, ~7 edges each
WATERZ_SEED_VOXELS_PER_FRAGMENT = 7.5
EDGES_PER_FRAGMENT = 7.0


def estimate_bytes(n_voxels: int, n_edges: float, scoring: str) -> int:
    """Peak memory (bytes) of a waterz run over ``n_voxels`` with ``n_edges`` region-graph edges."""
    per_edge = BYTES_PER_EDGE.get(scoring, BYTES_PER_EDGE_OTHER)
    return int(n_voxels * BYTES_PER_VOXEL + n_edges * per_edge)


def _cgroup_room() -> Optional[int]:
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_path) as f:
                limit = f.read().strip()
            with open(usage_path) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(int(limit) - usage, 0)
    return None


def available_bytes() -> int:
    """Memory this process can still take: the least of the system's available memory, the
    room left in its cgroup and under an address-space limit (``ulimit -v``/``prlimit --as``)."""
    room = []
    try:
        import psutil

        room.append(int(psutil.virtual_memory().available))
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            room.append(max(int(soft) - int(psutil.Process(os.getpid()).memory_info().vms), 0))
    except ImportError:  # pragma: no cover - psutil comes with the GUI stack
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            room.append(int(pages))
        except (ValueError, OSError):
            pass
    cg = _cgroup_room()
    if cg is not None:
        room.append(cg)
    return min(room) if room else 1 << 62


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
