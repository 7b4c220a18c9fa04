"""Region adjacency graph of fragments and one agglomeration over it, as waterz does it.

``edge_table`` collects, for a piece of a fragment volume, every voxel face between two
different non-zero fragments with the affinity on it (affinity channel ``d`` at voxel ``p``
links ``p`` to ``p - e_d``), reduced per fragment pair to what waterz's scoring needs:

- median scoring (waterz's ``HistogramQuantileAffinity<.., 50, .., 256>`` with its default
  ``InitWithMax``): each initial edge's 256-bin histogram holds one count, at the bin of the
  *largest* affinity along the contact; merged edges add their histograms;
- mean scoring: the sum and the number of affinities along the contact;
- median-all scoring (``InitWithMax`` off): the 256-bin histogram of every affinity along the
  contact (``edge_table(..., histogram=True)``: sparse rows pair, bin, count).

Tables from different blocks are concatenated and reduced again (``RegionGraph.combine``),
so a block only has to report the faces it owns. ``merge_graph`` then runs waterz's
iterative region merging in Python: pop the cheapest edge (ties: the edge whose first voxel
face comes first in the volume, so the order does not depend on blocks or numbering) (1 - median or 1 - mean), merge
its two regions, move the absorbed region's edges to the kept one and merge the statistics
of edges that become parallel, rescore them, repeat until the cheapest edge reaches
``max_threshold``. The merge history (kept, absorbed, score) drives ``Agglomeration``'s
replay exactly as waterz's own history does. Ties between equal scores (common with 256
bins) go to the edge whose first voxel face comes first in the volume; waterz's heap breaks
them by its internal order, which depends on the fragment numbering: on a fib25_b prediction
waterz alone, given the same fragments renumbered, differs from itself by VI 0.02-0.06
(median) and 0.0004-0.03 (mean), so this merge matches waterz to that level, not exactly.
"""
from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..cancel import CancelToken, check
from ..io import InputError
from .defaults import check_scoring

BINS = 256
SCORINGS = ("median", "mean", "median-all")


def _pairs(frag: np.ndarray, core: Optional[Sequence[slice]] = None):
    """Per axis: the boolean mask of voxel faces (voxel ``p`` in ``core``, neighbour ``p - e_d``
    inside the array) joining two different non-zero ids, with the two id arrays."""
    shape = frag.shape
    core = tuple(core) if core is not None else tuple(slice(0, s) for s in shape)
    for d in range(3):
        lo = [slice(c.start, c.stop) for c in core]
        lo[d] = slice(max(core[d].start, 1), core[d].stop)  # p needs a neighbour p - e_d
        hi = list(lo)
        hi[d] = slice(lo[d].start - 1, lo[d].stop - 1)
        a, b = frag[tuple(lo)], frag[tuple(hi)]
        m = (a != b) & (a != 0) & (b != 0)
        yield d, tuple(lo), m, a[m], b[m]


def _pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.uint64)
    b = b.astype(np.uint64)
    return (np.minimum(a, b) << np.uint64(32)) | np.maximum(a, b)


