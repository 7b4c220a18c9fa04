"""load_model reads the official and common checkpoint layouts and explains bad files."""
import collections

import pytest
import torch

from napari_segneuron._model import MNet, WeightsError, load_model, save_checkpoint

KN = (4, 8, 12, 16, 20)


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(3)
    model = MNet(kn=KN).eval()
    # make the norms non-trivial so a wrong load would show
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data.uniform_(0.5, 1.5)
    return model


def _same_outputs(a, b):
    x = torch.rand(1, 1, 8, 32, 32)
    with torch.no_grad():
        return all(torch.equal(u, v) for u, v in zip(a(x), b(x)))


@pytest.mark.parametrize("layout", ["bare", "model_weights", "model_state_dict", "state_dict", "model"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_loads_every_layout(tmp_path, reference_model, layout, prefix):
    sd = collections.OrderedDict((prefix + k, v) for k, v in reference_model.state_dict().items())
    obj = sd if layout == "bare" else {layout: sd, "iters": 7}
    path = tmp_path / "w.ckpt"
    torch.save(obj, path)
    model = load_model(path)
    assert not model.training
    assert model.kn == KN and model.fmu == "sub"
    assert _same_outputs(model, reference_model)
    assert model.info["n_parameters"] == sum(p.numel() for p in reference_model.parameters())
    assert len(model.info["sha256"]) == 64


def test_save_checkpoint_is_official_layout_and_round_trips(tmp_path, reference_model):
    path = save_checkpoint(reference_model, tmp_path / "c.pt", iters=12, metadata={"voxel_size_nm": [10, 10, 10]})
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"model_weights", "iters"} and raw["iters"] == 12
    model = load_model(path)
    assert _same_outputs(model, reference_model)
    assert model.info["voxel_size_nm"] == (10, 10, 10) and model.info["iters"] == 12
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_fp16_storage_loads_as_float32(tmp_path, reference_model):
    path = save_checkpoint(reference_model, tmp_path / "h.pt", half=True)
    model = load_model(path)
    assert next(model.parameters()).dtype == torch.float32
    x = torch.rand(1, 1, 8, 32, 32)
    with torch.no_grad():
        assert (model(x)[0] - reference_model(x)[0]).abs().max() < 1e-2


def test_cat_merging_is_inferred(tmp_path):
    path = save_checkpoint(MNet(kn=KN, fmu="cat"), tmp_path / "cat.pt")
    assert load_model(path).fmu == "cat"


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "nope.ckpt")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("these are not weights")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_model(path)


def test_truncated_checkpoint(tmp_path, reference_model):
    path = save_checkpoint(reference_model, tmp_path / "t.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError):
        load_model(path)


class Payload:  # a pickled object that would need code to load
    pass


def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model_weights": Payload()}, path)
    with pytest.raises(WeightsError, match="code execution"):
        load_model(path)


def test_other_architecture_names_the_problem(tmp_path, reference_model):
    sd = dict(reference_model.state_dict())
    del sd["up14_.CB3d.conv2.conv.bias"]
    sd["extra.layer.weight"] = torch.zeros(3)
    sd["outputs.0.weight"] = torch.zeros(5, 4, 1, 1, 1)
    path = tmp_path / "other.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as err:
        load_model(path)
    text = str(err.value)
    assert "missing: up14_.CB3d.conv2.conv.bias" in text
    assert "unexpected: extra.layer.weight" in text
    assert "mismatched: outputs.0.weight" in text


def test_unrelated_network_is_not_an_mnet(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(WeightsError, match="not an MNet"):
        load_model(path)


def test_unavailable_device_is_a_clear_error(tmp_path, reference_model):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    path = save_checkpoint(reference_model, tmp_path / "c.pt")
    with pytest.raises(WeightsError, match="CUDA"):
        load_model(path, device="cuda")


@pytest.mark.parametrize("zipped", [True, False])
def test_metadata_read_maps_zip_files_and_still_reads_old_pickles(tmp_path, zipped):
    """``mmap=True`` (metadata-only reads: declared thresholds, model family) gives the same
    content as a full read, for zip checkpoints and for legacy raw-pickle ones it cannot map."""
    from napari_segneuron._model.registry import declared_fg_threshold
    from napari_segneuron._model.weights import _read_checkpoint

    path = tmp_path / "w.pt"
    ck = {"model_weights": {"a": torch.arange(6.0)}, "iters": 3, "metadata": {"fg_threshold": 0.6}}
    torch.save(ck, path, _use_new_zipfile_serialization=zipped)
    mapped, full = _read_checkpoint(path, mmap=True), _read_checkpoint(path)
    assert mapped["metadata"] == full["metadata"] == {"fg_threshold": 0.6}
    assert torch.equal(mapped["model_weights"]["a"], full["model_weights"]["a"])
    assert declared_fg_threshold(path) == 0.6
    path.write_bytes(path.read_bytes()[:40])  # truncated: a clear error, as without mmap
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        _read_checkpoint(path, mmap=True)
