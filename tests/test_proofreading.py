"""Proofreader on the agglomeration of noisy GT-derived affinities of fib25_b."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from napari_segneuron.proofreading import Proofreader
from napari_segneuron.segmentation import agglomerate

DATA = "/work/shared/data/fib25_b_labels.tif"


def _noisy_affinities(lab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ground-truth affinities of ``lab``, blurred, with Gaussian noise drawn from ``rng``."""
    aff = np.zeros((3,) + lab.shape, np.float32)
    for d in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[d], lo[d] = slice(1, None), slice(None, -1)
        aff[d][tuple(hi)] = (lab[tuple(hi)] == lab[tuple(lo)]) & (lab[tuple(hi)] != 0)
    aff = np.clip(ndimage.gaussian_filter(aff, (0, 1, 1, 1)) + rng.normal(0, 0.2, aff.shape), 0, 1)
    return aff.astype(np.float32)


@pytest.fixture(scope="module")
def agg_gt():
    lab = tifffile.imread(DATA)[:24, :64, :96]
    aff = _noisy_affinities(lab, np.random.default_rng(2))
    agg = agglomerate(aff, None, fragments="distance", min_size=0, membrane_fill=0)
    return agg, lab


def _two_touching(seg: np.ndarray) -> tuple[int, int]:
    a = seg[:, :, :-1].ravel()
    b = seg[:, :, 1:].ravel()
    m = (a != b) & (a != 0) & (b != 0)
    return int(a[m][0]), int(b[m][0])


def _splittable(pr: Proofreader) -> tuple[int, list[tuple[int, int, int]]]:
    """A segment of more than one fragment, and one voxel in each of two of its fragments."""
    lut = pr.lookup_table()
    frag = pr.agg.fragments
    ids, counts = np.unique(lut[lut > 0], return_counts=True)
    seg = int(ids[np.argmax(counts)])
    fs = np.flatnonzero(lut == seg)
    seeds = [tuple(int(c) for c in np.argwhere(frag == f)[0]) for f in (fs[0], fs[-1])]
    return seg, seeds


def test_merge_joins_exactly_two_and_keeps_other_ids(agg_gt):
    agg, _ = agg_gt
    pr = Proofreader(agg, 0.3)
    before = pr.labels()
    assert np.array_equal(before, agg.labels(0.3, min_size=0))
    a, b = _two_touching(before)
    assert pr.merge(a, b) == a
    after = pr.labels()
    assert np.all(after[(before == a) | (before == b)] == a)
    rest = (before != a) & (before != b)
    assert np.array_equal(after[rest], before[rest])
    assert b not in np.unique(after)


def test_split_separates_seeds_and_survives_threshold(agg_gt):
    agg, _ = agg_gt
    pr = Proofreader(agg, 0.5)
    seg, seeds = _splittable(pr)
    before = pr.labels()
    pieces = pr.split(seg, seeds)
    after = pr.labels()
    assert len(pieces) == 2 and seg in pieces
    assert after[seeds[0]] != after[seeds[1]]
    outside = before != seg
    assert np.array_equal(after[outside], before[outside])
    for t in (0.9, 0.1, 0.7, 0.5):
        pr.set_threshold(t)
        lab = pr.labels()
        assert lab[seeds[0]] != lab[seeds[1]]
    a, b = _two_touching(pr.labels(0.2))
    pr.set_threshold(0.2)
    pr.merge(a, b)
    for t in (0.05, 0.2, 0.6):
        lab = pr.labels(t)
        fa, fb = agg.fragments == a, agg.fragments == b
        assert len(np.unique(lab[fa | fb])) == 1, t


def test_undo_redo_and_save_load(agg_gt, tmp_path):
    agg, _ = agg_gt
    pr = Proofreader(agg, 0.4)
    base = pr.labels()
    a, b = _two_touching(base)
    pr.merge(a, b)
    seg, seeds = _splittable(pr)
    pr.split(seg, seeds)
    edited = pr.labels()
    pr.undo()
    pr.undo()
    assert np.array_equal(pr.labels(), base)
    pr.redo()
    pr.redo()
    assert np.array_equal(pr.labels(), edited)
    path = tmp_path / "edits.json"
    pr.save(path)
    json.loads(path.read_text())
    again = Proofreader.load(path, agg)
    assert again.edits == pr.edits and again.threshold == pr.threshold
    assert np.array_equal(again.labels(), edited)
    with pytest.raises(ValueError):
        pr.split(seg, seeds[:1])


@pytest.mark.parametrize("small", ["merge", "remove"])
def test_no_edits_is_the_agglomeration_with_small_segments(agg_gt, small):
    _, lab = agg_gt
    aff, fg = _noisy(lab)
    agg = agglomerate(aff, fg, fragments="distance", min_size=100, small=small)
    pr = Proofreader(agg)
    for t in (0.2, 0.48, 0.8):
        assert np.array_equal(pr.labels(t), agg.labels(t)), t


