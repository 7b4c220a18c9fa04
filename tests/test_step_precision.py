"""Mixed precision in training only where a timed step says it is faster (``training.step_precision``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segneuron.training import augment as A
from napari_segneuron.training.checkpoints import read_checkpoint
from napari_segneuron.training.finetune import build_mnet, finetune
from napari_segneuron.training.step_precision import loss_on_one_batch, time_training_step, use_mixed_precision

KN = (4, 8, 12, 16, 20)
BF16 = {"avx2", "avx512f", "avx512_bf16"}
SHAPE = (1, 1, 8, 32, 32)


class FakeTimer:
    """Step times per precision, counting the calls."""

    def __init__(self, fp32: float, bf16: float):
        self.times = {False: fp32, True: bf16}
        self.calls = 0

    def __call__(self, model, shape, device, mixed):
        self.calls += 1
        return self.times[mixed]


@pytest.mark.parametrize("fp32,bf16,expected", [(1.7, 2.0, False), (0.9, 0.45, True), (1.0, 0.97, False)])
def test_measured_choice_is_cached_per_machine_model_and_shape(tmp_path, fp32, bf16, expected):
    net, cache = build_mnet(KN), tmp_path / "train_precision.json"
    timer = FakeTimer(fp32, bf16)
    kw = dict(flags=BF16, timer=timer, path=cache, measure=True)
    assert use_mixed_precision(net, SHAPE, "cpu", True, **kw) is expected
    assert timer.calls == 2 and cache.is_file()
    # asked again: the cached answer, no second measurement
    assert use_mixed_precision(net, SHAPE, "cpu", True, **kw) is expected
    assert timer.calls == 2
    # another batch shape is measured on its own
    use_mixed_precision(net, (2, 1, 8, 32, 32), "cpu", True, **kw)
    assert timer.calls == 4


def test_no_measurement_when_not_asked_or_not_native(tmp_path):
    net, timer = build_mnet(KN), FakeTimer(1.0, 0.5)
    cache = tmp_path / "c.json"
    assert use_mixed_precision(net, SHAPE, "cpu", False, flags=BF16, timer=timer, path=cache, measure=True) is False
    # no native bf16 (AVX2 only): emulated bf16 is never used, nothing is timed
    assert use_mixed_precision(net, SHAPE, "cpu", True, flags={"avx2", "fma"}, timer=timer, path=cache,
                               measure=True) is False
    # measuring switched off (NAPARI_SEGNEURON_AUTOTUNE=off): the flag-based choice
    assert use_mixed_precision(net, SHAPE, "cpu", True, flags=BF16, timer=timer, path=cache, measure=False) is True
    assert timer.calls == 0 and not cache.exists()


def test_a_corrupt_cache_is_measured_again(tmp_path):
    net, cache = build_mnet(KN), tmp_path / "c.json"
    cache.write_text("{not json")
    timer = FakeTimer(1.0, 2.0)
    assert use_mixed_precision(net, SHAPE, "cpu", True, flags=BF16, timer=timer, path=cache, measure=True) is False
    assert timer.calls == 2


def _sampler(seed: int = 3):
    from napari_segneuron.training.data import CropSampler, TrainVolume

    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (10, 40, 40), dtype=np.uint8)
    lab = (np.arange(40)[None, None, :] // 10 + 1).repeat(40, 1).repeat(10, 0).astype(np.uint32)
    return CropSampler([TrainVolume(img, lab)], (8, 32, 32), A.AugmentConfig.none(), seed=seed)


def _loss(net, sampler, batch_size=1):
    from napari_segneuron.training.finetune import segmentation_loss

    return loss_on_one_batch(sampler, batch_size, lambda b, mixed: segmentation_loss(net, b, "cpu",
                                                                                     mixed_precision=mixed)[0])


def test_timing_a_step_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    net = build_mnet(KN).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seconds = time_training_step(net, _loss(net, _sampler()), torch.device("cpu"), mixed=False, repeats=1)
    assert 0 < seconds < 60
    assert not net.training
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_finetune_records_the_precision_it_measured(tmp_path, monkeypatch):
    """A real measurement inside ``finetune``: the checkpoint says which precision the steps used,
    and it is the one the cache holds for this machine and batch shape."""
    import json

    from napari_segneuron import precision
    from napari_segneuron.training import step_precision

    if precision.choose_precision("cpu", True, training=True).dtype is None:
        pytest.skip("this CPU has no native bfloat16: mixed precision is never measured here")
    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NAPARI_SEGNEURON_AUTOTUNE", "on")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (10, 40, 40), dtype=np.uint8)
    lab = (np.arange(40)[None, None, :] // 10 + 1).repeat(40, 1).repeat(10, 0).astype(np.uint32)
    ck = tmp_path / "ft.pt"
    finetune(build_mnet(KN), img, lab, iterations=2, batch_size=1, crop=(8, 32, 32), warmup=0,
             mixed_precision=True, augment=A.AugmentConfig.none(), checkpoint=ck, device="cpu")
    cached = json.loads(step_precision.cache_path().read_text())
    (entry,) = cached.values()
    assert entry["fp32_s"] > 0 and entry["bf16_s"] > 0
    assert entry["mixed"] == (entry["bf16_s"] < entry["fp32_s"] * (1 - step_precision.MIN_GAIN))
    assert read_checkpoint(ck)["metadata"]["mixed_precision"] is entry["mixed"]


def test_the_timed_batch_does_not_move_the_run_s_random_crops():
    """The step that is timed uses one of the run's own batches, drawn without advancing the
    sampler: a run's crops are the same whether or not a measurement happened."""
    timed, plain = _sampler(), _sampler()
    net = build_mnet(KN)
    seconds = time_training_step(net, _loss(net, timed, 2), torch.device("cpu"), False, repeats=1)
    assert seconds > 0 and all(p.grad is None for p in net.parameters())
    a, b = timed.batch(2), plain.batch(2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
