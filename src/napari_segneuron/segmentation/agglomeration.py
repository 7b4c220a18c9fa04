"""Foreground-restricted waterz agglomeration with an instant threshold.

``agglomerate`` runs waterz once, up to ``max_threshold``, and records its merge history.
``Agglomeration.labels(t)`` then gives the segmentation waterz itself would give at ``t``
without calling waterz again (see ``history`` for how the replay works).

Foreground restriction (as SegNeuron does it): every affinity channel is replaced by the
voxel-wise minimum of affinity and foreground probability; voxels with foreground below
``fg_threshold`` are background (label 0).  Two ways to make them background
(``background_mode``): "mask" lets waterz see every voxel and clears background voxels
from the result; "cut" (default) does the same after zeroing edges between two background
voxels, so background is never agglomerated with itself; "exclude" sets their edges to 0 so waterz's watershed leaves them
unlabelled (given fragments are cleared there) and waterz, which never merges label 0,
agglomerates the foreground only.  See the notes at DEFAULT_THRESHOLD for how they
compared on fib25_b predictions; "exclude" scored best on the SNEMI3D map.

Small segments: after the threshold is applied, segments with fewer than ``min_size``
voxels are merged (default, ``small="merge"``) into the touching segment they share the
most voxel faces with, repeatedly; small pieces that touch no other segment, and all small
segments with ``small="remove"``, become background 0.  (The metrics' default
``background="fill"`` scores background voxels as part of the nearest segment.)

waterz runs in this process by default (its output silenced); ``worker=True`` (the napari
dock) runs it in a spawned process that a ``CancelToken`` can stop (see ``worker``).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..cancel import CancelToken, check
from ..io import InputError
from .defaults import (
    BACKGROUND_MODES_AGG, DEFAULT_BACKGROUND_MODE, DEFAULT_FG_THRESHOLD, DEFAULT_MAX_THRESHOLD, DEFAULT_MIN_SIZE,
    DEFAULT_MEMBRANE_FILL, DEFAULT_SCORING, DEFAULT_SMALL, PLAIN_WATERZ_SCORING, DEFAULT_THRESHOLD, SCORING_FUNCTIONS, SMALL_SEGMENTS,
    ProgressFn,
    _check_membrane_fill, _check_threshold, check_scoring,
)
from .fragments import DEFAULT_FRAGMENTS, FRAGMENT_METHODS, _renumber, distance_fragments
from .memory import EDGES_PER_FRAGMENT, WATERZ_SEED_VOXELS_PER_FRAGMENT, available_bytes, estimate_bytes, gib
from .inputs import _as_affinities, _check_unit_range, restrict_to_foreground
from .membranes import fill_membranes
from .small import contact_table, merge_small
from .worker import _TOTAL_STEPS, _restore_stdout, _run_in_worker, _silence_stdout, _waterz_job



#: volumes of at least this many voxels are relabelled by torch's ``index_select`` (below it,
#: numpy's ``take``: the same result, and torch's start-up cost would dominate)
FAST_GATHER_VOXELS = 1 << 22
#: voxels per slab when labels are gathered from fragments that are not in memory (zarr, dask)
GATHER_SLAB_VOXELS = 1 << 24


def _gather(lut: np.ndarray, frag: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``lut[frag]`` as fast as this machine allows.

    numpy's ``take`` converts uint32 indices to intp first (about 5 ns per voxel);
    torch's ``index_select`` reads int32 indices directly and uses all cores (about 1 ns
    per voxel on real fragments), so it is used from ``FAST_GATHER_VOXELS`` voxels on, when
    torch is importable and the ids fit. ``frag`` may be any array-like (a zarr or dask array
    is read into memory first; ``Agglomeration.labels`` reads those slab by slab instead).
    """
    if not isinstance(frag, np.ndarray):
        frag = np.asarray(frag)
    if out is not None:
        if out.shape != frag.shape or out.dtype != lut.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {lut.dtype} array of shape {frag.shape}")
    if (frag.size >= FAST_GATHER_VOXELS and frag.dtype == np.uint32 and lut.dtype == np.uint32
            and len(lut) < 2**31 and frag.flags.c_contiguous):
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            torch = None
        if torch is not None:
            if out is None:
                out = np.empty(frag.shape, lut.dtype)
            index = torch.from_numpy(frag.reshape(-1).view(np.int32))
            table = torch.from_numpy(lut.view(np.int32))
            torch.index_select(table, 0, index, out=torch.from_numpy(out.reshape(-1).view(np.int32)))
            return out
    return np.take(lut, frag, out=out)