def _noisy(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    aff = _noisy_affinities(lab, rng)
    fg = np.clip(ndimage.gaussian_filter((lab != 0).astype(np.float32), 1) + rng.normal(0, 0.1, lab.shape), 0, 1)
    return aff, fg.astype(np.float32)


def test_cli_segment_replays_edits(agg_gt, tmp_path):
    from napari_segneuron.cli import main
    from napari_segneuron.io import write_prediction

    _, lab = agg_gt
    aff, fg = _noisy(lab)
    pred = tmp_path / "pred.zarr"
    write_prediction(str(pred), aff, fg)
    plain, edited = tmp_path / "plain.tif", tmp_path / "edited.tif"
    assert main(["segment", str(pred), "-o", str(plain), "--threshold", "0.15"]) == 0
    base = tifffile.imread(plain)
    agg = agglomerate(aff, fg, max_threshold=0.15)
    pr = Proofreader(agg, 0.15)
    assert np.array_equal(pr.labels(), base)
    a, b = _two_touching(base)
    pr.merge(a, b)
    pr.save(tmp_path / "edits.json")
    assert main(["segment", str(pred), "-o", str(edited), "--threshold", "0.15", "--edits", str(tmp_path / "edits.json")]) == 0
    out = tifffile.imread(edited)
    assert np.array_equal(out, pr.labels())
    assert np.all(out[(base == a) | (base == b)] == a)


def test_split_inside_one_fragment_refines_it(agg_gt, tmp_path):
    agg, _ = agg_gt
    pr = Proofreader(agg, 0.3)
    frag = agg.fragments
    ids, counts = np.unique(frag[frag > 0], return_counts=True)
    f = int(ids[np.argmax(counts)])
    vox = np.argwhere(frag == f)
    a, b = vox[0], vox[np.argmax(((vox - vox[0]) ** 2).sum(1))]  # two far-apart voxels of one fragment
    seeds = [tuple(int(c) for c in a), tuple(int(c) for c in b)]
    seg = int(pr.labels()[seeds[0]])
    before = pr.labels()
    pieces = pr.split(seg, seeds)
    after = pr.labels()
    assert len(pieces) == 2 and after[seeds[0]] != after[seeds[1]]
    assert np.array_equal(after[before != seg], before[before != seg])  # nothing outside changes
    assert np.array_equal(agg.fragments, frag)  # the agglomeration itself is untouched
    both = (after == after[seeds[0]]) | (after == after[seeds[1]])
    assert both[frag == f].all()  # the fragment is cut in two, not emptied
    assert pr.labels(0.6)[seeds[0]] != pr.labels(0.6)[seeds[1]]  # survives the threshold
    pr.save(tmp_path / "e.json")
    again = Proofreader.load(tmp_path / "e.json", agg)
    assert np.array_equal(again.labels(), after)
    pr.undo()
    assert np.array_equal(pr.labels(), before)
    pr.redo()
    assert np.array_equal(pr.labels(), after)


def test_done_segment_never_changes(agg_gt, tmp_path):
    agg, _ = agg_gt
    pr = Proofreader(agg, 0.3)
    seg, seeds = _splittable(pr)
    mask = pr.labels() == seg
    pr.lock(seg)
    assert pr.locked() == {seg}
    for t in (0.05, 0.3, 0.9):
        assert np.array_equal(pr.labels(t) == seg, mask)
    a, b = _two_touching(np.where(mask, 0, pr.labels()))
    pr.merge(a, b)
    assert np.array_equal(pr.labels() == seg, mask)
    with pytest.raises(ValueError, match="done"):
        pr.split(seg, seeds)
    pr.save(tmp_path / "e.json")
    again = Proofreader.load(tmp_path / "e.json", agg)
    assert np.array_equal(again.labels(0.9) == seg, mask)
    pr.undo()
    pr.undo()
    assert pr.locked() == set()


def test_segment_threshold_goes_down_inside_one_segment_only(agg_gt, tmp_path):
    agg, _ = agg_gt
    pr = Proofreader(agg, 0.6)
    before = pr.labels()
    ids, counts = np.unique(before[before > 0], return_counts=True)
    low = agg.labels(0.2)
    # the biggest segment that the lower threshold cuts into several pieces
    seg = next(int(i) for i in ids[np.argsort(-counts)] if len(np.unique(low[before == i])) > 1)
    inside = before == seg
    pieces = pr.set_segment_threshold(seg, 0.2)
    after = pr.labels()
    assert seg in pieces and len(pieces) == len(np.unique(low[inside]))
    assert np.array_equal(after[~inside], before[~inside])  # every other segment: same voxels, same id
    # inside, the partition is the one of the lower threshold
    pairs = np.unique(np.stack([after[inside], low[inside]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert pr.edits[-1]["op"] == "segment_threshold"
    with pytest.raises(ValueError, match="down the hierarchy"):
        pr.set_segment_threshold(pieces[0], 0.9)
    pr.save(tmp_path / "e.json")
    assert np.array_equal(Proofreader.load(tmp_path / "e.json", agg).labels(), after)
    pr.undo()
    assert np.array_equal(pr.labels(), before)
    pr.redo()
    assert np.array_equal(pr.labels(), after)
