"""Foreground-restricted waterz agglomeration with instant threshold replay, on real data."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import waterz

from napari_segneuron.cancel import CancelToken, Cancelled
from napari_segneuron.io import InputError
from napari_segneuron.metrics import evaluate, pair_counts
from napari_segneuron.segmentation import worker as seg_worker
from napari_segneuron.segmentation import (
    SCORING_FUNCTIONS,
    _restore_stdout,
    _silence_stdout,
    affinities_from_boundaries,
    agglomerate,
    restrict_to_foreground,
    threshold_sweep,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
if not DATA.exists():
    DATA = Path("/work/shared/data")

THRESHOLDS = [0.0, 0.2, 0.3, 0.35, 0.42, 0.5, 0.6, 0.75, 0.9, 1.0]


@pytest.fixture(scope="module")
def snemi() -> dict:
    # The file is high inside neurons and low on membranes (mean 0.88 off and 0.56 on
    # ground-truth boundaries), so 255 - value is the boundary probability.
    b = 255 - tifffile.imread(DATA / "snemi_mini_boundary_probability.tif")
    return dict(
        aff=affinities_from_boundaries(b),
        fg=1.0 - b.astype(np.float32) / 255.0,
        gt=tifffile.imread(DATA / "snemi_mini_labels.tif"),
        fragments=tifffile.imread(DATA / "snemi_mini_fragments.tif"),
    )


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Same segments (ids may differ) and the same background."""
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    s, g, _ = pair_counts(a.ravel(), b.ravel())
    return len(s) == len(np.unique(s)) == len(np.unique(g))


def direct_waterz(aff: np.ndarray, thresholds: list[float], scoring: str, fragments=None) -> list[np.ndarray]:
    saved = _silence_stdout(None)
    try:
        frag = None if fragments is None else fragments.astype(np.uint64)
        return [s.copy() for s in waterz.agglomerate(aff, thresholds, fragments=frag,
                                                      scoring_function=SCORING_FUNCTIONS[scoring])]
    finally:
        _restore_stdout(saved)


