"""Initial fragments (waterz's regions before any merge)."""
from __future__ import annotations

import numpy as np

def _renumber(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..N (0 stays 0) as uint64, the form waterz wants for fragments."""
    try:
        import fastremap
    except ImportError:  # pragma: no cover - fastremap is a dependency
        u, inv = np.unique(labels, return_inverse=True)
        if u[0] != 0:
            inv = inv + 1
        return inv.reshape(labels.shape).astype(np.uint64)
    out, _ = fastremap.renumber(np.ascontiguousarray(labels), preserve_zero=True)
    return out.astype(np.uint64, copy=False)


