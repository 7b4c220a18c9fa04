"""waterz's merge history turned into the tables ``Agglomeration.labels`` replays.

- waterz pops region-graph edges cheapest first and stops at the first edge whose score
  is ``>= t`` (``t`` as float32).  Merge ``i`` of the recorded history is therefore part
  of the result at ``t`` exactly when the running maximum of the merge scores up to ``i``
  is ``< t``; that gives the number ``k`` of merges to replay.
- Replaying is not done merge by merge.  While the history is read once, fragments are
  chained into one list so that every segment, at every ``k``, is a contiguous run of that
  list; each link remembers the merge that created it.  At ``k`` the segments are the runs
  between links made by merges ``>= k``: one cumulative sum over the fragments gives a
  fragment -> label table, and one ``take`` over the fragment volume gives the labels.
"""
from __future__ import annotations

import numpy as np


def _chain_history(n_nodes: int, a: np.ndarray, b: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """List order of the fragments and, per list position, the merge that linked it to the
    previous position (``len(a)`` for positions that start a final segment)."""
    m = len(a)
    nxt = [-1] * n_nodes
    tail = list(range(n_nodes))
    joined = [m] * n_nodes
    is_child = [False] * n_nodes
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        nxt[tail[x]] = y
        tail[x] = tail[y]
        joined[y] = i
        is_child[y] = True
    order: list[int] = []
    for r in np.flatnonzero(present).tolist():
        if is_child[r]:
            continue
        while r != -1:
            order.append(r)
            r = nxt[r]
    order_arr = np.asarray(order, dtype=np.int64)
    join_arr = np.asarray(joined, dtype=np.int64)[order_arr]
    return order_arr, join_arr


