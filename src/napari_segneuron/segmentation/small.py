"""Small-segment merging: segments below a minimum size join the neighbour they touch most."""
from __future__ import annotations

import numpy as np

from ..metrics import _unique_inverse
from .graph import _split_keys
from .graph import contact_table as graph_contact_table


def contact_table(frag: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Touching fragment pairs ``(u, v)`` (u < v, both non-zero) and their contact areas
    in voxel faces, as int64 arrays (``graph.contact_table`` unpacked)."""
    table = graph_contact_table(frag)
    u, v = _split_keys(table["key"])
    return u, v, table["area"]


def merge_small(
    lut: np.ndarray, sizes: np.ndarray, min_size: int, contacts: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray:
    """Segment id -> new id, merging every segment below ``min_size`` into the touching
    segment it shares the most voxel faces with (repeated while that helps); small segments
    touching no other segment become 0.  ``sizes`` is indexed by segment id, ``lut`` maps
    fragment id -> segment id, ``contacts`` comes from ``contact_table``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    fu, fv, area = contacts
    n = len(sizes)
    ids = np.arange(n, dtype=np.int64)  # segment id -> current group
    su, sv = lut[fu].astype(np.int64), lut[fv].astype(np.int64)
    cur_sizes = sizes.astype(np.int64)
    # ties in contact area go to the segment holding the lowest fragment id, so that the
    # result does not depend on how segments happen to be numbered (e.g. on max_threshold)
    canon = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(canon, lut.astype(np.int64), np.arange(len(lut), dtype=np.int64))
    for _ in range(8):
        a, b = ids[su], ids[sv]
        m = (a != b) & (a != 0) & (b != 0)
        if not m.any():
            break
        a, b, w = a[m], b[m], area[m]
        small = cur_sizes < min_size
        src = np.concatenate([a[small[a]], b[small[b]]])
        if src.size == 0:
            break
        dst = np.concatenate([b[small[a]], a[small[b]]])
        wt = np.concatenate([w[small[a]], w[small[b]]])
        # total contact per (src, dst) pair, then the largest per src (one sort: src
        # ascending, contact descending, ties by lowest fragment id)
        up, inv = _unique_inverse(src * n + dst)
        tot = np.bincount(inv, weights=wt).astype(np.int64)
        ps, pd = up // n, up % n
        group_canon = np.full(n, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(group_canon, ids, canon)
        order = np.lexsort((group_canon[pd], -tot, ps))
        ps, pd = ps[order], pd[order]
        first = np.ones(len(order), bool)
        first[1:] = ps[1:] != ps[:-1]
        choose_s, choose_d = ps[first], pd[first]
        graph = coo_matrix((np.ones(len(choose_s)), (choose_s, choose_d)), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        comp = comp.astype(np.int64)
        c0 = comp[0]  # keep background at 0
        comp = np.where(comp == c0, 0, np.where(comp == 0, c0, comp))
        cur_sizes = np.bincount(comp, weights=cur_sizes, minlength=n).astype(np.int64)
        ids = comp[ids]
    # what is still small touches nothing (or only other small pieces): background
    keep = cur_sizes >= min_size
    keep[0] = False
    final = np.zeros(n, np.uint32)
    final[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return final[ids]
