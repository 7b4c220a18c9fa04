"""Test-time augmentation settings, without torch (the CLI parser and the docks read them).

``inference.Predictor(tta=...)`` does the work; this module names the modes and the plugin's
default so that every entry point (command line, SegNeuron dock, demo) agrees.
"""
from __future__ import annotations

from typing import Union

from .io import InputError

#: test-time augmentation modes (``Predictor(tta=...)``, CLI ``--tta [off|mean|min]``)
TTA_MODES = ("mean", "min")
#: every value the command line accepts (``off`` predicts once)
TTA_ARGUMENTS = ("off", *TTA_MODES)
#: the plugin's default (command line, SegNeuron dock, demo): each affinity's lowest of the four
#: y/x flip views (4x the compute; fewer merges on every held-out volume, see the model card).
#: ``Predictor`` itself stays plain unless asked, so library calls cost one pass.
DEFAULT_TTA = "min"


def tta_mode(tta: Union[bool, str, None]) -> Union[str, bool]:
    """``tta`` as the predictor keeps it: False (off), "mean" (True means "mean") or "min"."""
    if tta is None or tta is False or tta in ("", "off", "none"):
        return False
    if tta is True:
        return "mean"
    if isinstance(tta, str) and tta in TTA_MODES:
        return tta
    raise InputError(f"Test-time augmentation must be off, 'mean' or 'min', not {tta!r}")
