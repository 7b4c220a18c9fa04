"""Precision by device: reduced precision only where the hardware runs it natively (faked capabilities)."""
import numpy as np
import pytest
import torch

from napari_segneuron import precision
from napari_segneuron.precision import choose_precision, cpu_has_native_bf16, reported_flags

AVX2_EPYC = {"sse4_2", "avx", "avx2", "fma", "f16c"}
SAPPHIRE_RAPIDS = AVX2_EPYC | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"}


def test_native_bf16_detection_from_flags():
    assert not cpu_has_native_bf16(AVX2_EPYC, capability="AVX2")
    assert not cpu_has_native_bf16(AVX2_EPYC | {"avx512f"}, capability="AVX512")  # AVX-512 without BF16
    assert cpu_has_native_bf16(AVX2_EPYC | {"avx512_bf16"}, capability="AVX512")
    assert cpu_has_native_bf16(AVX2_EPYC | {"amx_bf16"}, capability="AVX512")
    assert cpu_has_native_bf16({"fp", "asimd", "bf16"}, capability="DEFAULT")  # aarch64
    assert not cpu_has_native_bf16(set(), capability="AVX512") and cpu_has_native_bf16(set(), capability="AMX_BF16")
    assert reported_flags(SAPPHIRE_RAPIDS)[:2] == ["avx2", "fma"] and "amx_bf16" in reported_flags(SAPPHIRE_RAPIDS)


def test_this_machine_is_read_from_proc_cpuinfo():
    flags = precision.cpu_flags()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert ("avx512_bf16" in text or "amx_bf16" in text) == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert precision.cpu_model()


@pytest.mark.parametrize("training", [False, True])
def test_cpu_precision_decision(training):
    assert choose_precision("cpu", False, training, flags=SAPPHIRE_RAPIDS).dtype is None
    native = choose_precision("cpu", True, training, flags=SAPPHIRE_RAPIDS)
    assert native.dtype == torch.bfloat16 and native.note == "" and native.name == "bfloat16"
    emulated = choose_precision("cpu", True, training, flags=AVX2_EPYC, capability="AVX2")
    assert emulated.dtype is None and "no native bfloat16" in emulated.note and emulated.name == "fp32"


def test_gpu_precision_decision():
    assert choose_precision("cuda", True).dtype == torch.float16
    assert choose_precision("cuda", True, training=True, cuda_bf16=True).dtype == torch.bfloat16
    assert choose_precision("cuda", True, training=True, cuda_bf16=False).dtype == torch.float16


def test_predictor_half_falls_back_to_fp32_with_one_note(monkeypatch, capsys):
    """--half on a CPU without bf16: exactly the fp32 result, and the note printed once."""
    from napari_segneuron.inference import Predictor
    from napari_segneuron._model import MNet

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AVX2_EPYC))
    monkeypatch.setattr(precision, "cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(precision, "_NOTED", set())
    torch.manual_seed(0)
    net = MNet(kn=(4, 8, 8, 16, 16)).eval()
    vol = np.random.default_rng(0).integers(0, 255, (8, 32, 48), dtype=np.uint8)
    half = Predictor(net, tile=(8, 32, 48), overlap=(0, 0, 0), half=True)
    half2 = Predictor(net, tile=(8, 32, 48), overlap=(0, 0, 0), half=True)
    assert not half.half and half.half_requested and half.precision.dtype is None and not half2.half
    assert capsys.readouterr().err.count("no native bfloat16") == 1
    a_half, _ = half.predict(vol)
    a_full, _ = Predictor(net, tile=(8, 32, 48), overlap=(0, 0, 0)).predict(vol)
    np.testing.assert_array_equal(a_half, a_full)
    # with native bf16 faked, the same request turns autocast on (and changes the result a little)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(SAPPHIRE_RAPIDS))
    native = Predictor(net, tile=(8, 32, 48), overlap=(0, 0, 0), half=True)
    assert native.half and native.precision.dtype == torch.bfloat16
    a_bf16, _ = native.predict(vol)
    assert 0 < np.abs(a_bf16 - a_full).max() < 0.1


def test_training_autocast_follows_the_cpu(monkeypatch):
    from napari_segneuron.training.finetune import autocast_for

    monkeypatch.setattr(precision, "_NOTED", set())
    x = torch.rand(2, 4)
    lin = torch.nn.Linear(4, 4)
    with autocast_for(torch.device("cpu"), True, flags=AVX2_EPYC):
        assert lin(x).dtype == torch.float32
    with autocast_for(torch.device("cpu"), True, flags=SAPPHIRE_RAPIDS):
        assert lin(x).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu"), False, flags=SAPPHIRE_RAPIDS):
        assert lin(x).dtype == torch.float32