@pytest.mark.parametrize("fragments", ["waterz", "distance"])
@pytest.mark.parametrize("scoring", ["mean", "median"])
@pytest.mark.parametrize("restricted", [False, True])
def test_replay_equals_direct_waterz(snemi: dict, scoring: str, restricted: bool, fragments: str) -> None:
    fg = snemi["fg"] if restricted else None
    agg = agglomerate(snemi["aff"], fg, fg_threshold=0.4, scoring=scoring, background_mode="exclude", min_size=0,
                      fragments=fragments, membrane_fill=0, worker=False)
    assert agg.info["fragments"] == fragments
    prepared = snemi["aff"]
    if restricted:
        prepared = np.empty_like(prepared)
        restrict_to_foreground(snemi["aff"], fg, 0.4, out=prepared)
    # a fresh waterz run from the same fragments (its own watershed, or the distance fragments)
    direct = direct_waterz(prepared, THRESHOLDS, scoring, None if fragments == "waterz" else agg.fragments)
    counts = []
    for t, ref in zip(THRESHOLDS, direct):
        lab = agg.labels(t)
        assert lab.dtype == np.uint32
        assert same_partition(lab, ref), f"threshold {t}"
        counts.append(agg.n_segments(t))
    assert counts[0] > 2 * counts[-2] > 0  # the thresholds really change the result
    cp = agg.change_points()
    inner = cp[(cp > 0.3) & (cp < 0.9)]
    a, b = float(inner[len(inner) // 2]), float(inner[len(inner) // 2 + 1])
    mid = (a + b) / 2
    assert agg.n_merges(mid) == agg.n_merges(np.nextafter(np.float32(b), np.float32(0)))
    assert agg.n_merges(np.nextafter(np.float32(b), np.float32(1))) > agg.n_merges(mid)


def test_replay_with_given_fragments(snemi: dict) -> None:
    agg = agglomerate(snemi["aff"], fragments=snemi["fragments"], scoring="mean", min_size=0, worker=False)
    assert agg.n_fragments == len(np.unique(snemi["fragments"]))
    assert same_partition(agg.labels(0.0), snemi["fragments"])
    for t, ref in zip([0.3, 0.5, 0.7], direct_waterz(snemi["aff"], [0.3, 0.5, 0.7], "mean", snemi["fragments"])):
        assert same_partition(agg.labels(t), ref)


def test_foreground_restriction(snemi: dict) -> None:
    aff, fg = snemi["aff"], snemi["fg"]
    out = np.empty_like(aff)
    bg = restrict_to_foreground(aff, fg, 0.45, out=out)
    assert np.array_equal(bg, fg < 0.45)
    inner = ~bg
    inner[1:] &= ~bg[:-1]
    assert np.array_equal(out[0][inner], np.minimum(aff[0], fg)[inner])
    assert (out[:, bg] == 0).all() and (out[0, 1:][bg[:-1]] == 0).all()

    agg = agglomerate(aff, fg, fg_threshold=0.45, membrane_fill=0, worker=False)
    lab = agg.labels(0.4)
    assert (lab[fg < 0.45] == 0).all()
    assert (lab > 0).mean() > 0.5
    # by default the membranes next to a neurite join it; the same segments elsewhere
    filled = agglomerate(aff, fg, fg_threshold=0.45, worker=False).labels(0.4, min_size=0)
    assert (filled[fg < 0.45] != 0).mean() > 0.9
    assert same_partition(filled[fg >= 0.45], agg.labels(0.4, min_size=0)[fg >= 0.45])
    plain = agglomerate(aff, None, worker=False).labels(0.4)
    assert (plain[fg < 0.45] != 0).mean() > 0.9  # plain waterz labels membranes too


def test_restriction_beats_plain_waterz_on_snemi(snemi: dict) -> None:
    # here foreground = 1 - boundary, so only taking background out of the graph can help;
    # with mean scoring (with the median, "exclude" loses here: best VI 1.96 vs plain 1.79)
    agg = agglomerate(snemi["aff"], snemi["fg"], fg_threshold=0.45, background_mode="exclude", scoring="mean",
                      worker=False)
    restricted = threshold_sweep(agg, snemi["gt"])
    plain = threshold_sweep(agglomerate(snemi["aff"], None, scoring="mean", worker=False), snemi["gt"])
    assert restricted.vi.min() < plain.vi.min() - 0.05


def test_min_size_removes_small_segments(snemi: dict) -> None:
    agg = agglomerate(snemi["aff"], snemi["fg"], min_size=200, small="remove", fragments="waterz", worker=False)
    t = 0.3
    lab, full = agg.labels(t), agg.labels(t, min_size=0)
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    assert counts.min() >= 200
    fids, fcounts = np.unique(full[full > 0], return_counts=True)
    assert len(ids) == int((fcounts >= 200).sum()) < len(fids)
    small = np.isin(full, fids[fcounts < 200])
    assert (lab[small] == 0).all()
    assert same_partition(np.where(small, 0, full), lab)


def test_small_segment_merging_does_not_depend_on_segment_numbering(snemi: dict) -> None:
    # agglomerating only up to the threshold numbers segments differently; merging small
    # segments must still give the same partition (ties in contact area broke by id before)
    full = agglomerate(snemi["aff"], snemi["fg"], fg_threshold=0.5, min_size=100, worker=False)
    for t in (0.3, 0.5):
        short = agglomerate(snemi["aff"], snemi["fg"], fg_threshold=0.5, min_size=100, max_threshold=t, worker=False)
        assert same_partition(short.labels(t), full.labels(t)), t


def test_min_size_merges_small_segments_into_touching_ones(snemi: dict) -> None:
    from scipy import ndimage

    agg = agglomerate(snemi["aff"], snemi["fg"], min_size=200, worker=False)  # small="merge" by default
    t = 0.3
    lab, full = agg.labels(t), agg.labels(t, min_size=0)
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    assert counts.min() >= 200 and agg.n_segments(t) == len(ids)
    fids, fcounts = np.unique(full[full > 0], return_counts=True)
    big = fids[fcounts >= 200]
    # a coarsening of the thresholded result: every segment lands in one merged segment ...
    pairs = pair_counts(full[lab > 0], lab[lab > 0])
    assert len(pairs[0]) == len(np.unique(pairs[0]))
    # ... large segments are never merged with each other, and each keeps its voxels
    assert len(np.unique(lab[np.isin(full, big)])) == len(big)
    assert (lab[np.isin(full, big)] > 0).all()
    # small pieces go to a segment they touch; only isolated ones become background
    small_ids = fids[fcounts < 200]
    lost = np.isin(full, small_ids) & (lab == 0)
    assert lost.sum() < 0.01 * (full > 0).sum()
    for s_id in small_ids[:40]:
        piece = full == s_id
        target = np.unique(lab[piece])
        assert len(target) == 1
        if target[0]:
            ring = ndimage.binary_dilation(piece) & ~piece
            # merged into a segment it touches, directly or through other small pieces
            assert (lab[ring] == target[0]).any() or np.isin(full[ring], small_ids).any()
    # "fill" scoring through the sweep's fast path still equals scoring the volume
    sw = threshold_sweep(agg, snemi["gt"], [t])
    assert sw.vi[0] == pytest.approx(evaluate(lab, snemi["gt"]).vi, abs=1e-9)


def test_worker_process_matches_in_process(snemi: dict, monkeypatch: pytest.MonkeyPatch) -> None:

    seen = []
    a = agglomerate(snemi["aff"], snemi["fg"], fragments=snemi["fragments"], worker=True,
                    progress=lambda d, n, m="": seen.append((d, n, m)))
    b = agglomerate(snemi["aff"], snemi["fg"], fragments=snemi["fragments"], worker=False)
    for t in (0.2, 0.4, 0.6):
        assert np.array_equal(a.labels(t), b.labels(t))
    assert seen[-1][0] == seen[-1][1] and any("merging" in m for _, _, m in seen)
    assert not seg_worker._active_workers()
    # a container's small /dev/shm: the transport falls back to files on disk
    dirs = []
    real = seg_worker._scratch_dir
    monkeypatch.setattr(seg_worker.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 20})())
    monkeypatch.setattr(seg_worker, "_scratch_dir", lambda n: dirs.append(real(n)) or dirs[-1])
    c = agglomerate(snemi["aff"], snemi["fg"], worker=True)
    assert not dirs[0].startswith("/dev/shm") and not Path(dirs[0]).exists()
    d = agglomerate(snemi["aff"], snemi["fg"], worker=False)
    assert np.array_equal(c.labels(0.3), d.labels(0.3))


