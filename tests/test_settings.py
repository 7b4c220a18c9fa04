"""One definition per segment setting: dock provenance, CLI flags and settings round-trip."""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from napari_segneuron.cli import build_parser
from napari_segneuron.io import InputError
from napari_segneuron.settings import PredictSettings, SegmentSettings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _parsed(cli_args: list[str]) -> SegmentSettings:
    args = build_parser().parse_args(["segment", "in.tif", "-o", "out.tif", *cli_args])
    return SegmentSettings.from_args(args)


def test_defaults_are_the_command_lines_defaults():
    assert _parsed([]) == SegmentSettings()


@pytest.mark.parametrize("changes", [
    {},
    {"threshold": 0.35, "fg_threshold": 0.6, "min_size": 0},
    {"small": "remove", "background_mode": "exclude", "membrane_fill": 0, "scoring": "mean"},
    {"use_foreground": False, "scoring": "median-all"},
])
def test_settings_to_flags_to_settings(changes):
    s = SegmentSettings(**changes)
    assert _parsed(s.cli_args()) == s


def test_dock_provenance_to_cli_command_to_settings():
    from napari_segneuron._widgets._common import cli_command

    seg = {"fg_threshold": 0.75, "min_size": 80, "membrane_fill": 2, "scoring": "median",
           "scoring_choice": "auto", "threshold": 0.42}
    cmd = cli_command({"source_path": "stack.tif", "segment": seg, "predict": {}})
    words = shlex.split(cmd)
    args = build_parser().parse_args(words[1:])
    got = SegmentSettings.from_args(args)
    assert got == SegmentSettings.from_provenance(seg)
    assert (got.threshold, got.fg_threshold, got.min_size, got.membrane_fill, got.scoring) == (0.42, 0.75, 80, 2, "median")


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"min_size": -1}, {"small": "grow"},
                                 {"background_mode": "x"}, {"scoring": "max"}])
def test_out_of_range_settings_are_refused_by_name(bad):
    with pytest.raises(InputError, match=next(iter(bad))):
        SegmentSettings(**bad).validate()


@pytest.fixture(scope="module")
def snemi() -> dict:
    """The SNEMI3D mini membrane map (real EM) as affinities and foreground."""
    import tifffile

    from napari_segneuron.segmentation import affinities_from_boundaries

    b = 255 - tifffile.imread(DATA / "snemi_mini_boundary_probability.tif")
    return dict(affinities=affinities_from_boundaries(b), foreground=1.0 - b.astype(np.float32) / 255.0)


def test_cli_writes_the_settings_record_it_ran_with(tmp_path, snemi):
    """`segment` on a saved prediction records the settings; they reproduce the same labels."""
    import tifffile

    from napari_segneuron.cli import main
    from napari_segneuron.io import read_metadata, write_prediction
    from napari_segneuron.segmentation import agglomerate

    aff, fg = snemi["affinities"], snemi["foreground"]
    pred = tmp_path / "p.zarr"
    write_prediction(pred, aff, fg, metadata={})
    out = tmp_path / "l.tif"
    assert main(["segment", str(pred), "-o", str(out), "--threshold", "0.4", "--membrane-fill", "1"]) == 0
    record = read_metadata(out)["segment"]
    s = SegmentSettings.from_provenance(record)
    assert (s.threshold, s.membrane_fill) == (0.4, 1)
    again = agglomerate(aff, fg, max_threshold=s.threshold, **s.agglomerate_kwargs()).labels(s.threshold)
    assert np.array_equal(np.squeeze(tifffile.imread(out)), again)


# -- predict settings ---------------------------------------------------------------------------
def _parsed_predict(cli_args: list[str], command: str = "predict") -> PredictSettings:
    args = build_parser().parse_args([command, "in.tif", "-o", "out.zarr", *cli_args])
    return PredictSettings.from_args(args)


@pytest.mark.parametrize("command", ["predict", "segment"])
def test_predict_defaults_are_the_command_lines_defaults(command):
    assert _parsed_predict([], command) == PredictSettings()
    assert PredictSettings().magnify_is_auto and PredictSettings().tta == "min"


@pytest.mark.parametrize("changes", [
    {},
    {"tile": (24, 160, 160), "overlap": (4, 16, 16), "batch_size": 2, "tta": "mean", "magnify": 1.5},
    {"device": "cpu", "half": True, "tta": False, "magnify": 1.0, "model_voxel_size": (40, 8, 8)},
    {"official_tiling": True, "magnify": 2},
])
def test_predict_settings_to_flags_and_provenance_and_back(changes):
    s = PredictSettings(**changes).validate()
    assert _parsed_predict(s.cli_args()) == s
    assert PredictSettings.from_provenance(s.provenance()) == s


def test_predict_provenance_gives_the_magnification_the_run_used():
    # the dock's record after 'auto' estimated 1.5: the command reproduces 1.5, not a new estimate
    assert PredictSettings.from_provenance({"magnify": 1.5, "magnify_auto": True, "tta": "min"}).magnify == 1.5
    assert PredictSettings.from_provenance({"magnify_auto": True}).magnify_is_auto
    assert PredictSettings.from_provenance({"magnify_auto": False}).magnify == 1.0
    assert PredictSettings.from_provenance({}).tta is False  # a record without flips ran without them


def test_the_predictor_follows_the_settings(tiny_model_cpu):
    p = PredictSettings(tile=(16, 64, 64), overlap=(4, 16, 16), device="cpu", tta=False,
                        model_voxel_size=(30, 30, 30)).predictor(tiny_model_cpu)
    assert tuple(p.tiling.tile) == (16, 64, 64) and tuple(p.tiling.overlap) == (4, 16, 16)
    assert p.tta is False and p.model_voxel_size == (30.0, 30.0, 30.0) and p.device.type == "cpu"


@pytest.mark.parametrize("bad, name", [({"tile": (0, 64, 64)}, "tile"), ({"overlap": (1, 2)}, "overlap"),
                                       ({"batch_size": -1}, "batch_size"), ({"device": "tpu"}, "device"),
                                       ({"magnify": -2}, "magnify"), ({"tta": "max"}, "augmentation")])
def test_out_of_range_predict_settings_are_refused_by_name(bad, name):
    with pytest.raises(InputError, match=name):
        PredictSettings(**bad).validate()
