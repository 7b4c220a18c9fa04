"""Per-machine settings by measurement: probe selection, caching and tile choice, with faked timings."""
import json

import numpy as np
import pytest
import torch

from napari_segneuron import autotune
from napari_segneuron.autotune import Config, Tuning, choose_tile, probe, tuning_for
from napari_segneuron.inference import Predictor, Tiling, plan_tiles


def fake_measure(table, calls=None):
    """Seconds = voxels x µs per voxel from ``table(config, tile)``: no real timing."""
    def measure(cfg: Config, tile, repeats):
        if calls is not None:
            calls.append((cfg, tuple(tile)))
        return table(cfg, tile) * float(np.prod(tile)) * 1e-6
    return measure


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0  # every reading is one second later
        return self.t


def avx2_like(cfg, tile):
    """An AVX2 EPYC as in issue 15: 2 threads help, channels_last and bf16 hurt, big tiles cost more."""
    us = 9.0 * (0.55 if cfg.threads == 2 else 1.0) * (1.2 if cfg.channels_last else 1.0)
    us *= 8.0 if cfg.precision == "bfloat16" else 1.0
    return us * (1.0 + 0.4 * np.log2(np.prod(tile) / (16 * 64 * 64)))


def avx512_like(cfg, tile):
    us = 4.0 * (0.55 if cfg.threads == 2 else 1.0) * (0.8 if cfg.channels_last else 1.0)
    us *= 0.7 if cfg.precision == "bfloat16" else 1.0
    return us * (1.0 - 0.05 * np.log2(np.prod(tile) / (16 * 64 * 64)))


def test_probe_picks_the_fastest_measured_settings():
    net = torch.nn.Conv3d(1, 4, 1)
    t = probe(net, "cpu", measure=fake_measure(avx2_like), timer=FakeClock(), threads=[2, 1], reduced="bfloat16",
              budget_s=100)
    assert (t.threads, t.channels_last, t.precision) == (2, False, "fp32")
    assert t.reduced_speedup == pytest.approx(1 / 8)
    assert [v for v, _ in t.curve] == [16 * 64 * 64, 24 * 128 * 128]  # stopped: > 1.3x worse than the best
    t = probe(net, "cpu", measure=fake_measure(avx512_like), timer=FakeClock(), threads=[2, 1], reduced="bfloat16",
              budget_s=100)
    assert (t.threads, t.channels_last, t.precision) == (2, True, "bfloat16") and t.reduced_speedup > 1
    assert len(t.curve) == len(autotune.TILE_CANDIDATES)
    labels = [m["config"] for m in t.measurements]
    assert labels[:4] == ["2 threads, contiguous, fp32", "1 thread, contiguous, fp32",
                          "2 threads, channels_last_3d, fp32", "2 threads, channels_last_3d, bfloat16"]


def test_probe_respects_its_time_budget():
    calls = []
    probe(torch.nn.Conv3d(1, 4, 1), "cpu", measure=fake_measure(avx512_like, calls), timer=FakeClock(),
          threads=[1], reduced=None, budget_s=0.5)
    tiles = [c[1] for c in calls]
    # two configurations on the small tile, always a second size, then the clock has run past 0.5 s
    assert tiles.count((16, 64, 64)) == 2 and tiles.count((24, 128, 128)) == 1 and len(tiles) == 3


def test_tuning_is_cached_per_machine_and_architecture(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path))
    calls = []
    kw = dict(measure=fake_measure(avx512_like, calls), timer=FakeClock(), threads=[1], reduced=None)
    net = torch.nn.Conv3d(1, 4, 1)
    first = tuning_for(net, "cpu", **kw)
    n = len(calls)
    assert n > 0 and "autotune" in capsys.readouterr().err
    again = tuning_for(net, "cpu", **kw)
    assert len(calls) == n and again.curve == first.curve and capsys.readouterr().err == ""  # cached, silent
    data = json.loads((tmp_path / "autotune.json").read_text())
    (key,) = data
    assert key.startswith("cpu|") and "Conv3d" in key and data[key]["threads"] == 1
    other = tuning_for(torch.nn.Conv3d(1, 8, 1), "cpu", **kw)  # another architecture: probed again
    assert len(calls) > n and len(json.loads((tmp_path / "autotune.json").read_text())) == 2
    m = len(calls)
    tuning_for(net, "cpu", force=True, **kw)  # --autotune
    assert len(calls) > m and other.model != first.model