def test_cancel_terminates_the_worker(snemi: dict) -> None:
    big = np.tile(snemi["aff"], (1, 3, 3, 3))  # 96×480×480: several seconds of waterz here
    token = CancelToken()
    stages: list[str] = []

    def progress(done: int, total: int, message: str = "") -> None:
        stages.append(message)
        if "waterz" in message and not token.cancelled:
            threading.Timer(0.3, token.cancel).start()

    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        agglomerate(big, None, fragments="waterz", worker=True, progress=progress, cancel=token)
    assert time.perf_counter() - t0 < 8
    assert any("waterz" in s for s in stages)
    assert not seg_worker._active_workers()


def test_killed_worker_is_reported_as_killed(snemi: dict) -> None:
    """A worker the system kills (the OOM killer sends SIGKILL) is reported as killed, never
    as a missing ``__main__`` guard."""
    import os
    import signal

    big = np.tile(snemi["aff"], (1, 2, 2, 2))

    def progress(done: int, total: int, message: str = "") -> None:
        if "waterz" in message:
            for pid in seg_worker._active_workers():
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(RuntimeError) as err:
        agglomerate(big, None, fragments="waterz", worker=True, progress=progress)
    msg = str(err.value)
    assert "killed by signal 9 (SIGKILL)" in msg and "out of memory" in msg
    assert "__main__" not in msg
    assert not seg_worker._active_workers()


SCRIPT = """
import numpy as np
from napari_segneuron.segmentation import affinities_from_boundaries, agglomerate
rng = np.random.default_rng(0)
b = rng.random((4, 24, 24)).astype(np.float32)
agg = agglomerate(affinities_from_boundaries(b), 1.0 - b{worker})
print("segments", agg.n_segments(0.5, min_size=0))
"""

# An unguarded script, like napari's examples (napari started from a script, then Segment):
# its body records each run, so a worker that re-imports ``__main__`` shows up as a second run.
UNGUARDED = """
import numpy as np
from napari_segneuron.segmentation import affinities_from_boundaries, agglomerate
with open({runs!r}, "a") as f:
    f.write("ran\\n")
rng = np.random.default_rng(0)
b = rng.random((6, 32, 32)).astype(np.float32)
aff, fg = affinities_from_boundaries(b), 1.0 - b
seen = []
agg = agglomerate(aff, fg, worker=True, progress=lambda d, n, m="": seen.append(m))
ref = agglomerate(aff, fg, worker=False)
same = all(np.array_equal(agg.labels(t), ref.labels(t)) for t in (0.2, 0.5, 0.8))
print("segments", agg.n_segments(0.5, min_size=0), "same", same, "merging", any("merging" in m for m in seen))
"""


def run_script(tmp_path: Path, code: str, as_file: bool = True):
    import subprocess
    import sys

    if as_file:
        path = tmp_path / "script.py"
        path.write_text(code)
        return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_library_call_works_in_plain_scripts(tmp_path: Path) -> None:
    for as_file in (True, False):  # default: in-process, no guard needed, as a file or via `python -`
        done = run_script(tmp_path, SCRIPT.format(worker=""), as_file)
        assert done.returncode == 0, done.stderr
        assert int(done.stdout.split()[-1]) > 0


@pytest.mark.parametrize("as_file", [True, False])
def test_worker_does_not_rerun_an_unguarded_script(tmp_path: Path, as_file: bool) -> None:
    """The worker is its own module: it never imports the user's ``__main__``, so an unguarded
    script (no ``if __name__ == '__main__':``) runs once and the worker's result is the in-process one."""
    runs = tmp_path / "runs.txt"
    done = run_script(tmp_path, UNGUARDED.format(runs=str(runs)), as_file)
    assert done.returncode == 0, done.stderr
    assert runs.read_text().splitlines() == ["ran"]  # the script body ran exactly once
    words = done.stdout.split()
    assert int(words[words.index("segments") + 1]) > 0
    assert words[words.index("same") + 1] == "True" and words[words.index("merging") + 1] == "True"
    assert "__main__" not in done.stderr and "waterz worker" not in done.stderr


