"""Small Qt helpers shared by the docks: layer pickers, geometry, provenance."""
from __future__ import annotations

import shlex
from typing import Any, Optional, Sequence

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)


def plugin_version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except Exception:  # pragma: no cover
        return "unknown"


class LayerCombo(QComboBox):
    """A drop-down of the viewer's layers of some types, kept in sync with the layer list."""

    def __init__(self, viewer, layer_types: Sequence[type], placeholder: str = "(none)", parent=None,
                 allow_none: bool = False):
        super().__init__(parent)
        self.viewer = viewer
        self.layer_types = tuple(layer_types)
        self.placeholder = placeholder
        self.allow_none = allow_none
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        events.inserted.connect(self.refresh)
        events.removed.connect(self.refresh)
        events.moved.connect(self.refresh)
        events.inserted.connect(self._watch_names)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _watch_names(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)

    def layers(self) -> list:
        return [lay for lay in self.viewer.layers if isinstance(lay, self.layer_types)]

    def refresh(self, event=None) -> None:
        current = self.currentText()
        names = [lay.name for lay in self.layers()]
        self.blockSignals(True)
        self.clear()
        if self.allow_none or not names:
            self.addItem(self.placeholder)
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def value(self):
        """The selected layer, or None."""
        name = self.currentText()
        for lay in self.layers():
            if lay.name == name:
                return lay
        return None

    def set_value(self, layer) -> None:
        if layer is not None:
            self.refresh()
            self.setCurrentText(layer.name)


class TripleSpin(QWidget):
    """Three integer spin boxes for (z, y, x)."""

    def __init__(self, values: Sequence[int], minimum: int = 0, maximum: int = 4096, step: int = 1,
                 tooltip: str = "", parent=None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.boxes = []
        for axis, v in zip("zyx", values):
            box = QSpinBox()
            box.setRange(minimum, maximum)
            box.setSingleStep(step)
            box.setValue(int(v))
            box.setPrefix(f"{axis} ")
            box.setToolTip(tooltip)
            box.setButtonSymbols(QAbstractSpinBox.NoButtons)
            box.setMinimumWidth(30)
            lay.addWidget(box)
            self.boxes.append(box)
        self.setToolTip(tooltip)

    def value(self) -> tuple[int, int, int]:
        return tuple(int(b.value()) for b in self.boxes)  # type: ignore[return-value]

    def set_value(self, values: Sequence[int]) -> None:
        for b, v in zip(self.boxes, values):
            b.setValue(int(v))


class Collapsible(QWidget):
    """A titled section that opens and closes (for advanced settings)."""

    def __init__(self, title: str, content: QWidget, expanded: bool = False, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.button = QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setChecked(expanded)
        self.button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.button.setStyleSheet("QToolButton { border: none; }")
        self.content = content
        lay.addWidget(self.button)
        lay.addWidget(content)
        self.button.toggled.connect(self._toggle)
        self._toggle(expanded)

    def _toggle(self, on: bool) -> None:
        self.button.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self.content.setVisible(on)


def double_spin(value: float, lo: float, hi: float, step: float, decimals: int = 2, tooltip: str = "") -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    box.setValue(value)
    box.setToolTip(tooltip)
    return box


def int_spin(value: int, lo: int, hi: int, step: int = 1, tooltip: str = "", suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tooltip)
    if suffix:
        box.setSuffix(suffix)
    return box


def wrap_label(text: str = "", tooltip: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
    if tooltip:
        lab.setToolTip(tooltip)
    return lab


# -- geometry ---------------------------------------------------------------------------
def spatial_geometry(layer, ndim: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The layer's scale and translate for its last ``ndim`` axes."""
    scale = tuple(float(s) for s in layer.scale[-ndim:])
    translate = tuple(float(t) for t in layer.translate[-ndim:])
    return scale, translate


def layer_source_path(layer) -> Optional[str]:
    try:
        path = layer.source.path
    except Exception:
        path = None
    return str(path) if path else None


# -- provenance -------------------------------------------------------------------------
def weights_provenance(model) -> dict:
    info = dict(getattr(model, "info", {}) or {})
    return {
        "name": info.get("name"),
        "sha256": info.get("sha256"),
        "path": info.get("path"),
        "kn": list(info["kn"]) if info.get("kn") is not None else None,
        "n_parameters": info.get("n_parameters"),
    }


def cli_command(prov: dict, output: Optional[str] = None) -> str:
    """The ``napari-segneuron segment`` command that reproduces a run headless."""
    src = prov.get("source_path") or "IMAGE.tif"
    weights = prov.get("weights") or {}
    wname = weights.get("name") or "default"
    wpath = weights.get("path")
    from .._model import list_weights

    try:
        known = set(list_weights())
    except Exception:  # pragma: no cover
        known = set()
    weights_arg = wname if wname in known else (wpath or wname)
    pred = prov.get("predict") or {}
    seg = prov.get("segment") or {}
    args: list[str] = ["napari-segneuron", "segment", src]
    args += ["-o", output or prov.get("output") or "segmentation.zarr"]
    args += ["--weights", str(weights_arg)]
    if pred.get("tile"):
        args += ["--tile", ",".join(str(v) for v in pred["tile"])]
    if pred.get("overlap"):
        args += ["--overlap", ",".join(str(v) for v in pred["overlap"])]
    if pred.get("batch_size"):
        args += ["--batch-size", str(pred["batch_size"])]
    if pred.get("device") and pred["device"] != "auto":
        args += ["--device", str(pred["device"])]
    if pred.get("half"):
        args += ["--half"]
    if pred.get("tta"):
        args += ["--tta"]
    if seg.get("fg_threshold") is not None:
        args += ["--fg-threshold", f"{seg['fg_threshold']:g}"]
    if seg.get("min_size") is not None:
        args += ["--min-size", str(int(seg["min_size"]))]
    if seg.get("scoring"):
        args += ["--scoring", str(seg["scoring"])]
    if seg.get("threshold") is not None:
        args += ["--threshold", f"{seg['threshold']:g}"]
    if prov.get("voxel_size_nm"):
        args += ["--voxel-size", ",".join(f"{v:g}" for v in prov["voxel_size_nm"])]
    region = prov.get("region")
    if region and region.get("start") is not None and region.get("stop") is not None:
        # a preview: the same box of the stack (drop --roi to run the whole stack)
        args += ["--roi", ",".join(f"{a}:{b}" for a, b in zip(region["start"][-3:], region["stop"][-3:]))]
    return " ".join(shlex.quote(a) for a in args)


def json_safe(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))