def test_corrupt_or_old_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path))
    (tmp_path / "autotune.json").write_text("{not json")
    calls = []
    tuning_for(torch.nn.Conv3d(1, 4, 1), "cpu", quiet=True, measure=fake_measure(avx512_like, calls),
               timer=FakeClock(), threads=[1], reduced=None)
    assert calls


def _tuning(curve):
    return Tuning(machine="m", model="a", threads=1, channels_last=False, precision="fp32", reduced_speedup=0.0,
                  curve=curve)


def _plan_fn(shape, tile, overlap):
    return plan_tiles(shape, Tiling(tile, overlap), (1, 16, 16))


def test_cost_curve_interpolates_and_extrapolates_a_rise_only():
    rising = _tuning([[1000, 2.0], [8000, 5.0]])
    assert rising.us_per_voxel(500) == 2.0 and rising.us_per_voxel(8000) == 5.0
    assert 2.0 < rising.us_per_voxel(2828) < 5.0
    assert rising.us_per_voxel(64000) == pytest.approx(8.0)  # the same rise per factor of 8
    falling = _tuning([[1000, 5.0], [8000, 2.0]])
    assert falling.us_per_voxel(64000) == 2.0
    probed = probe(torch.nn.Conv3d(16, 4, 1), "cpu", measure=fake_measure(avx512_like), timer=FakeClock(),
                   threads=[1], reduced=None)
    measured = max(v for v, _ in probed.curve)
    assert probed.largest_tile_voxels == min(autotune.MAX_TILE_VOXELS_AT_16, int(autotune.EXTRAPOLATE * measured))
    assert probed.largest_tile_voxels < autotune.MAX_TILE_VOXELS_AT_16  # the measured sizes cap it here


def test_tile_choice_follows_the_measured_cost():
    flat = _tuning([[16 * 96 * 96, 5.0], [32 * 224 * 224, 5.0]])
    rising = _tuning([[16 * 96 * 96, 5.0], [32 * 224 * 224, 15.0]])
    shape = (40, 256, 256)
    tile_flat, plan_flat, secs_flat = choose_tile(shape, flat, (8, 32, 32), (1, 16, 16), _plan_fn)
    tile_rise, plan_rise, secs_rise = choose_tile(shape, rising, (8, 32, 32), (1, 16, 16), _plan_fn)
    # flat cost: the least overcompute wins; rising cost: smaller tiles despite more overlap
    assert plan_flat.overcompute < plan_rise.overcompute
    assert np.prod(plan_rise.tile) < np.prod(plan_flat.tile)
    assert secs_flat == pytest.approx(plan_flat.overcompute * np.prod(shape) * 5e-6)
    assert np.prod(tile_flat) <= 2 * 32 * 224 * 224  # at most 2x the largest size measured


def test_tuned_predictor_uses_the_tuning(monkeypatch, capsys):
    from napari_segneuron import precision

    monkeypatch.setattr(precision, "_NOTED", set())
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    t = Tuning(machine="m", model="a", threads=1, channels_last=True, precision="fp32", reduced_speedup=0.7,
               curve=[[8 * 32 * 32, 1.0], [16 * 64 * 64, 1.0]])
    net = torch.nn.Conv3d(1, 2, 1)
    p = Predictor(net, tune=t, half=True)
    assert p.channels_last and p.threads == 1 and not p.half and "measured slower" in capsys.readouterr().err
    plan = p.plan((20, 50, 70))
    assert np.prod(plan.tile) <= 4 * 16 * 64 * 64
    vol = np.random.default_rng(0).integers(0, 255, (20, 50, 70), dtype=np.uint8)
    raw = p.predict_raw(vol)
    ref = Predictor(net, tile=(20, 64, 80), overlap=(0, 0, 0)).predict_raw(vol)
    np.testing.assert_allclose(raw, ref, atol=1e-5)  # a pointwise network: tiling must not matter
    assert p.settings()["autotune"]["threads"] == 1 and torch.get_num_threads() >= 1


