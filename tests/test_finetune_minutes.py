"""``napari-segneuron finetune --minutes``: a wall-clock budget with the learning rate spread over it."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_segneuron.cli import main
from napari_segneuron.training.checkpoints import read_checkpoint
from napari_segneuron.training.finetune import finetune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture()
def block(tmp_path):
    """A real annotated block: fib25_a, 16 x 64 x 64, labels only in part of it (mask)."""
    raw = tifffile.imread(str(DATA / "fib25_a_raw.tif"))[:16, :64, :64]
    lab = tifffile.imread(str(DATA / "fib25_a_labels.tif"))[:16, :64, :64]
    mask = np.zeros(raw.shape, np.uint8)
    mask[:, 8:56, 8:56] = 1
    paths = {k: tmp_path / f"{k}.tif" for k in ("raw", "lab", "mask")}
    for k, a in zip(paths, (raw, lab, mask)):
        tifffile.imwrite(paths[k], a)
    return paths


def test_minutes_budget_finishes_on_time_and_writes_a_checkpoint(tmp_path, block):
    out = tmp_path / "adapted.pt"
    budget_s = 8.0
    t = time.time()
    rc = main(["finetune", str(block["raw"]), str(block["lab"]), "--mask", str(block["mask"]),
               "--weights", "default", "--minutes", str(budget_s / 60), "--crop", "16,32,32",
               "--batch-size", "1", "--threads", "1", "-o", str(out)])
    wall = time.time() - t
    assert rc == 0 and out.is_file()
    ck = read_checkpoint(out)
    meta = ck["metadata"]
    assert ck["iters"] >= 1
    # training stopped at the budget, and the whole command soon after (one step can take seconds
    # on a loaded 2-core machine; the step-level bound is pinned below)
    assert meta["wall_time_s"] < budget_s + 15.0
    assert wall < budget_s + 40.0
    # the default model's architecture was kept (it adapted the bundled weights)
    assert meta["kn"] == [8, 16, 24, 32, 64]


def test_time_schedule_spreads_the_learning_rate_over_the_budget(block):
    """With a time budget and no iteration count, the learning rate decays with the clock:
    near the end it is close to its floor, though far fewer iterations ran than the cap."""
    raw, lab = tifffile.imread(block["raw"]), tifffile.imread(block["lab"])
    lrs = []
    import sys
    F = sys.modules["napari_segneuron.training.finetune"]
    orig = F.learning_rate

    def spy(*args, **kw):
        v = orig(*args, **kw)
        lrs.append(v)
        return v

    stamps = []
    F.learning_rate = spy
    t0 = time.time()
    try:
        r = finetune(None, raw, lab, kn=(4, 8, 8, 16, 16), iterations=10**9, batch_size=1, crop=(16, 32, 32),
                     lr=1e-3, min_lr=1e-5, warmup=1, time_limit_s=6.0, time_schedule=True, device="cpu", threads=1,
                     loss_callback=lambda it, loss: stamps.append(time.time()))
    finally:
        F.learning_rate = orig
    assert 3 <= r.iterations < 10**6
    # it stops at the first step boundary after the budget
    steps = np.diff([t0] + stamps)
    assert stamps[-1] - t0 <= 6.0 + steps.max() + 0.5
    assert stamps[-2] - t0 <= 6.0 + 0.5
    assert max(lrs) == pytest.approx(1e-3, rel=0.05)
    assert lrs[-1] < 0.2 * max(lrs)          # decayed by the clock, not by the (huge) iteration cap


def test_minutes_must_be_positive(tmp_path, block, capsys):
    rc = main(["finetune", str(block["raw"]), str(block["lab"]), "--minutes", "0", "-o", str(tmp_path / "x.pt")])
    assert rc != 0
    assert "--minutes" in capsys.readouterr().err


def test_voxel_size_trains_on_the_model_grid_and_declares_it(tmp_path, capsys):
    """A block at 10 nm (fib25_a's 20 nm grid upsampled 2x in y, x) is moved back to the default
    model's 20 nm grid before training, and the adapted checkpoint declares 20 nm, so prediction
    resamples the user's stack exactly as it does for the starting model."""
    from napari_segneuron.resample import resample_image, resize_labels

    raw = tifffile.imread(str(DATA / "fib25_a_raw.tif"))[:16, :48, :48]
    lab = tifffile.imread(str(DATA / "fib25_a_labels.tif"))[:16, :48, :48]
    fine_raw = resample_image(raw, (20.0, 20.0, 20.0), (20.0, 10.0, 10.0))
    fine_lab = resize_labels(lab, fine_raw.shape)
    assert fine_raw.shape == (16, 96, 96) and fine_raw.dtype == np.uint8
    back = resample_image(fine_raw, (20.0, 10.0, 10.0), (20.0, 20.0, 20.0))
    assert back.shape == raw.shape
    assert np.corrcoef(back.ravel().astype(float), raw.ravel().astype(float))[0, 1] > 0.9
    paths = {k: tmp_path / f"{k}.tif" for k in ("raw", "lab")}
    tifffile.imwrite(paths["raw"], fine_raw)
    tifffile.imwrite(paths["lab"], fine_lab)
    out = tmp_path / "adapted.pt"
    rc = main(["finetune", str(paths["raw"]), str(paths["lab"]), "--weights", "default", "--voxel-size",
               "20,10,10", "--iterations", "2", "--crop", "16,32,32", "--threads", "1", "-o", str(out)])
    assert rc == 0
    assert "to (16, 48, 48): 20×20×20 nm per voxel (the model's grid)" in capsys.readouterr().err
    meta = read_checkpoint(out)["metadata"]
    assert meta["voxel_size_nm"] == [20.0, 20.0, 20.0]
    assert meta["adapted_on_voxel_size_nm"] == [20.0, 10.0, 10.0]
    # magnified 2x (what calibrate chose, say): 10 nm shown as 20 nm is the model's grid, not resampled;
    # the checkpoint declares the 10 nm it really trained at, so it predicts the stack without --magnify
    out2 = tmp_path / "magnified.pt"
    rc = main(["finetune", str(paths["raw"]), str(paths["lab"]), "--weights", "default", "--voxel-size",
               "10,10,10", "--magnify", "2", "--iterations", "1", "--crop", "16,32,32", "--threads", "1", "-o", str(out2)])
    assert rc == 0 and "resampled" not in capsys.readouterr().err
    meta = read_checkpoint(out2)["metadata"]
    assert meta["voxel_size_nm"] == [10.0, 10.0, 10.0] and meta["magnify"] == 2.0


def test_bad_voxel_size_is_one_clear_line(tmp_path, block, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["finetune", str(block["raw"]), str(block["lab"]), "--voxel-size", "0,10,10",
              "--iterations", "1", "-o", str(tmp_path / "x.pt")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--voxel-size: expected three positive numbers" in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


def test_labels_without_membranes_are_warned_about(tmp_path, block, capsys):
    """Labels copied from a segmentation with membranes filled in have no 0s to teach the
    foreground head membranes: the CLI says so before training (the dock says it in its mask note)."""
    from napari_segneuron.metrics import fill_background
    from napari_segneuron.training.targets import no_membranes_warning

    lab = tifffile.imread(block["lab"])
    assert 0.03 < (lab == 0).mean() and no_membranes_warning(lab) == ""  # real truth: membranes are 0
    dense = fill_background(lab)
    assert "no membranes" in no_membranes_warning(dense)
    mask = tifffile.imread(block["mask"]) != 0
    assert "no membranes" in no_membranes_warning(dense, mask)
    path = tmp_path / "dense.tif"
    tifffile.imwrite(path, dense)
    # --minutes 0 stops the command before any training, after the labels were read
    main(["finetune", str(block["raw"]), str(path), "--minutes", "0", "-o", str(tmp_path / "x.pt")])
    assert "warning: under 1% of the trained labels are 0" in capsys.readouterr().err
    main(["finetune", str(block["raw"]), str(block["lab"]), "--minutes", "0", "-o", str(tmp_path / "x.pt")])
    assert "warning" not in capsys.readouterr().err
