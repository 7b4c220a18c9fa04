"""``model.info`` is a typed ModelInfo that still reads as the mapping scripts know."""
import pytest
import torch

from napari_segneuron._model import load_model, load_named, save_checkpoint
from napari_segneuron._model.info import ModelInfo
from napari_segneuron._model.vit3d import build_vit3d
from napari_segneuron.inference import Predictor


def test_bundled_weights_declare_typed_values():
    info = load_named("default").info
    assert isinstance(info, ModelInfo)
    assert info.fg_threshold == 0.75 and info["fg_threshold"] == 0.75
    assert info.voxel_size_nm is not None and len(info.voxel_size_nm) == 3
    assert all(isinstance(v, float) and v > 0 for v in info.voxel_size_nm)
    assert len(info.sha256) == 64 and info.n_parameters > 0 and info.kn == tuple(info["kn"])
    # the mapping view holds every typed entry, and a copy as a plain dict equals it
    assert {"name", "path", "sha256", "voxel_size_nm", "fg_threshold", "metadata"} <= set(info)
    assert info.to_dict() == dict(info) and info == info.to_dict()


def test_checkpoint_declarations_are_checked(tmp_path, tiny_model_cpu):
    bad = save_checkpoint(tiny_model_cpu, tmp_path / "bad.pt",
                          metadata={"fg_threshold": 3.0, "voxel_size_nm": [8, -1, 4], "neurite_halfwidth": "wide"})
    info = load_model(bad).info
    assert info.fg_threshold is None and info.voxel_size_nm is None and info.neurite_halfwidth is None
    good = save_checkpoint(tiny_model_cpu, tmp_path / "good.pt",
                           metadata={"fg_threshold": 0.6, "voxel_size_nm": [40, 8, 8], "magnify": 1.5})
    info = load_model(good).info
    assert info.fg_threshold == 0.6 and info.voxel_size_nm == (40.0, 8.0, 8.0) and info.trained_magnify == 1.5
    assert Predictor(load_model(good), device="cpu").model_voxel_size == (40.0, 8.0, 8.0)


def test_assignment_and_plain_dicts(tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")  # its own copy: the shared fixture stays as loaded
    info = ModelInfo.of(model)
    info["voxel_size_nm"] = [10, 10, 10]          # a typed entry is normalised when set
    assert info.voxel_size_nm == (10.0, 10.0, 10.0)
    info["note"] = "mine"                         # anything else is kept, not lost
    assert info["note"] == "mine" and "note" in info.to_dict()
    del info["note"]
    with pytest.raises(KeyError):
        info["note"]
    # a plain dict assigned by a script is read the same way
    model.info = {"name": "x", "voxel_size_nm": (20, 20, 20), "custom": 1}
    typed = ModelInfo.of(model)
    assert typed.name == "x" and typed.voxel_size_nm == (20.0, 20.0, 20.0) and typed.extra == {"custom": 1}
    assert ModelInfo.of(torch.nn.Identity()) == ModelInfo()


def test_lm_model_info_is_typed():
    net = build_vit3d()
    assert isinstance(net.info, ModelInfo) and net.info.family and net.info["n_parameters"] > 0
    net.info.update({"name": "lm", "metadata": {"threshold": 0.4}})
    assert net.info.name == "lm" and net.info["metadata"]["threshold"] == 0.4
