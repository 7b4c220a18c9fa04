"""VI / ARAND on real label volumes, cross-checked against skimage.metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.metrics import adapted_rand_error as sk_arand
from skimage.metrics import variation_of_information as sk_vi

from napari_segneuron.io import InputError
from napari_segneuron.metrics import (
    evaluate,
    evaluate_cut_sections,
    evaluate_sections,
    fill_background,
    section_pieces,
    section_segments,
    section_truth,
)
from napari_segneuron.segmentation import adapted_rand_error, variation_of_information

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")


@pytest.fixture(scope="module")
def fib25_b() -> np.ndarray:
    return tifffile.imread(DATA / "fib25_b_labels.tif")


@pytest.fixture(scope="module")
def snemi() -> tuple[np.ndarray, np.ndarray]:
    return tifffile.imread(DATA / "snemi_mini_fragments.tif"), tifffile.imread(DATA / "snemi_mini_labels.tif")


def _perturbed(gt: np.ndarray) -> np.ndarray:
    """Merge some neighbouring ids, split others along x, blank a slab: a realistic mistake mix."""
    seg = gt.astype(np.uint64).copy()
    ids = np.unique(gt[gt > 0])
    for a, b in zip(ids[::7], ids[1::7]):
        seg[gt == b] = a
    half = gt.shape[2] // 2
    for a in ids[3::5]:
        m = gt == a
        m[:, :, :half] = False
        seg[m] = a + 10_000
    seg[:, :5, :10] = 0
    return seg


def test_matches_skimage_on_fib25(fib25_b: np.ndarray) -> None:
    seg = _perturbed(fib25_b)
    split, merge = variation_of_information(seg, fib25_b, background="segment")
    ref = sk_vi(fib25_b, seg, ignore_labels=(0,))  # skimage: (H(seg|gt), H(gt|seg))
    assert split == pytest.approx(ref[0], abs=1e-9)
    assert merge == pytest.approx(ref[1], abs=1e-9)
    assert split > 0.05 and merge > 0.05
    are = adapted_rand_error(seg, fib25_b, background="segment")
    assert are == pytest.approx(sk_arand(fib25_b, seg, ignore_labels=(0,))[0], abs=1e-9)


def test_matches_skimage_on_snemi_fragments(snemi: tuple[np.ndarray, np.ndarray]) -> None:
    frags, gt = snemi
    s = evaluate(frags, gt, background="segment")
    ref = sk_vi(gt, frags, ignore_labels=(0,))
    assert (s.vi_split, s.vi_merge) == pytest.approx(tuple(ref), abs=1e-9)
    assert s.arand == pytest.approx(sk_arand(gt, frags, ignore_labels=(0,))[0], abs=1e-9)
    # fragments over-segment: many splits, few merges
    assert s.vi_split > 3 * s.vi_merge


def test_split_and_merge_parts_are_the_right_way_round(fib25_b: np.ndarray) -> None:
    assert evaluate(fib25_b, fib25_b).vi == 0.0
    assert evaluate(fib25_b, fib25_b).arand == pytest.approx(0.0, abs=1e-12)
    ids, counts = np.unique(fib25_b[fib25_b > 0], return_counts=True)
    big = ids[np.argsort(counts)[-2:]]
    merged = fib25_b.copy()
    merged[merged == big[0]] = big[1]
    split = fib25_b.astype(np.int64).copy()
    m = fib25_b == big[1]
    m[:25] = False
    split[m] = 10**6
    s_merged, s_split = evaluate(merged, fib25_b), evaluate(split, fib25_b)
    assert s_merged.vi_split == pytest.approx(0.0, abs=1e-12) and s_merged.vi_merge > 0.01
    assert s_split.vi_merge == pytest.approx(0.0, abs=1e-12) and s_split.vi_split > 0.01


def test_background_modes(fib25_b: np.ndarray) -> None:
    seg = _perturbed(fib25_b)
    filled = fill_background(seg)
    assert not (filled == 0).any()
    assert np.array_equal(filled[seg != 0], seg[seg != 0])
    assert evaluate(seg, fib25_b, background="fill") == evaluate(filled, fib25_b, background="segment")
    keep = seg != 0
    ign = evaluate(seg, fib25_b, background="ignore")
    ref = sk_vi(np.where(keep, fib25_b, 0), seg, ignore_labels=(0,))
    assert (ign.vi_split, ign.vi_merge) == pytest.approx(tuple(ref), abs=1e-9)
    assert ign.n_voxels == int(((fib25_b != 0) & keep).sum())
    # predicted background as one segment is a big merge error
    assert evaluate(seg, fib25_b, background="segment").vi_merge > ign.vi_merge


def test_huge_ids_use_a_sparse_table(fib25_b: np.ndarray) -> None:
    seg = fib25_b.astype(np.uint64) * np.uint64(2**40) + np.uint64(7)
    seg[fib25_b == 0] = 0
    s = evaluate(seg, fib25_b)
    assert s.vi == pytest.approx(0.0, abs=1e-12) and s.arand == pytest.approx(0.0, abs=1e-12)


def test_bad_input(fib25_b: np.ndarray) -> None:
    with pytest.raises(InputError, match="different shapes"):
        evaluate(fib25_b[:10], fib25_b)
    with pytest.raises(InputError, match="integer"):
        evaluate(fib25_b.astype(np.float32), fib25_b)
    with pytest.raises(InputError, match="all background"):
        evaluate(np.zeros_like(fib25_b), fib25_b, background="fill")
    with pytest.raises(InputError, match="background must be"):
        evaluate(fib25_b, fib25_b, background="nearest")
    with pytest.raises(InputError, match="No voxel"):
        evaluate(fib25_b, np.zeros_like(fib25_b))


def test_2d_truth_rules_on_a_fold() -> None:
    """One neuron (id 1) shaped like a U: two separate profiles in section 0, joined in section 1;
    2D truth (connected regions per section) has two ids there. "pieces" scores the correct 3D
    segment 0, "segments" charges the fold; a real merge of touching profiles costs by both."""
    seg = np.full((2, 4, 9), 2, np.uint32)
    seg[:, :, 0:3] = 1
    seg[:, :, 6:9] = 1
    seg[1, 3, :] = 1  # the bottom of the U closes in section 1
    truth = section_pieces(seg)
    assert [len(np.unique(truth[z])) for z in range(2)] == [3, 2]  # section 0: left, middle, right
    assert evaluate_sections(seg, truth, rule="pieces").vi == 0.0
    folded = evaluate_sections(seg, truth)  # "segments", the default
    assert folded.vi_split == 0.0 and folded.vi_merge > 0.1
    sections = section_segments(seg)
    assert sections.max() == 4 and len(np.unique(sections[0])) == 2  # one segment per id and section
    merged = seg.copy()
    merged[0][merged[0] == 2] = 1  # the middle profile merged into the U in section 0
    for rule in ("pieces", "segments"):
        s = evaluate_sections(merged, truth, rule=rule)
        assert s.vi_split == 0.0 and s.vi_merge > 0.5
    with pytest.raises(InputError, match="rule must be"):
        evaluate_sections(seg, truth, rule="voxels")


def test_2d_truth_rules_on_real_3d_bodies(fib25_b: np.ndarray) -> None:
    """fib25_b's 3D bodies against their own section-by-section pieces (as 2D truth is made):
    many bodies leave a section in several pieces. The bodies score near 0 by pieces (what is
    left comes from filling the membranes, which joins pieces of one body across them) and ~0.3
    by segments (every fold is a merge); a 3D merge of two touching bodies costs by both."""
    truth = section_pieces(fib25_b)
    assert truth.max() > 1.3 * sum(len(np.unique(s)) - 1 for s in fib25_b)  # bodies in several pieces
    assert np.array_equal(truth == 0, fib25_b == 0)
    pieces = evaluate_sections(fib25_b, truth, rule="pieces")
    segments = evaluate_sections(fib25_b, truth, rule="segments")
    assert pieces.vi_split == 0.0 and pieces.vi < 0.1 and pieces.arand < 0.02
    assert segments.vi_split == 0.0 and 0.2 < segments.vi_merge < 0.4
    ids, counts = np.unique(fib25_b[fib25_b > 0], return_counts=True)
    big = ids[np.argsort(counts)[-2:]]
    merged = np.where(fib25_b == big[0], big[1], fib25_b)
    assert evaluate_sections(merged, truth, rule="pieces").vi_merge > pieces.vi_merge + 0.01
    assert evaluate_sections(merged, truth, rule="segments").vi_merge > segments.vi_merge + 0.01
    # truth cut once (as calibration does for its ~200 settings) scores the same
    for rule, direct in (("pieces", pieces), ("segments", segments)):
        assert evaluate_cut_sections(fib25_b, section_truth(truth, rule=rule), rule=rule) == direct
    # against its own 3D ids cut per section, "segments" is exact
    assert evaluate_sections(fib25_b, section_segments(fib25_b), rule="segments").vi == 0.0
    with pytest.raises(InputError, match="Z, Y, X"):
        section_pieces(fib25_b[0])


def test_cli_scores_2d_truth_per_section(fib25_b: np.ndarray, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    """`napari-segneuron evaluate` notices truth labelled section by section, scores it per section
    by both rules; scored in 3D (`--3d`) the true bodies would look like one huge merge each."""
    import json

    from napari_segneuron.cli import main

    seg, truth = tmp_path / "seg.tif", tmp_path / "truth2d.tif"
    t2d = section_pieces(fib25_b)
    tifffile.imwrite(seg, fib25_b)
    tifffile.imwrite(truth, t2d)
    assert main(["evaluate", str(seg), str(truth), "--json"]) == 0
    auto = json.loads(capsys.readouterr().out)
    assert auto["per_section"] and auto["section_rule"] == "segments"
    assert auto["vi"] == pytest.approx(evaluate_sections(fib25_b, t2d).vi)
    assert auto["pieces"]["vi"] == pytest.approx(evaluate_sections(fib25_b, t2d, rule="pieces").vi)
    assert auto["pieces"]["vi"] < 0.1 < 0.2 < auto["vi"]
    assert main(["evaluate", str(seg), str(truth), "--section-rule", "pieces"]) == 0
    text = capsys.readouterr().out
    assert "rule 'pieces'" in text and "by the 'segments' rule" in text
    assert main(["evaluate", str(seg), str(truth), "--3d", "--json"]) == 0
    flat = json.loads(capsys.readouterr().out)
    assert not flat["per_section"] and flat["vi_merge"] > 3.0
    assert main(["evaluate", str(seg), str(seg)]) == 0  # 3D truth: scored in 3D
    assert "section by section" not in capsys.readouterr().out
