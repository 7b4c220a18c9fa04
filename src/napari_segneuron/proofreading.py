"""Proofreading on the merge hierarchy: merges and splits as constraints on the fragment graph.

A merge is a must-link between two root fragments; a split is a cannot-link between the
fragments holding the seeds. ``labels(t)`` replays the agglomeration's merge history up to
``t``, skipping every merge that would join cannot-linked fragments (so a split cuts the
weakest link between its seeds), then applies the must-links. Segment ids are root
fragment ids, as in ``Agglomeration.labels``; an edit changes only the ids it touches.

When one fragment holds two or more seeds, the split first refines that fragment: a
seeded watershed on its distance transform cuts it into pieces (new fragment ids, held
by the proofreader, never written back to the agglomeration); undone, a piece rejoins
its parent fragment.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage

from .atomic import atomic_output
from .segmentation.agglomeration import Agglomeration
from .segmentation.defaults import DEFAULT_THRESHOLD


class _Sets:
    """Union-find whose union keeps the first argument's root."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, keep: int, other: int) -> None:
        self.parent[self.find(other)] = self.find(keep)


class Proofreader:
    """Merge/split edits over an ``Agglomeration``, kept valid at every threshold."""

    def __init__(self, agglomeration: Agglomeration, threshold: Optional[float] = None) -> None:
        self.agg = agglomeration
        self.threshold = float(DEFAULT_THRESHOLD if threshold is None else threshold)
        self.edits: list[dict] = []
        self._redo: list[dict] = []
        self._cache: Optional[tuple[float, int, np.ndarray]] = None
        self.fragments = agglomeration.fragments  # copied on the first refinement
        self._sizes = np.asarray(agglomeration._sizes)
        self._pieces: dict[int, int] = {}  # piece fragment id -> the fragment it was cut from

    # constraints -------------------------------------------------------------------
    def _constraints(self) -> tuple[list[tuple[int, int]], set[tuple[int, int]]]:
        must: list[tuple[int, int]] = []
        cannot: set[tuple[int, int]] = set()
        for e in self.edits:
            if e["op"] == "merge":
                for pair in e.get("released", []):
                    cannot.discard(tuple(pair))
                must.append((int(e["keep"]), int(e["other"])))
            elif e["op"] == "split":
                dropped = {tuple(p) for p in e.get("released", [])}
                must = [m for m in must if m not in dropped]
                cannot.update(tuple(p) for p in e["cannot"])
        return must, cannot

    def _sets(self, threshold: float) -> _Sets:
        must, cannot = self._constraints()
        n = len(self._sizes)
        sets = _Sets(n)
        active = {int(p) for e in self.edits for _, ps in e.get("refined", []) for p in ps}
        for piece, parent in self._pieces.items():
            if piece not in active:
                sets.union(parent, piece)
        k = self.agg.n_merges(threshold)
        partners: dict[int, set[int]] = {}
        for a, b in cannot:
            partners.setdefault(a, set()).add(b)
            partners.setdefault(b, set()).add(a)
        members: dict[int, set[int]] = {}  # root -> its cannot-linked fragments
        for f in partners:
            members.setdefault(f, set()).add(f)

        locks = [e["fragments"] for e in self.edits if e["op"] == "lock"]
        tag: dict[int, int] = {}  # root -> the lock holding it: a locked segment joins nothing else
        for i, fs in enumerate(locks):
            for f in fs:
                tag[int(f)] = i

        def blocked(ra: int, rb: int) -> bool:
            if tag.get(ra, -1) != tag.get(rb, -1):
                return True
            ma, mb = members.get(ra), members.get(rb)
            if not ma or not mb:
                return False
            return any(partners[f] & mb for f in ma)

        def join(keep: int, other: int) -> None:
            ra, rb = sets.find(keep), sets.find(other)
            if ra == rb or blocked(ra, rb):
                return
            sets.union(ra, rb)
            if rb in tag:
                tag[ra] = tag.pop(rb)
            if rb in members:
                members.setdefault(ra, set()).update(members.pop(rb))

        local = self._local_thresholds()
        for i, (x, y) in enumerate(self.agg.merges[:k].tolist()):
            if local and self._held_back(i, int(x), int(y), local):
                continue
            join(int(x), int(y))
        for a, b in must:
            ra, rb = sets.find(a), sets.find(b)
            if ra != rb and tag.get(ra, -1) == tag.get(rb, -1):
                sets.union(ra, rb)
        for e in self.edits:  # a segment cut by its own threshold keeps its id on one piece
            if e["op"] == "segment_threshold":
                seg = int(e["segment"])
                r = sets.find(seg)
                sets.parent[seg], sets.parent[r] = seg, seg
        for e in self.edits:  # a locked segment keeps exactly its fragments, and its id
            if e["op"] == "lock":
                seg = int(e["segment"])
                for f in e["fragments"]:
                    sets.union(seg, int(f))
                r = sets.find(seg)
                sets.parent[seg], sets.parent[r] = seg, seg
        return sets

    def _local_thresholds(self) -> list[tuple[set[int], int]]:
        """(fragments, merges kept inside them) for each per-segment threshold edit, in order."""
        return [({int(f) for f in e["fragments"]}, self.agg.n_merges(float(e["local"])))
                for e in self.edits if e["op"] == "segment_threshold"]

    @staticmethod
    def _held_back(i: int, x: int, y: int, local: list[tuple[set[int], int]]) -> bool:
        """Whether merge ``i`` of ``x`` and ``y`` lies inside a segment whose own threshold stops it
        (the latest per-segment edit holding both fragments decides)."""
        for frags, k in reversed(local):
            if x in frags and y in frags:
                return i >= k
        return False

    def lookup_table(self, threshold: Optional[float] = None) -> np.ndarray:
        """Fragment id -> segment id (0 = background) at ``threshold``, edits applied."""
        t = self.threshold if threshold is None else float(threshold)
        if self._cache is not None and self._cache[:2] == (t, len(self.edits)):
            return self._cache[2]
        sets = self._sets(t)
        n = len(self._sizes)
        lut = np.fromiter((sets.find(i) for i in range(n)), np.int64, n)
        lut[0] = 0
        lut = self._small(lut)
        self._cache = (t, len(self.edits), lut)
        return lut

    def _small(self, roots: np.ndarray) -> np.ndarray:
        """Drop or merge segments below the agglomeration's ``min_size``, as it does."""
        sizes = np.bincount(roots, weights=self._sizes, minlength=len(roots))
        min_size = max(self.agg.min_size, 1)
        small = (sizes[roots] < min_size) & (roots > 0)
        if self.agg.small != "merge" or self.agg.min_size <= 1 or not small.any():
            return np.where(small | (roots == 0), 0, roots).astype(np.uint32)
        ids, run = np.unique(roots, return_inverse=True)  # ids[0] == 0: background
        seg_sizes = sizes[ids].astype(np.int64)
        seg_sizes[0] = 0
        group = self.agg._merge_small(run.astype(np.uint32), seg_sizes, min_size)
        rep = np.zeros(int(group.max()) + 1, np.uint32)
        order = np.lexsort((ids, -seg_sizes, group))  # each group takes its largest segment's id
        for i in order[::-1]:
            rep[group[i]] = ids[i]
        rep[0] = 0
        return rep[group[run]]

    # public API ----------------------------------------------------------------------
    def labels(self, threshold: Optional[float] = None) -> np.ndarray:
        """Label volume at ``threshold`` (the current one when None)."""
        return self.lookup_table(threshold)[self.fragments]

    def set_threshold(self, t: float) -> None:
        self.agg.n_merges(t)  # validates t
        self.threshold = float(t)

    def _segment_fragments(self, segment_id: int) -> np.ndarray:
        return np.flatnonzero(self.lookup_table() == segment_id)

    def _push(self, edit: dict) -> None:
        self.edits.append(edit)
        self._redo.clear()
        self._cache = None

    def merge(self, a: int, b: int) -> int:
        """Join segments ``a`` and ``b``; returns the id kept (``a``)."""
        a, b = int(a), int(b)
        lut = self.lookup_table()
        if a == b or a == 0 or b == 0 or not (lut == a).any() or not (lut == b).any():
            raise ValueError(f"cannot merge segments {a} and {b}")
        self._check_open(a, b)
        fa, fb = set(np.flatnonzero(lut == a).tolist()), set(np.flatnonzero(lut == b).tolist())
        _, cannot = self._constraints()
        released = [list(p) for p in cannot if (p[0] in fa and p[1] in fb) or (p[0] in fb and p[1] in fa)]
        self._push({"op": "merge", "keep": a, "other": b, "threshold": self.threshold, "released": released})
        return a

    def split(self, segment_id: int, seeds: Sequence[Sequence[int]]) -> list[int]:
        """Cut ``segment_id`` between two or more (z, y, x) seeds; returns the ids of the pieces."""
        if len(seeds) < 2:
            raise ValueError("split needs two or more seeds")
        self._check_open(segment_id)
        lut = self.lookup_table()
        seeds = [tuple(int(c) for c in s) for s in seeds]
        if any(len(s) != self.fragments.ndim or not all(0 <= c < n for c, n in zip(s, self.fragments.shape))
               for s in seeds):
            raise ValueError(f"every seed must be a (z, y, x) voxel inside the volume {self.fragments.shape}")
        if len(set(seeds)) < len(seeds):
            raise ValueError("two seeds are the same voxel")
        frags = [int(self.fragments[s]) for s in seeds]
        if any(lut[f] != segment_id for f in frags):
            raise ValueError(f"every seed must lie inside segment {segment_id}")
        refined = self._refine(seeds, frags)
        frags = [int(self.fragments[s]) for s in seeds]
        lut = self.lookup_table()
        inside = set(self._segment_fragments(segment_id).tolist())
        must, _ = self._constraints()
        released = [list(m) for m in must if m[0] in inside and m[1] in inside]
        cannot = [[min(x, y), max(x, y)] for i, x in enumerate(frags) for y in frags[i + 1:]]
        self._push({"op": "split", "segment": int(segment_id), "seeds": [[int(c) for c in s] for s in seeds],
                    "cannot": cannot, "released": released, "threshold": self.threshold,
                    **({"refined": refined} if refined else {})})
        new = self.lookup_table()
        return sorted({int(new[f]) for f in frags})

    def set_segment_threshold(self, segment_id: int, t: float) -> list[int]:
        """Move down the merge hierarchy inside ``segment_id`` only: merges between its own
        fragments above ``t`` (at most the global threshold) are undone; every other segment keeps
        its voxels and id. Moved again right after, the new threshold replaces the last one for the
        whole segment (one undo step). Returns the ids of the pieces (the one holding fragment
        ``segment_id`` keeps that id)."""
        segment_id = int(segment_id)
        last = self.edits[-1] if self.edits else None
        again = last is not None and last["op"] == "segment_threshold" and last["segment"] == segment_id
        frags = np.asarray(last["fragments"]) if again else self._segment_fragments(segment_id)
        if segment_id == 0 or not len(frags):
            raise ValueError(f"no segment {segment_id} to set a threshold for")
        self._check_open(segment_id)
        self.agg.n_merges(t)  # validates t
        if float(t) > self.threshold + 1e-9:
            raise ValueError(f"a segment's own threshold goes down the hierarchy only: {t} is above the "
                             f"global threshold {self.threshold}")
        if again:  # the slider moved again: this edit replaces that one
            self.edits.pop()
        self._push({"op": "segment_threshold", "segment": segment_id, "fragments": [int(f) for f in frags],
                    "local": float(t), "threshold": self.threshold})
        new = self.lookup_table()
        return sorted({int(new[f]) for f in frags} - {0})

    def locked(self) -> set[int]:
        """Ids of the segments marked as done."""
        lut = self.lookup_table()
        return {int(lut[int(e["fragments"][0])]) for e in self.edits if e["op"] == "lock"}

    def lock(self, segment_id: int) -> None:
        """Mark ``segment_id`` as done: no edit or threshold changes it again (undo releases it)."""
        frags = self._segment_fragments(int(segment_id))
        if segment_id == 0 or not len(frags):
            raise ValueError(f"no segment {segment_id} to mark as done")
        if int(segment_id) in self.locked():
            raise ValueError(f"segment {segment_id} is already done")
        self._push({"op": "lock", "segment": int(segment_id), "fragments": [int(f) for f in frags],
                    "threshold": self.threshold})

    def _check_open(self, *ids: int) -> None:
        done = self.locked() & {int(i) for i in ids}
        if done:
            raise ValueError(f"segment {min(done)} is marked as done; undo that to edit it")

    def _refine(self, seeds: list[tuple[int, ...]], frags: list[int]) -> list[list]:
        """Cut each fragment holding several seeds into one piece per seed; [[fragment, [new ids]]]."""
        from skimage.segmentation import watershed

        out: list[list] = []
        for f in sorted({f for f in frags if frags.count(f) > 1}):
            mine = [s for s, g in zip(seeds, frags) if g == f]
            box = ndimage.find_objects((self.fragments == f).astype(np.uint8))[0]
            mask = self.fragments[box] == f
            markers = np.zeros(mask.shape, np.int32)
            for i, s in enumerate(mine, 1):
                markers[tuple(c - b.start for c, b in zip(s, box))] = i
            dist = ndimage.distance_transform_edt(mask)
            pieces = watershed(-dist, markers, mask=mask)
            if self.fragments is self.agg.fragments:
                self.fragments = self.fragments.copy()
            base = len(self._sizes)
            new = list(range(base, base + len(mine) - 1))
            view = self.fragments[box]
            sizes = [int(np.count_nonzero(pieces == i)) for i in range(2, len(mine) + 1)]
            for i, p in enumerate(new, 2):
                view[pieces == i] = p
                self._pieces[p] = f
            self._sizes = np.concatenate([self._sizes, np.asarray(sizes, self._sizes.dtype)])
            self._sizes[f] -= sum(sizes)
            out.append([int(f), new])
        if out:
            self._cache = None
        return out

    def undo(self) -> None:
        if self.edits:
            self._redo.append(self.edits.pop())
            self._cache = None

    def redo(self) -> None:
        if self._redo:
            self.edits.append(self._redo.pop())
            self._cache = None

    def save(self, path: str | Path) -> None:
        """Write the edits and the threshold as JSON (atomically)."""
        doc = {"threshold": self.threshold, "edits": self.edits}
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, path: str | Path, agglomeration: Agglomeration) -> "Proofreader":
        doc: Any = json.loads(Path(path).read_text())
        pr = cls(agglomeration, doc.get("threshold"))
        edits = [dict(e) for e in doc.get("edits", [])]
        for e in edits:  # cut the fragments again, in order, so the piece ids match
            if e.get("refined"):
                seeds = [tuple(int(c) for c in s) for s in e["seeds"]]
                got = pr._refine(seeds, [int(pr.fragments[s]) for s in seeds])
                if got != [[int(f), [int(p) for p in new]] for f, new in e["refined"]]:
                    raise ValueError(f"{path}: the edits do not match these fragments")
        pr.edits = edits
        pr._cache = None
        return pr