def test_real_timing_runs(tmp_path):
    """The real measuring path runs (no assertion on the time itself)."""
    secs = autotune.time_forward(torch.nn.Conv3d(1, 2, 3, padding=1), torch.device("cpu"),
                                 Config(1, True, "fp32"), (4, 16, 16))
    assert secs > 0


def test_half_uses_the_cached_measurement_without_tuning(tmp_path, monkeypatch, capsys):
    """Library callers (the dock) that ask for half precision get fp32 where bf16 measured slower."""
    from napari_segneuron import precision
    from napari_segneuron.autotune import machine_key, model_key, store

    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path))
    monkeypatch.setenv("NAPARI_SEGNEURON_AUTOTUNE", "on")
    monkeypatch.setattr(precision, "_NOTED", set())
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    net = torch.nn.Conv3d(1, 2, 1)
    slower = Tuning(machine=machine_key(torch.device("cpu")), model=model_key(net), threads=1, channels_last=False,
                    precision="fp32", reduced_speedup=0.8, curve=[[4096, 1.0], [8192, 1.0]])
    store(slower)
    p = Predictor(net, half=True)
    assert not p.half and p.tuning is None and "measured slower" in capsys.readouterr().err
    slower.precision, slower.reduced_speedup = "bfloat16", 1.4
    store(slower)
    assert Predictor(net, half=True).half


def test_cli_autotune_flag_probes_and_records_provenance(tmp_path, monkeypatch, capsys):
    """``predict --autotune`` measures (small candidates here), prints once, and stores the result
    in the cache and in the output's provenance (no assertion on the timings themselves)."""
    import tifffile

    from napari_segneuron._model import MNet, save_checkpoint
    from napari_segneuron.cli import main
    from napari_segneuron.io import read_metadata

    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "TILE_CANDIDATES", ((4, 16, 16), (4, 32, 32)))
    monkeypatch.setattr(autotune, "DEFAULT_BUDGET_S", 2.0)
    torch.manual_seed(0)
    ckpt = save_checkpoint(MNet(kn=(4, 8, 8, 16, 16)), tmp_path / "tiny.ckpt", metadata={"name": "tiny"})
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.random.default_rng(0).integers(0, 255, (6, 32, 48), dtype=np.uint8))
    out = tmp_path / "pred.tif"
    assert main(["predict", str(stack), "-o", str(out), "--weights", str(ckpt), "--autotune"]) == 0
    err = capsys.readouterr().err
    assert err.count("autotune (") == 1
    prov = read_metadata(out)["inference"]
    assert prov["autotune"]["threads"] >= 1 and prov["tile"] == [32, 192, 192]  # the tuning never picks the tile
    assert (tmp_path / "cache" / "autotune.json").exists()


def test_timings_taken_on_a_busy_machine_are_measured_again_when_quiet(tmp_path, monkeypatch, capsys):
    """A probe that shared the CPU with other work (load above 1 per core) says little about this
    machine: the next run on a quiet machine measures again; a quiet record is kept."""
    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path))
    load = {"now": 6.0}
    monkeypatch.setattr(autotune.os, "getloadavg", lambda: (load["now"], 0.0, 0.0))
    monkeypatch.setattr(autotune.os, "cpu_count", lambda: 2)
    calls = []
    kw = dict(measure=fake_measure(avx512_like, calls), timer=FakeClock(), threads=[1], reduced=None)
    net = torch.nn.Conv3d(1, 4, 1)
    busy = tuning_for(net, "cpu", **kw)
    assert busy.load_per_core == 3.0 and busy.provenance()["load_per_core"] == 3.0
    n = len(calls)
    tuning_for(net, "cpu", **kw)  # still busy: the record is used (nothing better to measure now)
    assert len(calls) == n
    load["now"] = 0.4
    capsys.readouterr()
    quiet = tuning_for(net, "cpu", **kw)
    assert len(calls) > n and "busy machine" in capsys.readouterr().err
    assert quiet.load_per_core == 0.2
    m = len(calls)
    tuning_for(net, "cpu", **kw)
    assert len(calls) == m  # the quiet record stays