def _gather_lazy(lut: np.ndarray, frag: Any, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``_gather`` over fragments held on disk or lazily (zarr, dask): z slabs of about
    ``GATHER_SLAB_VOXELS`` voxels (whole chunks along z when the array has chunks), each read
    and relabelled into its part of ``out``, so only ``out`` and one slab are in memory."""
    shape = tuple(int(s) for s in frag.shape)
    if out is None:
        out = np.empty(shape, lut.dtype)
    elif out.shape != shape or out.dtype != lut.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {lut.dtype} array of shape {shape}")
    if len(shape) == 0 or shape[0] == 0:
        return out
    plane = max(1, int(np.prod(shape[1:])))
    step = max(1, GATHER_SLAB_VOXELS // plane)
    chunks = getattr(frag, "chunks", None)
    cz = chunks[0] if chunks else None
    if isinstance(cz, tuple):  # dask: chunk sizes per block
        cz = cz[0] if cz else None
    if cz:
        step = max(int(cz), step // int(cz) * int(cz))
    for z0 in range(0, shape[0], step):
        z1 = min(shape[0], z0 + step)
        _gather(lut, np.asarray(frag[z0:z1]), out[z0:z1])
    return out


@dataclass
class Agglomeration:
    """One waterz agglomeration up to ``max_threshold``; ``labels(t)`` replays it to ``t``.

    ``fragments`` (Z,Y,X, uint32, 0 = background) are waterz's initial regions.
    """

    fragments: np.ndarray
    max_threshold: float
    min_size: int
    merge_scores: np.ndarray  # (M,) float32, waterz's score of each merge, in order
    merges: np.ndarray  # (M, 2) the (kept, absorbed) fragment-tree ids of each merge
    _order: np.ndarray = field(repr=False)
    _join: np.ndarray = field(repr=False)
    _sizes: np.ndarray = field(repr=False)
    _stop: np.ndarray = field(repr=False, default=None)  # running max of merge_scores
    _size_in_order: np.ndarray = field(repr=False, default=None)
    _has_empty: bool = field(repr=False, default=False)
    _contacts: Optional[tuple] = field(repr=False, default=None)
    small: str = "remove"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = np.maximum.accumulate(self.merge_scores) if len(self.merge_scores) else self.merge_scores
        self._size_in_order = self._sizes[self._order]
        # fragments emptied by the foreground mask ("mask" mode): their segments are dropped
        self._has_empty = bool((self._size_in_order == 0).any())
        self.info.setdefault("n_fragments", int(len(self._order)))
        self.info.setdefault("n_merges", int(len(self.merge_scores)))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.fragments.shape

    @property
    def n_fragments(self) -> int:
        return int(len(self._order))

    def n_merges(self, threshold: float) -> int:
        """How many recorded merges waterz performs at ``threshold``."""
        t = self._threshold(threshold)
        return int(np.searchsorted(self._stop, np.float32(t), side="left"))

    def _threshold(self, threshold: float) -> float:
        t = _check_threshold(threshold, "threshold")
        if t > self.max_threshold + 1e-7:
            raise InputError(
                f"threshold {t} is above {self.max_threshold}, the highest threshold this agglomeration was run to"
            )
        return t

    def lookup_table(
        self, threshold: float, min_size: Optional[int] = None, small: Optional[str] = None
    ) -> np.ndarray:
        """Fragment id -> label at ``threshold`` (0 = background), as uint32.

        A segment's label is the id of its root fragment: the fragment every merge of the
        segment kept (waterz's own label for it), so ids are a function of the merge
        hierarchy alone. Raising the threshold, a merge keeps the kept side's id and every
        other segment keeps its id; lowering it, the split pieces get their ids back, whatever
        the order of the calls. Small segments merged into a neighbour (``small="merge"``) take
        the id of the largest segment of their group (ties: the lowest id), so a segment
        absorbing small pieces keeps its id. Labels are therefore not consecutive: ``n_segments``
        counts them."""
        return self._lookup(threshold, min_size, small)[0]

    def _lookup(
        self, threshold: float, min_size: Optional[int] = None, small: Optional[str] = None
    ) -> tuple[np.ndarray, int]:
        """``lookup_table`` and the number of segments (non-zero labels) in it."""
        k = self.n_merges(threshold)
        min_size = self.min_size if min_size is None else int(min_size)
        small = self.small if small is None else small
        if small not in SMALL_SEGMENTS:
            raise InputError(f"small must be one of {SMALL_SEGMENTS}, not {small!r}")
        n_nodes = len(self._sizes)
        lut = np.zeros(n_nodes, np.uint32)
        n_pos = len(self._order)
        if n_pos == 0:
            return lut, 0
        starts = self._join >= k  # a position starts a segment unless merged before k
        starts[0] = True
        first = np.flatnonzero(starts)
        lengths = np.diff(first, append=n_pos)
        # the fragment at the head of a run was not absorbed by any merge before k: the root
        roots = self._order[first].astype(np.uint32)
        n = len(roots)
        if min_size > 1 or self._has_empty:
            sizes = np.add.reduceat(self._size_in_order, first)
            if small == "merge" and min_size > 1 and (sizes < min_size).any():
                run_lut = np.zeros(n_nodes, np.uint32)  # merge_small works on segment numbers 1..n
                run_lut[self._order] = np.repeat(np.arange(1, n + 1, dtype=np.uint32), lengths)
                group = self._merge_small(run_lut, np.concatenate([[0], sizes]), min_size)[1:]
                del run_lut
                # each group is labelled by its largest segment (ties: the lowest id)
                o = np.lexsort((roots, -sizes, group))
                g = group[o]
                head = np.ones(len(o), bool)
                head[1:] = g[1:] != g[:-1]
                rep = np.zeros(int(g[-1]) + 1, np.uint32)
                rep[g[head]] = roots[o[head]]
                rep[0] = 0  # pieces touching nothing: background
                roots = rep[group]
                n = int(np.count_nonzero(g[head]))
            else:
                keep = sizes >= max(min_size, 1)
                roots = np.where(keep, roots, np.uint32(0))
                n = int(np.count_nonzero(keep))
        lut[self._order] = np.repeat(roots, lengths)
        return lut, n

    def _contact_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Touching fragment pairs and their contact areas (``small.contact_table``), cached."""
        if self._contacts is None:
            self._contacts = contact_table(self.fragments)
        return self._contacts

    def _merge_small(self, lut: np.ndarray, sizes: np.ndarray, min_size: int) -> np.ndarray:
        """Segment id -> new id with segments below ``min_size`` merged (``small.merge_small``)."""
        return merge_small(lut, sizes, min_size, self._contact_table())

    def labels(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        region: Optional[tuple[slice, ...]] = None,
        min_size: Optional[int] = None,
        small: Optional[str] = None,
        out: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        """Label volume (uint32, 0 = background) of waterz's result at ``threshold``.

        ``region``: a tuple of slices to compute only part of the volume (e.g. a
        ground-truth crop); ``out``: an array to write into (reused between calls);
        ``min_size``/``small`` override the agglomeration's settings."""
        lut = self.lookup_table(threshold, min_size, small)
        frag = self.fragments if region is None else self.fragments[region]
        if not isinstance(frag, np.ndarray):  # blockwise: a zarr (or dask) array on disk
            return _gather_lazy(lut, frag, out)
        return _gather(lut, frag, out)

    def n_segments(self, threshold: float, min_size: Optional[int] = None, small: Optional[str] = None) -> int:
        """Number of segments (distinct non-zero labels) at ``threshold``."""
        return self._lookup(threshold, min_size, small)[1]

    def on_grid(self, shape: Sequence[int], min_size: Optional[int] = None) -> "Agglomeration":
        """The same agglomeration carried to another grid of the same extent (e.g. the input grid
        when it was run on the model's grid): fragments resized by nearest neighbour, so every
        ``labels(t)`` equals the model-grid labels resized, at the cost of one lookup per voxel.
        ``min_size`` is in voxels of the new grid (default: the current one scaled by the voxel volume)."""
        from ..resample import resize_labels

        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"on_grid needs a 3-D shape, not {shape}")
        if shape == self.shape and min_size is None:
            return self
        frag = resize_labels(self.fragments, shape)
        sizes = np.bincount(frag.reshape(-1), minlength=len(self._sizes)).astype(np.int64)
        # a min_size counts voxels of the grid the labels live on: rescale it with the voxel volume
        ratio = float(np.prod(shape)) / float(np.prod(self.shape))
        min_size = int(round(self.min_size * ratio)) if min_size is None else int(min_size)
        return dataclasses.replace(
            self, fragments=frag, _sizes=sizes, _contacts=None, min_size=min_size,
            info=dict(self.info, grid_of_agglomeration=list(self.shape)),
        )

    def change_points(self) -> np.ndarray:
        """The thresholds (float32, ascending) just above which the segmentation changes:
        ``labels(t)`` is constant for ``t`` between two consecutive values."""
        return np.unique(self._stop)


def agglomerate(
    affinities: Any,
    foreground: Any = None,
    *,
    fg_threshold: float = DEFAULT_FG_THRESHOLD,
    fragments: Any = None,
    fragment_options: Optional[dict] = None,
    min_size: int = DEFAULT_MIN_SIZE,
    small: str = DEFAULT_SMALL,
    max_threshold: float = DEFAULT_MAX_THRESHOLD,
    scoring: Optional[str] = None,
    background_mode: str = DEFAULT_BACKGROUND_MODE,
    membrane_fill: int = DEFAULT_MEMBRANE_FILL,
    discretize_queue: int = 0,
    aff_threshold_low: float = 0.0001,
    aff_threshold_high: float = 0.9999,
    worker: bool = False,
    output_shape: Optional[Sequence[int]] = None,
    progress: ProgressFn = None,
    cancel: Optional[CancelToken] = None,
) -> Agglomeration:
    """Agglomerate affinities with waterz once, up to ``max_threshold``.

    affinities: (3,Z,Y,X) probabilities, channels z, y, x (edge to the lower neighbour).
    foreground: (Z,Y,X) probabilities or None (plain waterz).  With a foreground each
      channel is limited to it (voxel-wise minimum) and voxels below ``fg_threshold``
      become background 0.
    background_mode: "mask" lets waterz agglomerate every voxel on the min-restricted
      affinities and sets background voxels to 0 afterwards (SegNeuron's post-processing
      followed by a foreground mask); "cut" (default) does the same but first sets edges
      between two background voxels to 0 (background is not agglomerated with itself: far
      fewer fragments, a much cheaper run, a wider range of good thresholds); "exclude" takes background voxels out of waterz's graph
      (every edge touching them is 0, the watershed leaves them unlabelled, regions only
      touch through foreground), which shifts the useful thresholds down.
    membrane_fill: after waterz, background voxels within this many voxels of a fragment are
      given to the fragment on their side of the membrane (``membranes.fill_membranes``: a
      watershed of 1 - foreground), so touching neurites leave no gap; wider background stays 0;
      0 keeps every background voxel 0 (the behaviour before 2026-12-02).
    fragments: the regions waterz starts from.  None: ``DEFAULT_FRAGMENTS``; "distance":
      3-D watershed of the distance to the nearest boundary, seeds at its maxima
      (``fragments.distance_fragments``, options in ``fragment_options``, e.g.
      ``per_slice=True`` for anisotropic stacks); "waterz": waterz's own watershed (tiny fragments on real
      predictions: slow, memory-hungry); or a (Z,Y,X) array of non-negative integer
      labels (0 = background).  ``labels(t)`` replays waterz exactly for any of them.
      Before waterz starts, its memory is estimated from the fragments' contacts and the
      scoring; a run that would not fit raises ``InputError`` with what to change.
    min_size, small: segments smaller than ``min_size`` voxels are, by ``labels``, either
      merged into the touching segment they share the most voxel faces with ("merge",
      repeated while pieces stay small; pieces touching nothing become 0) or removed
      (become background 0, "remove").
    scoring: "mean", "median" (see ``SCORING_FUNCTIONS``) or a waterz C++ scoring type.
      ``labels(t)`` equals a direct waterz run at every ``t`` with the exact priority
      queue (``discretize_queue=0``); with a bin queue it is exact at bin edges only.
      None (default): ``PLAIN_WATERZ_SCORING`` ("mean", waterz's own default) with
      ``fragments="waterz"``, so that call is plain waterz and ``labels(t)`` equals
      ``next(waterz.agglomerate(affinities, [t]))``; ``DEFAULT_SCORING`` ("median",
      SegNeuron's) with every other fragments option. ``agg.info["scoring_function"]`` names
      the C++ type used (pass it as waterz's ``scoring_function`` to compare).
      Given the same affinities and fragments, ``labels(t)`` is waterz's result voxel for voxel,
      ids included (a segment's id is its root fragment's id; see ``lookup_table``).
    worker: False (default) runs waterz here, with its output silenced, so the call works
      in any script; True runs it in a spawned process (what the napari dock does:
      cancellable, keeps a GUI responsive, reports waterz's stages as progress).
    output_shape: the labels' grid when the affinities are on another grid of the same
      extent (the model's, after resampling): waterz runs on the affinities' grid and the
      result is carried over (``Agglomeration.on_grid``); ``min_size`` counts voxels of
      ``output_shape``.
    """
    check(cancel)
    aff = _as_affinities(affinities)
    shape = tuple(int(s) for s in aff.shape[1:])
    clip_aff = _check_unit_range(aff, "affinities")
    fg_threshold = _check_threshold(fg_threshold, "fg_threshold")
    max_threshold = _check_threshold(max_threshold, "max_threshold")
    if int(min_size) < 0:
        raise InputError(f"min_size must be >= 0, not {min_size}")
    if small not in SMALL_SEGMENTS:
        raise InputError(f"small must be one of {SMALL_SEGMENTS}, not {small!r}")
    if background_mode not in BACKGROUND_MODES_AGG:
        raise InputError(f"background_mode must be one of {BACKGROUND_MODES_AGG}, not {background_mode!r}")
    membrane_fill = _check_membrane_fill(membrane_fill)
    if scoring is None:
        plain = isinstance(fragments, str) and fragments == "waterz"
        scoring = PLAIN_WATERZ_SCORING if plain else DEFAULT_SCORING
    check_scoring(scoring)
    fg = None
    if foreground is not None:
        fg = np.asarray(foreground)
        if fg.ndim == 4 and fg.shape[0] == 1:
            fg = fg[0]
        if fg.shape != shape:
            raise InputError(f"The foreground {fg.shape} must have the shape of the affinities' volume {shape}")
        if fg.dtype == np.uint8:
            fg = fg.astype(np.float32) / np.float32(255)
        if _check_unit_range(fg, "foreground probabilities"):
            fg = np.clip(fg, 0.0, 1.0)
        if not (fg >= np.float32(fg_threshold)).any():
            raise InputError(
                f"Every voxel is background: no foreground probability reaches fg_threshold={fg_threshold} "
                f"(highest is {float(fg.max()):.3f}); lower fg_threshold"
            )
    frag_in = None
    method = DEFAULT_FRAGMENTS if fragments is None else None
    if isinstance(fragments, str):
        if fragments not in FRAGMENT_METHODS:
            raise InputError(f"fragments must be an array or one of {FRAGMENT_METHODS}, not {fragments!r}")
        method = fragments
    elif fragments is not None:
        frag_in = np.asarray(fragments)
        if frag_in.shape != shape:
            raise InputError(f"The fragments {frag_in.shape} must have the shape of the affinities' volume {shape}")
        if frag_in.dtype.kind not in "biu" or (frag_in.dtype.kind == "i" and frag_in.min() < 0):
            raise InputError("Fragments must be non-negative integer labels")
        frag_in = _renumber(frag_in)
    fragment_options = dict(fragment_options or {})

    if progress is not None:
        progress(0, _TOTAL_STEPS, "preparing affinities")

    exclude = background_mode == "exclude"
    contacts: list = []  # the fragments' contact table, when they are made here (reused for small segments)

    def write_affinities(out: np.ndarray) -> Optional[np.ndarray]:
        if fg is None:
            np.copyto(out, aff, casting="same_kind")
            bg = None
        else:
            bg = restrict_to_foreground(aff, fg, fg_threshold, out=out, exclude_background=exclude,
                                        cut_background=background_mode == "cut")
        if clip_aff:  # rounding noise of blended tiles, e.g. 1.0000001
            np.clip(out, 0.0, 1.0, out=out)
        return bg if exclude else None

    def prepare(out: np.ndarray) -> Optional[np.ndarray]:
        """Write the affinities waterz sees into ``out``; return the fragments it starts from
        (None: waterz's own watershed), after checking that the run fits in memory."""
        bg = write_affinities(out)
        nvox = int(np.prod(shape))
        if method == "waterz":
            need = estimate_bytes(nvox, nvox / WATERZ_SEED_VOXELS_PER_FRAGMENT * EDGES_PER_FRAGMENT, scoring)
            if need > available_bytes():
                warnings.warn(
                    f"waterz's own fragments on {nvox / 1e6:.1f} Mvoxel may need about {gib(need)} with {scoring} "
                    f"scoring, more than the {gib(available_bytes())} available; fragments='distance' needs far "
                    "less", ResourceWarning, stacklevel=3,
                )
            return None
        if method is not None:
            check(cancel)
            if progress is not None:
                progress(0, _TOTAL_STEPS, "computing fragments")
            # "exclude": fragments cover the foreground only; "cut"/"mask": every voxel, as waterz's
            # own watershed does, so segments can still merge across a thin false-background gap
            # (background is cleared afterwards; same VI on fib25_b: 0.457 vs 0.456 at 0.48)
            if float(out.max()) < aff_threshold_low:
                raise InputError("No fragments: every affinity is below aff_threshold_low (all boundary)")
            mask = fg >= np.float32(fg_threshold) if fg is not None and exclude else None
            given = distance_fragments(out, mask, **fragment_options)
            contacts.append(contact_table(given))
            check(cancel)
        else:
            given = frag_in.copy()
            if bg is not None:
                given[bg] = 0
            contacts.append(contact_table(given))
        n_edges = len(contacts[-1][0])
        need, room = estimate_bytes(nvox, n_edges, scoring), available_bytes()
        if need > room:
            cheaper = estimate_bytes(nvox, n_edges, "mean")
            hint = f"scoring='mean' (about {gib(cheaper)}), " if scoring != "mean" and cheaper < room else ""
            raise InputError(
                f"Agglomerating {nvox / 1e6:.1f} Mvoxel with {int(given.max())} fragments ({n_edges} touching pairs) "
                f"and {scoring} scoring needs about {gib(need)}, but only {gib(room)} of memory are available; "
                f"use {hint}a smaller region, or larger fragments (fragment_options min_seed_distance)"
            )
        if bg is not None:
            contacts.clear()  # the foreground mask may still change the fragments afterwards
        return given

    opts = dict(
        scoring=scoring, queue=int(discretize_queue), max_threshold=max_threshold,
        low=float(aff_threshold_low), high=float(aff_threshold_high),
    )
    t0 = time.perf_counter()
    if worker:
        frags, result = _run_in_worker(prepare, shape, opts, progress, cancel)
    else:
        prepared = np.empty((3,) + shape, np.float32)
        given = prepare(prepared)
        if progress is not None:
            progress(1, _TOTAL_STEPS, "waterz: agglomerating")
        frag_out = np.empty(shape, np.uint32)
        saved = _silence_stdout(None)
        try:
            result = _waterz_job(prepared, given, frag_out, scoring, opts["queue"], max_threshold,
                                 opts["low"], opts["high"])
        finally:
            _restore_stdout(saved)
        del prepared, given
        frags = frag_out
    check(cancel)
    filled = 0
    if fg is not None:
        bg = fg < np.float32(fg_threshold)
        if not exclude and frags[bg].any():
            # "cut"/"mask": waterz saw every voxel; background is cut out of the fragments afterwards
            frags[bg] = 0
            contacts.clear()
        if membrane_fill:
            check(cancel)
            if progress is not None:
                progress(_TOTAL_STEPS - 1, _TOTAL_STEPS, "giving membranes to neurites")
            filled = fill_membranes(frags, fg, bg, membrane_fill)
            if filled:
                contacts.clear()
        del bg
        if not exclude or filled:
            result["sizes"] = np.bincount(frags.reshape(-1), minlength=len(result["sizes"])).astype(np.int64)
    if len(result["order"]) == 0:
        raise InputError(
            "waterz found no fragments: every affinity is below aff_threshold_low or every voxel is background"
        )
    agg = Agglomeration(
        fragments=frags,
        max_threshold=max_threshold,
        min_size=int(min_size),
        small=small,
        merge_scores=result["scores"],
        merges=result["merges"],
        _order=result["order"],
        _join=result["join"],
        _sizes=result["sizes"],
        _contacts=contacts[0] if contacts else None,
        info=dict(
            seconds=time.perf_counter() - t0, scoring=scoring, scoring_function=SCORING_FUNCTIONS.get(scoring, scoring),
            fg_threshold=fg_threshold if fg is not None else None,
            restricted=fg is not None, discretize_queue=int(discretize_queue), background_mode=background_mode,
            fragments=method or "given", membrane_fill=membrane_fill if fg is not None else 0,
            membrane_voxels_filled=int(filled),
        ),
    )
    if progress is not None:
        progress(_TOTAL_STEPS, _TOTAL_STEPS, "agglomeration done")
    if output_shape is not None:
        agg = agg.on_grid(output_shape, min_size=int(min_size))
    return agg