def _split_keys(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two ids ``(u, v)`` (int64) packed in ``_pair_keys`` keys."""
    return (key >> np.uint64(32)).astype(np.int64), (key & np.uint64(0xFFFFFFFF)).astype(np.int64)


def edge_table(fragments: np.ndarray, affinities: np.ndarray, core: Optional[Sequence[slice]] = None,
               origin: Sequence[int] = (0, 0, 0), volume_shape: Optional[Sequence[int]] = None,
               histogram: bool = False) -> dict:
    """Edge statistics of every fragment pair touching across a voxel face whose upper voxel
    lies in ``core`` (slices into ``fragments``; default: everywhere). ``fragments`` holds ids
    below 2**32 (0 = none); ``affinities`` (3, ...) the same grid; ``origin`` is the array's
    position in a volume of ``volume_shape``. Returns a dict of arrays ``key`` (u << 32 | v,
    u < v), ``max`` (float32), ``sum`` (float64), ``count`` (int64) and ``first`` (int64: the
    smallest global position of the edge's voxel faces, ``3 * linear index + axis``; it breaks
    ties between equal scores the same way whatever the blocks and the fragment numbering).
    ``histogram``: also ``hkey``, ``hbin``, ``hcount``, the contact's affinities binned as waterz
    does (what median-all scoring needs), one row per pair and bin."""
    if int(fragments.max(initial=0)) >= 2**32:
        raise InputError("more than 2**32 fragments: use larger fragments or a smaller volume")
    vshape = tuple(volume_shape) if volume_shape is not None else fragments.shape
    keys, vals, poss = [], [], []
    for d, lo, m, a, b in _pairs(fragments, core):
        keys.append(_pair_keys(a, b))
        vals.append(affinities[d][lo][m].astype(np.float32))
        idx = np.nonzero(m)
        pos = np.ravel_multi_index(tuple(i + s.start + o for i, s, o in zip(idx, lo, origin)), vshape)
        poss.append(pos.astype(np.int64) * 3 + d)
    key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    val = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    pos = np.concatenate(poss) if poss else np.zeros(0, np.int64)
    table = _reduce(key, val, first=pos)
    if histogram:
        table.update(_reduce_hist(key, discretize(val), np.ones(len(key), np.int64)))
    return table


def _reduce_hist(key: np.ndarray, bins: np.ndarray, count: np.ndarray) -> dict:
    """Histogram rows grouped by (pair ``key``, bin): ``hkey``, ``hbin``, ``hcount`` (summed)."""
    if key.size == 0:
        return dict(hkey=np.zeros(0, np.uint64), hbin=np.zeros(0, np.int64), hcount=np.zeros(0, np.int64))
    order = np.lexsort((bins, key))
    key, bins, count = key[order], bins[order], count[order]
    new = np.ones(len(key), bool)
    new[1:] = (key[1:] != key[:-1]) | (bins[1:] != bins[:-1])
    start = np.flatnonzero(new)
    return dict(hkey=key[start], hbin=bins[start].astype(np.int64), hcount=np.add.reduceat(count.astype(np.int64), start))


def _reduce(key: np.ndarray, val: np.ndarray, count: Optional[np.ndarray] = None,
            total: Optional[np.ndarray] = None, first: Optional[np.ndarray] = None) -> dict:
    """Group by ``key``: max of ``val``, sum of ``total`` (default ``val``), sum of ``count``
    (default 1), min of ``first``."""
    if key.size == 0:
        return dict(key=np.zeros(0, np.uint64), max=np.zeros(0, np.float32), sum=np.zeros(0, np.float64),
                    count=np.zeros(0, np.int64), first=np.zeros(0, np.int64))
    order = np.lexsort((val, key))
    key, val = key[order], val[order]
    last = np.ones(len(key), bool)
    last[:-1] = key[1:] != key[:-1]
    start = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    tot = (val.astype(np.float64) if total is None else total[order].astype(np.float64))
    cnt = (np.ones(len(key), np.int64) if count is None else count[order].astype(np.int64))
    fst = (np.zeros(len(key), np.int64) if first is None else first[order].astype(np.int64))
    return dict(key=key[last], max=val[last], sum=np.add.reduceat(tot, start), count=np.add.reduceat(cnt, start),
                first=np.minimum.reduceat(fst, start))


def relabel_table(table: dict, root: np.ndarray) -> dict:
    """An ``edge_table`` with fragment ids mapped through ``root`` (pairs inside one root dropped,
    pairs that become the same reduced again)."""
    u, v = (root[i] for i in _split_keys(table["key"]))
    keep = u != v
    out = _reduce(_pair_keys(u[keep], v[keep]), table["max"][keep], count=table["count"][keep],
                  total=table["sum"][keep], first=table["first"][keep])
    if "hkey" in table:
        hu, hv = (root[i] for i in _split_keys(table["hkey"]))
        hk = hu != hv
        out.update(_reduce_hist(_pair_keys(hu[hk], hv[hk]), table["hbin"][hk], table["hcount"][hk]))
    return out


def contact_table(fragments: np.ndarray, core: Optional[Sequence[slice]] = None) -> dict:
    """Voxel faces between different non-zero fragments (upper voxel in ``core``), per pair:
    ``key`` and ``area`` (the contact areas small-segment merging uses)."""
    keys = [_pair_keys(a, b) for _, _, _, a, b in _pairs(fragments, core)]
    key = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    del keys
    try:
        import fastremap  # several times faster than np.unique on large volumes

        uniq, area = fastremap.unique(key, return_counts=True)
    except ImportError:  # pragma: no cover
        uniq, area = np.unique(key, return_counts=True)
    return dict(key=np.asarray(uniq, np.uint64), area=np.asarray(area, np.int64))


@dataclass
class RegionGraph:
    """Fragment pairs ``u < v`` with their edge statistics; nodes are ids ``1..n_nodes-1``."""

    u: np.ndarray
    v: np.ndarray
    max: np.ndarray
    sum: np.ndarray
    count: np.ndarray
    first: np.ndarray
    n_nodes: int
    #: median-all's histograms: (edge index, bin, count) rows, or None when not collected
    hist: Optional[tuple] = None

    @property
    def n_edges(self) -> int:
        return int(len(self.u))

    @classmethod
    def combine(cls, tables: Sequence[dict], n_nodes: Optional[int] = None,
                root: Optional[np.ndarray] = None) -> "RegionGraph":
        """One graph from per-block ``edge_table`` results (pairs reported twice are merged);
        ``root`` maps fragment ids first (fragments stitched across block faces)."""
        if not tables:
            tables = [_reduce(np.zeros(0, np.uint64), np.zeros(0, np.float32))]
        t = _reduce(np.concatenate([t["key"] for t in tables]), np.concatenate([t["max"] for t in tables]),
                    count=np.concatenate([t["count"] for t in tables]), total=np.concatenate([t["sum"] for t in tables]),
                    first=np.concatenate([t["first"] for t in tables]))
        if all("hkey" in x for x in tables):
            t.update(_reduce_hist(np.concatenate([x["hkey"] for x in tables]), np.concatenate([x["hbin"] for x in tables]),
                                  np.concatenate([x["hcount"] for x in tables])))
        if root is not None:
            t = relabel_table(t, root)
        u, v = _split_keys(t["key"])
        n = int(n_nodes) if n_nodes is not None else (int(v.max()) + 1 if len(v) else 1)
        hist = None
        if "hkey" in t:  # rows -> edge index (every histogram pair is an edge: both come from the same faces)
            hist = (np.searchsorted(t["key"], t["hkey"]).astype(np.int64), t["hbin"], t["hcount"])
        return cls(u, v, t["max"], t["sum"], t["count"], t["first"], n, hist)


def combine_contacts(tables: Sequence[dict], root: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(u, v, area)`` (int64) from per-block ``contact_table`` results, as ``Agglomeration``
    wants; with ``root``, contacts between fragments of one root are dropped (ids kept)."""
    if not tables:
        z = np.zeros(0, np.int64)
        return z, z, z
    key = np.concatenate([t["key"] for t in tables])
    area = np.concatenate([t["area"] for t in tables])
    if root is not None:
        u, v = _split_keys(key)
        inside = root[u] == root[v]
        key, area = key[~inside], area[~inside]
    uniq, inv = np.unique(key, return_inverse=True)
    tot = np.bincount(inv.reshape(-1), weights=area, minlength=len(uniq)).astype(np.int64)
    return (*_split_keys(uniq), tot)


def discretize(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """waterz's ``discretize``: value -> bin (<= 0 or NaN -> 0, >= 1 -> bins - 1)."""
    v = np.asarray(values, np.float32)
    out = np.where(v > 0, np.minimum((v * np.float32(bins)).astype(np.int64, copy=False), bins - 1), 0)
    return np.where(v >= 1, bins - 1, out).astype(np.int64)


_MASK48 = (1 << 48) - 1


_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")


def _bits(score: float) -> int:
    """float32 bit pattern of a score >= 0 (rounded to float32): integers compare like the scores."""
    return _U32.unpack(_F32.pack(score))[0]


def _median_bin(hist: dict) -> int:
    """waterz's 50 % quantile bin of a {bin: count} histogram (pivot 50 * n / 100 + 1, 1-based)."""
    pivot = (50 * sum(hist.values())) // 100 + 1
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= pivot:
            return b
    return BINS - 1


def merge_graph(
    graph: RegionGraph,
    scoring: str = "median",
    max_threshold: float = 1.0,
    cancel: Optional[CancelToken] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """waterz's iterative region merging over ``graph``; returns ``(kept, absorbed, score)``
    per merge, in merge order (scores float32, as waterz records them).

    Queue entries are single integers ``score bits << 96 | first << 48 | edge`` (fast to
    compare; an entry is current only while it equals the edge's latest entry). A median
    edge's histogram is kept as the sorted list of its bins (one per initial edge, waterz's
    ``InitWithMax``): the quantile bin is the list's element at waterz's pivot."""
    check_scoring(scoring, custom=False, allowed=SCORINGS)
    median = scoring == "median"
    whole = scoring == "median-all"
    if whole and graph.hist is None:
        raise InputError("median-all scoring needs the contact histograms: edge_table(..., histogram=True)")
    n_e = graph.n_edges
    if n_e and (int(graph.first.max()) > _MASK48 or n_e > _MASK48):
        raise InputError("the region graph is too large for one merge (more than 2**48 edges or voxels)")
    u = graph.u.tolist()
    v = graph.v.tolist()
    # scores of the 256 median bins: 1 - (bin + 0.5) / 256 in float32, and their bit patterns
    bin_score = (np.float32(1.0) - (np.arange(BINS, dtype=np.float32) + np.float32(0.5)) / np.float32(BINS))
    bin_bits = bin_score.view(np.uint32).astype(np.int64).tolist()
    if median:
        bins = discretize(graph.max).tolist()
        hist: list = [[b] for b in bins]  # sorted bins per edge
        init_bits = [bin_bits[b] for b in bins]
    elif whole:
        hist = [dict() for _ in range(n_e)]  # bin -> count per edge
        for e, b, c in zip(*(a.tolist() for a in graph.hist)):
            hist[e][b] = c
        init_bits = [bin_bits[_median_bin(h)] for h in hist]
    else:
        sums = graph.sum.astype(np.float64).tolist()
        counts = graph.count.astype(np.int64).tolist()
        init = (1.0 - graph.sum / np.maximum(graph.count, 1)).astype(np.float32)
        init_bits = init.view(np.uint32).astype(np.int64).tolist()
    first = graph.first.tolist()
    entry = [(sb << 96) | (f << 48) | e for e, (sb, f) in enumerate(zip(init_bits, first))]
    adj: list[dict[int, int]] = [dict() for _ in range(graph.n_nodes)]
    for e in range(n_e):
        adj[u[e]][v[e]] = e
        adj[v[e]][u[e]] = e
    alive = [True] * n_e
    heap = list(entry)
    heapq.heapify(heap)
    kept_l: list[int] = []
    gone_l: list[int] = []
    bits_l: list[int] = []
    top = _bits(max_threshold) if max_threshold < 1.0 else _bits(1.0)
    heappop, heappush = heapq.heappop, heapq.heappush
    steps = 0
    while heap:
        x = heap[0]
        sb = x >> 96
        if sb >= top:
            break
        heappop(heap)
        e = x & _MASK48
        if not alive[e] or x != entry[e]:
            continue  # deleted, or an older entry of an edge rescored since
        a, b = u[e], v[e]
        if len(adj[a]) < len(adj[b]):  # keep the region with more neighbours: fewer edges move
            a, b = b, a
        alive[e] = False
        kept_l.append(a)
        gone_l.append(b)
        bits_l.append(sb)
        na = adj[a]
        del na[b]
        nb = adj[b]
        adj[b] = {}
        del nb[a]
        for n, eb in nb.items():
            an = adj[n]
            del an[b]
            ea = na.get(n)
            if ea is None:  # the edge moves to a
                if u[eb] == b:
                    u[eb] = a
                else:
                    v[eb] = a
                na[n] = eb
                an[a] = eb
                continue
            # parallel edges a-n and b-n: a-n keeps the merged statistics, b-n goes
            alive[eb] = False
            if median:
                h = hist[ea]
                hb = hist[eb]
                h = sorted(h + hb) if len(hb) > 1 else (h + hb if hb[0] >= h[-1] else sorted(h + hb))
                hist[ea] = h
                hist[eb] = None
                nbits = bin_bits[h[(50 * len(h)) // 100]]  # waterz's pivot 50 * n / 100 + 1, 1-based
            elif whole:
                h = hist[ea]
                for b_, c_ in hist[eb].items():
                    h[b_] = h.get(b_, 0) + c_
                hist[eb] = None
                nbits = bin_bits[_median_bin(h)]
            else:
                sums[ea] += sums[eb]
                counts[ea] += counts[eb]
                nbits = _bits(1.0 - sums[ea] / counts[ea])
            nf = min(first[ea], first[eb])
            first[ea] = nf
            new = (nbits << 96) | (nf << 48) | ea
            if new != entry[ea]:
                entry[ea] = new
                heappush(heap, new)
        steps += 1
        if cancel is not None and steps % 4096 == 0:
            check(cancel)
    scores = np.asarray(bits_l, np.int64).astype(np.uint32).view(np.float32) if bits_l else np.zeros(0, np.float32)
    return np.asarray(kept_l, np.int64), np.asarray(gone_l, np.int64), scores