def test_worker_that_cannot_start_says_why(snemi: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose interpreter fails before its work (here: its entry module is missing)
    reports the last line of its stderr, and blames no ``__main__`` guard."""
    monkeypatch.setattr(seg_worker, "_ENTRY", "napari_segneuron.segmentation._no_such_worker")
    with pytest.raises(RuntimeError) as err:
        agglomerate(snemi["aff"][:, :4], None, worker=True)
    msg = str(err.value)
    assert "before starting its work" in msg and "ModuleNotFoundError" in msg and "_no_such_worker" in msg, msg
    assert "__main__" not in msg
    assert not seg_worker._active_workers()


def test_sweep_matches_direct_scoring(snemi: dict) -> None:
    agg = agglomerate(snemi["aff"], snemi["fg"], min_size=50, worker=False)
    gt = snemi["gt"]
    for background in ("fill", "ignore", "segment"):
        sweep = threshold_sweep(agg, gt, [0.2, 0.35, 0.45, 0.6], background=background)
        for i, t in enumerate(sweep.thresholds):
            s = evaluate(agg.labels(t), gt, background=background)
            assert sweep.vi_split[i] == pytest.approx(s.vi_split, abs=1e-9), (background, t)
            assert sweep.vi_merge[i] == pytest.approx(s.vi_merge, abs=1e-9), (background, t)
            assert sweep.arand[i] == pytest.approx(s.arand, abs=1e-9), (background, t)
        assert sweep.best_threshold == sweep.thresholds[np.argmin(sweep.vi)]
        expected = float((agg.labels(0.2) > 0).mean()) if background == "ignore" else 1.0
        assert sweep.scored[0] == pytest.approx(expected)
    # a ground-truth crop, given by its offset
    crop = (slice(8, 24), slice(40, 120), slice(30, 130))
    sub = threshold_sweep(agg, gt[crop], [0.35, 0.45], region=(8, 40, 30))
    s = evaluate(agg.labels(0.45, region=crop), gt[crop])
    assert sub.vi[1] == pytest.approx(s.vi, abs=1e-9)
    assert "lowest VI" in sub.table()


def test_bad_input(snemi: dict) -> None:
    aff, fg = snemi["aff"], snemi["fg"]
    with pytest.raises(InputError, match=r"\(3, Z, Y, X\)"):
        agglomerate(aff[:2], worker=False)
    with pytest.raises(InputError, match=r"\(3, Z, Y, X\)"):
        agglomerate(aff[0], worker=False)
    with pytest.raises(InputError, match="foreground"):
        agglomerate(aff, fg[:, :10], worker=False)
    with pytest.raises(InputError, match="fg_threshold"):
        agglomerate(aff, fg, fg_threshold=1.5, worker=False)
    with pytest.raises(InputError, match="max_threshold"):
        agglomerate(aff, fg, max_threshold=-0.1, worker=False)
    with pytest.raises(InputError, match="Every voxel is background"):
        agglomerate(aff, fg * 0.1, fg_threshold=0.5, worker=False)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        agglomerate(aff * 3 - 1, worker=False)
    noisy = aff.copy()
    noisy[0, 0, 0, 0] = 1.0000001  # rounding noise of blended tiles is clipped, not refused
    assert agglomerate(noisy, fg, worker=False).n_fragments > 0
    bad = aff.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        agglomerate(bad, worker=False)
    with pytest.raises(InputError, match="(?i)no fragments"):
        agglomerate(np.zeros_like(aff), worker=False)
    agg = agglomerate(aff, fg, max_threshold=0.5, worker=False)
    with pytest.raises(InputError, match="highest threshold"):
        agg.labels(0.7)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        agg.labels(-0.2)
    with pytest.raises(InputError, match="region"):
        threshold_sweep(agg, snemi["gt"][:5])


@pytest.mark.parametrize("mode", ["mask", "cut"])
def test_mask_modes_are_waterz_then_foreground_mask(snemi: dict, mode: str) -> None:
    aff, fg = snemi["aff"], snemi["fg"]
    agg = agglomerate(aff, fg, fg_threshold=0.5, scoring="mean", background_mode=mode, min_size=0, fragments="waterz",
                      membrane_fill=0, worker=False)
    prepared = np.empty_like(aff)
    bg = restrict_to_foreground(aff, fg, 0.5, out=prepared, exclude_background=False, cut_background=mode == "cut")
    restricted = np.minimum(aff, fg[None])
    if mode == "mask":
        assert np.array_equal(prepared, restricted)
    else:  # only edges between two background voxels are cut
        both = bg.copy()
        both[1:] &= bg[:-1]
        assert (prepared[0][both] == 0).all()
        assert np.array_equal(prepared[0][~both], restricted[0][~both])
    for t, ref in zip([0.3, 0.45, 0.6], direct_waterz(prepared, [0.3, 0.45, 0.6], "mean")):
        lab = agg.labels(t)
        # waterz's result masked, ids included (a segment is labelled by its root fragment)
        np.testing.assert_array_equal(lab, np.where(bg, 0, ref))
        # segments emptied by the mask are dropped (and not counted)
        assert agg.n_segments(t) == len(np.unique(lab[lab > 0]))


def test_cli_segment_and_evaluate(snemi: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from napari_segneuron.cli import main
    from napari_segneuron.io import write_prediction

    pred = tmp_path / "pred.zarr"
    write_prediction(pred, snemi["aff"], snemi["fg"])
    gt = tmp_path / "gt.tif"
    tifffile.imwrite(gt, snemi["gt"])
    out = tmp_path / "labels.tif"
    assert main(["segment", str(pred), "-o", str(out), "--threshold", "0.3", "--fg-threshold", "0.5"]) == 0
    labels = tifffile.imread(out)
    ref = agglomerate(snemi["aff"], snemi["fg"], fg_threshold=0.5, worker=False).labels(0.3)
    assert same_partition(labels, ref)
    # every stage after predict is reported on stderr, in order, with its time
    err = capsys.readouterr().err
    pos = [err.find(f"  {stage}: ") for stage in ("fragments", "agglomeration", "small-segment merging", "writing")]
    assert -1 not in pos and pos == sorted(pos), err
    assert "segment: " in err and "4/4 stages" in err
    assert main(["evaluate", str(out), str(gt), "--background", "segment"]) == 0
    text = capsys.readouterr().out
    s = evaluate(labels, snemi["gt"], background="segment")
    assert f"VI split  {s.vi_split:.4f}" in text and f"ARAND     {s.arand:.4f}" in text
    # bad input: clear one-line messages, exit code 2
    bad = tmp_path / "bad.zarr"
    write_prediction(bad, snemi["aff"][:2], snemi["fg"])
    assert main(["segment", str(bad), "-o", str(tmp_path / "x.tif")]) == 2
    assert "(3, Z, Y, X)" in capsys.readouterr().err
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, snemi["gt"][:4])
    assert main(["evaluate", str(out), str(small)]) == 2
    assert "different shapes" in capsys.readouterr().err
    dark = tmp_path / "dark.zarr"
    write_prediction(dark, snemi["aff"], snemi["fg"] * 0.3)
    assert main(["segment", str(dark), "-o", str(tmp_path / "y.tif"), "--fg-threshold", "0.5"]) == 2
    assert "Every voxel is background" in capsys.readouterr().err


def test_cli_predicts_then_segments_an_em_stack(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from napari_segneuron._model import load_model
    from napari_segneuron.cli import main
    from napari_segneuron.inference import DEFAULT_TTA, Predictor
    from napari_segneuron.io import read_prediction

    raw = tifffile.imread(DATA / "fib25_b_raw.tif")[:16, :64, :64]
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, raw)
    out, pred = tmp_path / "labels.zarr", tmp_path / "pred.zarr"
    argv = ["segment", str(stack), "-o", str(out), "--weights", str(tiny_checkpoint), "--device", "cpu",
            "--threshold", "0.5", "--fg-threshold", "0", "--save-prediction", str(pred)]
    assert main(argv) == 0
    import zarr

    labels = np.asarray(zarr.open_group(str(out), mode="r")["labels"][...])
    assert labels.shape == raw.shape and labels.max() > 0
    aff, fg = read_prediction(pred)
    # the command line predicts with the plugin's default test-time augmentation
    ref_aff, ref_fg = Predictor(load_model(tiny_checkpoint, device="cpu"), device="cpu", tta=DEFAULT_TTA).predict(raw)
    np.testing.assert_allclose(aff, ref_aff, atol=1e-6)
    ref = agglomerate(ref_aff, ref_fg, fg_threshold=0.0, worker=False).labels(0.5)
    assert same_partition(labels, ref)


def test_cli_segments_a_resampled_prediction_on_the_model_grid(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """A 2x finer stack with its voxel size: agglomerated on the model grid, labels on the input grid."""
    from napari_segneuron._model import load_model
    from napari_segneuron.cli import main
    from napari_segneuron.inference import DEFAULT_TTA, Predictor
    from napari_segneuron.resample import resize_labels

    raw = tifffile.imread(DATA / "fib25_b_raw.tif")[:16, :64, :64]
    stack = tmp_path / "fine.tif"
    tifffile.imwrite(stack, raw)
    out = tmp_path / "labels.tif"
    argv = ["segment", str(stack), "-o", str(out), "--weights", str(tiny_checkpoint), "--device", "cpu",
            "--threshold", "0.5", "--fg-threshold", "0", "--voxel-size", "10,5,5", "--model-voxel-size", "10,10,10",
            "--min-size", "0"]
    assert main(argv) == 0
    labels = tifffile.imread(out)
    assert labels.shape == raw.shape and labels.max() > 0
    grid: dict = {}
    pred = Predictor(load_model(tiny_checkpoint, device="cpu"), device="cpu", model_voxel_size=(10, 10, 10),
                     tta=DEFAULT_TTA)
    pred.predict(raw, voxel_size=(10, 5, 5), model_grid=grid)
    coarse = agglomerate(grid["affinities"], grid["foreground"], fg_threshold=0.0, min_size=0, worker=False).labels(0.5)
    assert coarse.shape == (16, 32, 32)
    assert same_partition(labels, resize_labels(coarse, raw.shape))


def test_distance_fragments_cover_the_foreground_in_connected_pieces(snemi: dict) -> None:
    from scipy import ndimage

    from napari_segneuron.segmentation import distance_fragments

    prepared = np.empty_like(snemi["aff"])
    restrict_to_foreground(snemi["aff"], snemi["fg"], 0.5, out=prepared, exclude_background=False,
                           cut_background=True)
    mask = snemi["fg"] >= 0.5
    frag = distance_fragments(prepared, mask)
    assert frag.dtype == np.uint64
    assert np.array_equal(frag != 0, mask)  # every foreground voxel, nothing else
    ids = np.unique(frag[frag > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))
    # each fragment is one connected piece (seeds are grown, never scattered)
    for i in ids[:: max(1, len(ids) // 40)]:
        assert ndimage.label(frag == i)[1] == 1
    # per-slice fragments never cross a slice
    flat = distance_fragments(prepared, mask, per_slice=True)
    assert np.array_equal(flat != 0, mask)
    per_id_slices = {int(i): len(np.unique(np.nonzero(flat == i)[0])) for i in np.unique(flat[flat > 0])[:50]}
    assert set(per_id_slices.values()) == {1}
    # default: distance fragments over every voxel ("cut"), background cleared afterwards
    agg = agglomerate(snemi["aff"], snemi["fg"], min_size=0, membrane_fill=0)
    everywhere = distance_fragments(prepared, None)
    assert (everywhere > 0).all()
    assert agg.info["fragments"] == "distance" and agg.n_fragments == int(everywhere.max())
    assert same_partition(agg.labels(0.0), np.where(mask, everywhere, 0).astype(np.uint32))
    # "exclude": the foreground only
    agg = agglomerate(snemi["aff"], snemi["fg"], min_size=0, background_mode="exclude", membrane_fill=0)
    ex = np.empty_like(prepared)
    restrict_to_foreground(snemi["aff"], snemi["fg"], 0.5, out=ex)
    assert same_partition(agg.labels(0.0), distance_fragments(ex, mask).astype(np.uint32))


def test_memory_estimate_refuses_a_run_that_would_not_fit(snemi: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari_segneuron.segmentation import agglomeration as agg_mod
    from napari_segneuron.segmentation.memory import estimate_bytes

    nvox = int(np.prod(snemi["fg"].shape))
    # room for mean scoring, not for median's per-edge histograms
    room = estimate_bytes(nvox, 0, "mean") + 2 * (estimate_bytes(nvox, 10_000, "mean") - estimate_bytes(nvox, 0, "mean"))
    monkeypatch.setattr(agg_mod, "available_bytes", lambda: room)
    with pytest.raises(InputError, match=r"needs about .* GiB, but only .* available; use scoring='mean'"):
        agglomerate(snemi["aff"], snemi["fg"], scoring="median", worker=False)
    with pytest.raises(InputError, match="needs about"):  # checked before the worker process starts
        agglomerate(snemi["aff"], snemi["fg"], scoring="median", worker=True)
    assert not seg_worker._active_workers()
    agglomerate(snemi["aff"], snemi["fg"], scoring="mean", worker=False)  # fits
    monkeypatch.setattr(agg_mod, "available_bytes", lambda: 1)
    with pytest.warns(ResourceWarning, match="fragments='distance' needs far less"):
        agglomerate(snemi["aff"][:, :4], snemi["fg"][:4], fragments="waterz", worker=False)


def test_distance_fragments_adapt_to_affinities_that_never_reach_the_threshold(snemi: dict) -> None:
    from napari_segneuron.segmentation import distance_fragments

    weak = snemi["aff"] * np.float32(0.9)  # another model's calibration: nothing above 0.9
    frag = distance_fragments(weak)
    strong = distance_fragments(snemi["aff"], boundary_threshold=float(np.quantile(snemi["aff"].mean(0), 0.9)))
    assert frag.max() > 100 and (frag > 0).all()
    # about what asking for that level directly gives (the relief is scaled, ties move a little)
    assert abs(int(frag.max()) - int(strong.max())) < 0.05 * int(strong.max())
    agg = agglomerate(weak, None, min_size=0)
    assert agg.n_fragments == int(frag.max()) and agg.n_segments(0.9) < agg.n_fragments


def test_bucket_watershed_matches_skimage():
    """The numba bucket-queue watershed floods like skimage's: same labels when the relief has
    no ties, the mask respected, and with few buckets (merged levels) still almost the same."""
    from scipy import ndimage

    from napari_segneuron.segmentation import fragments as F

    if F._numba_flood() is None:
        pytest.skip("numba unavailable")
    rng = np.random.default_rng(3)
    for shape in ((20, 30, 40), (30, 40)):
        relief = (ndimage.gaussian_filter(rng.random(shape), 2) + 1e-3 * rng.random(shape)).astype(np.float32)
        mask = ndimage.gaussian_filter(rng.random(shape), 3) > 0.49
        seeds = np.zeros(shape, np.int32)
        seeds.flat[rng.choice(relief.size, 30, replace=False)] = np.arange(1, 31)
        seeds[~mask] = 0
        ref = F.seeded_watershed(relief, seeds, mask, backend="skimage")
        got = F.seeded_watershed(relief, seeds, mask, backend="bucket")
        assert np.array_equal(got, ref)
        old = F.N_BUCKETS
        try:
            F.N_BUCKETS = 64
            coarse = F.seeded_watershed(relief, seeds, mask, backend="bucket")
        finally:
            F.N_BUCKETS = old
        assert np.array_equal(coarse > 0, mask) and 0.97 < (coarse == ref).mean() < 1


# ---------------------------------------------------------------------------------------
# issue 33: exact replay on label-shaped affinities, lazy fragments, stable label ids

REPLAY_THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.fixture(scope="module")
def fib25_shaped() -> dict:
    """Affinities shaped like real neurons: the bundled FIB-25 labels (fib25_a, 30x100x120),
    their affinities blurred (sigma 1 voxel) plus noise (sd 0.15), clipped to [0, 1]; a
    foreground made the same way from ``labels != 0``."""
    from scipy import ndimage

    lab = tifffile.imread(Path(__file__).resolve().parents[1] / "src" / "napari_segneuron" / "data"
                          / "fib25_a_labels.tif")[:30, :, :120]
    rng = np.random.default_rng(1)
    aff = np.zeros((3,) + lab.shape, np.float32)
    for d in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[d], lo[d] = slice(1, None), slice(None, -1)
        aff[d][tuple(hi)] = (lab[tuple(hi)] == lab[tuple(lo)]) & (lab[tuple(hi)] != 0)
    aff = ndimage.gaussian_filter(aff, (0, 1, 1, 1)) + rng.normal(0, 0.15, aff.shape)
    fg = ndimage.gaussian_filter((lab != 0).astype(np.float32), 1) + rng.normal(0, 0.1, lab.shape)
    return dict(aff=np.clip(aff, 0, 1).astype(np.float32), fg=np.clip(fg, 0, 1).astype(np.float32), labels=lab)


@pytest.mark.parametrize("restricted", [False, True])
@pytest.mark.parametrize("fragments", ["waterz", "distance", "given"])
def test_labels_are_waterz_voxel_for_voxel_on_label_shaped_affinities(fib25_shaped: dict, fragments: str,
                                                                       restricted: bool) -> None:
    """``labels(t)`` is what waterz gives at ``t`` on the same affinities and fragments, ids and
    all, for every kind of fragments, with and without a foreground. Without a scoring,
    ``fragments="waterz"`` is plain waterz (its own default, mean); the others use SegNeuron's
    median; ``info["scoring_function"]`` is the C++ type to pass."""
    from napari_segneuron.segmentation import DEFAULT_SCORING, PLAIN_WATERZ_SCORING, distance_fragments
    from napari_segneuron.segmentation.fragments import _renumber

    aff = fib25_shaped["aff"]
    fg = fib25_shaped["fg"] if restricted else None
    given = distance_fragments(aff, per_slice=True)  # 2-D fragments, as another tool might give them
    arg = given if fragments == "given" else fragments
    agg = agglomerate(aff, fg, fg_threshold=0.5, fragments=arg, min_size=0, membrane_fill=0, worker=False)
    expected = PLAIN_WATERZ_SCORING if fragments == "waterz" else DEFAULT_SCORING
    assert agg.info["scoring_function"] == SCORING_FUNCTIONS[expected]
    prepared, bg = aff, None
    if restricted:
        prepared = np.empty_like(aff)
        bg = restrict_to_foreground(aff, fg, 0.5, out=prepared, exclude_background=False, cut_background=True)
    start = {"waterz": None, "distance": distance_fragments(prepared), "given": _renumber(given)}[fragments]
    saved = _silence_stdout(None)
    try:
        refs = [s.copy() for s in waterz.agglomerate(prepared, REPLAY_THRESHOLDS, fragments=start,
                                                      scoring_function=agg.info["scoring_function"])]
    finally:
        _restore_stdout(saved)
    counts = []
    for t, ref in zip(REPLAY_THRESHOLDS, refs):
        if bg is not None:
            ref[bg] = 0
        lab = agg.labels(t)
        assert lab.dtype == np.uint32
        np.testing.assert_array_equal(lab, ref.astype(np.uint32), err_msg=f"threshold {t}")
        counts.append(agg.n_segments(t))
        assert counts[-1] == len(np.unique(ref[ref != 0]))
    assert counts[0] > 3 * counts[-2] > 0  # the thresholds really change the result


def test_plain_waterz_call_is_waterz_at_every_threshold(fib25_shaped: dict) -> None:
    """``agglomerate(aff, None, fragments="waterz", min_size=0, membrane_fill=0)`` with no
    scoring is ``waterz.agglomerate(aff, [t])`` with waterz's defaults: same partition at
    0.1..0.9 (with median, the default of the other fragment options, 0.2 and 0.4 differ)."""
    aff = fib25_shaped["aff"]
    agg = agglomerate(aff, None, fragments="waterz", min_size=0, membrane_fill=0, worker=False)
    for t in REPLAY_THRESHOLDS:
        saved = _silence_stdout(None)
        try:
            ref = next(waterz.agglomerate(aff.copy(), [t])).copy()
        finally:
            _restore_stdout(saved)
        lab = agg.labels(t)
        pairs = np.unique(np.stack([lab.ravel().astype(np.int64), ref.ravel().astype(np.int64)]), axis=1)
        assert pairs.shape[1] == len(np.unique(lab)) == len(np.unique(ref)), f"threshold {t}"


def _check_hierarchy(low: np.ndarray, high: np.ndarray) -> int:
    """``high`` (a higher threshold) is a union of ``low``'s segments, each with the id of one of
    them, and every segment of ``low`` that merged with nothing keeps its id. Returns how many
    segments of ``low`` merged with nothing."""
    np.testing.assert_array_equal(low == 0, high == 0)
    lo_ids, hi_ids, _ = pair_counts(low[low > 0], high[high > 0])
    assert len(lo_ids) == len(np.unique(lo_ids)), "a segment was split by raising the threshold"
    parts: dict = {}
    for a, b in zip(lo_ids.tolist(), hi_ids.tolist()):
        parts.setdefault(b, []).append(a)
    for b, members in parts.items():
        assert b in members, f"segment {b} took none of its parts' ids {members[:5]}"
    return sum(len(m) == 1 for m in parts.values())


def test_label_ids_follow_the_merge_hierarchy(fib25_shaped: dict) -> None:
    """Raising the threshold, a merge keeps one of the two ids and every other segment keeps
    its id; lowering it gives the ids back; any call order gives the same ids."""
    aff, fg = fib25_shaped["aff"], fib25_shaped["fg"]
    agg = agglomerate(aff, fg, fg_threshold=0.5, min_size=0, worker=False)  # distance fragments, membranes filled
    rising = [agg.labels(t) for t in REPLAY_THRESHOLDS]
    falling = {t: agg.labels(t) for t in reversed(REPLAY_THRESHOLDS)}
    for t, lab in zip(REPLAY_THRESHOLDS, rising):
        np.testing.assert_array_equal(falling[t], lab)  # independent of the order of the calls
    np.testing.assert_array_equal(agg.labels(0.0), agg.fragments)  # no merge: the fragment ids
    for i in range(len(REPLAY_THRESHOLDS) - 1):
        low, high = rising[i], rising[i + 1]
        alone = _check_hierarchy(low, high)
        assert alone <= len(np.unique(high[high > 0])) <= len(np.unique(low[low > 0]))
    _check_hierarchy(rising[0], rising[-1])
    # small-segment merging: a segment of at least min_size keeps its id whatever the small
    # pieces merged into it, as long as the agglomeration itself leaves it alone
    for t1, t2 in ((0.3, 0.4), (0.5, 0.6)):
        raw1, raw2 = agg.labels(t1, min_size=0), agg.labels(t2, min_size=0)
        big1, big2 = agg.labels(t1, min_size=100), agg.labels(t2, min_size=100)
        ids, sizes = np.unique(raw1[raw1 > 0], return_counts=True)
        unchanged = 0
        for i in ids[sizes >= 100].tolist():
            piece = raw1 == i
            if (raw2[piece] == i).all() and (raw2 == i).sum() == piece.sum():  # not merged from t1 to t2
                assert (big1[piece] == i).all() and (big2[piece] == i).all()
                unchanged += 1
        assert unchanged > 0.5 * (sizes >= 100).sum()


def _zarr_fragments(tmp_path: Path, fragments: np.ndarray, chunks) -> "object":
    import zarr

    arr = zarr.create_array(str(tmp_path / "fragments.zarr"), shape=fragments.shape, dtype="uint32", chunks=chunks,
                            fill_value=0)
    arr[...] = fragments
    return arr


def test_labels_of_zarr_fragments_on_both_sides_of_the_fast_gather(snemi: dict, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A blockwise agglomeration's fragments are a zarr array: ``labels(t)`` reads them slab by
    slab, through torch's gather from ``FAST_GATHER_VOXELS`` voxels on, numpy's below; both
    equal the in-memory labels (the fast path used to ask the zarr array for numpy's flags)."""
    import dataclasses

    import torch

    from napari_segneuron.segmentation import agglomeration as agg_mod

    agg = agglomerate(snemi["aff"], snemi["fg"], fg_threshold=0.5, worker=False)
    lazy = dataclasses.replace(agg, fragments=_zarr_fragments(tmp_path, agg.fragments, (8, 64, 64)))
    calls = []
    real = torch.index_select
    monkeypatch.setattr(torch, "index_select", lambda *a, **k: calls.append(1) or real(*a, **k))
    for fast in (False, True):
        monkeypatch.setattr(agg_mod, "FAST_GATHER_VOXELS", 1 if fast else 1 << 40)
        monkeypatch.setattr(agg_mod, "GATHER_SLAB_VOXELS", 8 * 160 * 160)  # several slabs
        calls.clear()
        for t in (0.3, 0.6):
            np.testing.assert_array_equal(lazy.labels(t), agg.labels(t))
            out = np.empty(agg.shape, np.uint32)
            assert lazy.labels(t, out=out) is out
            np.testing.assert_array_equal(out, agg.labels(t))
            crop = (slice(3, 20), slice(10, 90), slice(5, 150))
            np.testing.assert_array_equal(lazy.labels(t, region=crop), agg.labels(t)[crop])
        assert bool(calls) == fast
    with pytest.raises(ValueError, match="C-contiguous"):
        lazy.labels(0.3, out=np.empty((2, 2, 2), np.uint32))


def test_a_zarr_array_of_4_mi_voxels_takes_the_fast_gather(snemi: dict, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The real size: 64x256x256 = 1 << 22 voxels of zarr fragments with the default constants."""
    import dataclasses

    import torch

    from napari_segneuron.segmentation import agglomeration as agg_mod

    agg = agglomerate(snemi["aff"], snemi["fg"], fg_threshold=0.5, worker=False)
    big = np.tile(agg.fragments, (2, 2, 2))[:64, :256, :256]
    big = np.ascontiguousarray(np.pad(big, [(0, 64 - big.shape[0]), (0, 0), (0, 0)], mode="reflect"))
    lazy = dataclasses.replace(agg, fragments=_zarr_fragments(tmp_path, big, (64, 128, 128)))
    calls = []
    real = torch.index_select
    monkeypatch.setattr(torch, "index_select", lambda *a, **k: calls.append(1) or real(*a, **k))
    lab = lazy.labels(0.4)  # before the fix: AttributeError: 'Array' object has no attribute 'flags'
    assert big.size == agg_mod.FAST_GATHER_VOXELS == 1 << 22
    assert calls, "the fast path was not taken"
    np.testing.assert_array_equal(lab, np.take(agg.lookup_table(0.4), big))
    # and the numpy side of the switch, in memory, one voxel short of it
    calls.clear()
    flat = big.reshape(-1)[: (1 << 22) - 1]
    np.testing.assert_array_equal(agg_mod._gather(agg.lookup_table(0.4), flat), np.take(agg.lookup_table(0.4), flat))
    assert not calls
