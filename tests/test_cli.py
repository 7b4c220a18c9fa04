"""The predict CLI: outputs, provenance, and one-line errors for bad input."""
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from napari_segneuron._model import MNet, save_checkpoint
from napari_segneuron.cli import main
from napari_segneuron.io import read_metadata, read_prediction


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.ckpt"
    return save_checkpoint(MNet(kn=(4, 8, 8, 16, 16)), path, metadata={"name": "tiny"})


@pytest.fixture()
def stack(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (10, 40, 56), dtype=np.uint8))
    return path


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_predict_writes_affinities_and_foreground(tmp_path, stack, tiny_ckpt, suffix):
    out = tmp_path / f"pred{suffix}"
    rc = main(["predict", str(stack), "-o", str(out), "--weights", str(tiny_ckpt), "--tile", "8,32,32", "--overlap", "2,8,8"])
    assert rc == 0
    aff, fg = read_prediction(out)
    assert aff.shape == (3, 10, 40, 56) and fg.shape == (10, 40, 56)
    assert 0 <= fg.min() and fg.max() <= 1
    meta = read_metadata(out)
    assert meta["weights_sha256"] and meta["tile"] == [8, 32, 32]


def test_existing_output_is_not_overwritten(tmp_path, stack, tiny_ckpt, capsys):
    out = tmp_path / "pred.tif"
    out.write_bytes(b"precious")
    rc = main(["predict", str(stack), "-o", str(out), "--weights", str(tiny_ckpt)])
    assert rc == 2 and out.read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make_input, weights, message",
    [
        (lambda p: tifffile.imwrite(p, np.zeros((64, 64, 3), np.uint8)), None, "RGB"),
        (lambda p: tifffile.imwrite(p, np.zeros((2, 3, 4, 32, 32), np.uint8)), None, "dimensions"),
        (lambda p: p.write_bytes(b"not a tiff"), None, "Could not read"),
        (lambda p: None, None, "File not found"),
        (lambda p: tifffile.imwrite(p, np.zeros((4, 32, 32), np.uint8)), "corrupt", "not a readable PyTorch checkpoint"),
        (lambda p: tifffile.imwrite(p, np.zeros((4, 32, 32), np.uint8)), "missing.ckpt", "neither a weights file"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, tiny_ckpt, capsys, make_input, weights, message):
    src = tmp_path / "in.tif"
    make_input(src)
    if weights == "corrupt":
        weights = tmp_path / "corrupt.ckpt"
        weights.write_text("garbage")
    rc = main(["predict", str(src), "-o", str(tmp_path / "o.zarr"), "--weights", str(weights or tiny_ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o.zarr").exists()


def test_voxel_size_note_and_resampling(tmp_path, stack, tiny_ckpt, capsys):
    ck = save_checkpoint(MNet(kn=(4, 8, 8, 16, 16)), tmp_path / "vox.ckpt", metadata={"voxel_size_nm": [10, 10, 10]})
    main(["predict", str(stack), "-o", str(tmp_path / "a.zarr"), "--weights", str(ck), "--tile", "8,32,32"])
    assert "voxel size is unknown" in capsys.readouterr().err
    rc = main(["predict", str(stack), "-o", str(tmp_path / "b.zarr"), "--weights", str(ck), "--tile", "8,32,32",
               "--voxel-size", "10,5,5"])
    assert rc == 0 and "resampling" in capsys.readouterr().err
    assert read_prediction(tmp_path / "b.zarr")[1].shape == (10, 40, 56)


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "napari_segneuron.cli", "predict", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--weights", "--tile", "--overlap", "--batch-size", "--device", "--half", "--voxel-size"):
        assert flag in result.stdout


def test_roi_predicts_a_box_of_the_stack(tmp_path, stack, tiny_ckpt, capsys):
    out = tmp_path / "roi.tif"
    base = ["predict", str(stack), "--weights", str(tiny_ckpt), "--tile", "8,32,32", "--overlap", "2,8,8"]
    assert main(base + ["-o", str(out), "--roi", "2:8,:32,16:48"]) == 0
    aff, fg = read_prediction(out)
    assert fg.shape == (6, 32, 32)
    assert read_metadata(out)["roi"] == {"start": [2, 0, 16], "stop": [8, 32, 48]}
    # the same as predicting the cropped stack
    crop = tmp_path / "crop.tif"
    tifffile.imwrite(crop, tifffile.imread(stack)[2:8, :32, 16:48])
    assert main(["predict", str(crop), "-o", str(tmp_path / "crop_pred.tif")] + base[2:]) == 0
    np.testing.assert_allclose(fg, read_prediction(tmp_path / "crop_pred.tif")[1], atol=1e-6)
    # a box outside the stack or a malformed one: one-line errors, nothing written
    assert main(base + ["-o", str(tmp_path / "bad.tif"), "--roi", "0:4,0:32,50:80"]) == 2
    assert "outside the volume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["-o", str(tmp_path / "bad.tif"), "--roi", "0:4,0:32"])
    assert not (tmp_path / "bad.tif").exists()


def test_tta_flag_takes_an_optional_mode(tmp_path, stack, tiny_ckpt, capsys):
    """The default is `min` (each affinity's lowest flip view, never above the plain prediction);
    `--tta off` predicts once; `--tta` alone averages the flips; the metadata records the mode."""
    from napari_segneuron.inference import DEFAULT_TTA

    base = ["--weights", str(tiny_ckpt), "--tile", "8,32,32", "--overlap", "2,8,8"]
    runs = {}
    for name, extra in (("default", []), ("off", ["--tta", "off"]), ("mean", ["--tta"]), ("min", ["--tta", "min"])):
        out = tmp_path / f"{name}.zarr"
        assert main(["predict", str(stack), "-o", str(out), *base, *extra]) == 0
        runs[name] = read_prediction(out)[0]
        assert read_metadata(out)["tta"] == {"default": DEFAULT_TTA, "off": False}.get(name, name)
    assert DEFAULT_TTA == "min"
    np.testing.assert_array_equal(runs["default"], runs["min"])
    assert (runs["min"] <= runs["off"] + 1e-6).all() and (runs["min"] <= runs["mean"] + 1e-6).all()
    assert not np.allclose(runs["mean"], runs["off"]) and not np.allclose(runs["min"], runs["off"])
    with pytest.raises(SystemExit):
        main(["predict", str(stack), "-o", str(tmp_path / "x.zarr"), *base, "--tta", "max"])
    assert "invalid choice" in capsys.readouterr().err
