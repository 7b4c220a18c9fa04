"""Small Qt helpers shared by the docks: layer pickers, geometry, provenance."""
from __future__ import annotations

import shlex
from typing import Any, Optional, Sequence

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QScrollArea,
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


#: the least height of a dock's scrolling form: two docks on one side of the window both stay usable
MIN_FORM_HEIGHT = 220


class FormScroll(QScrollArea):
    """A dock's form in a vertical scroll area: at least as wide as the form needs (the dock never
    clips it on the right) and ``MIN_FORM_HEIGHT`` high (another dock beside it can shrink it to
    a scrolling window, never to one row)."""

    def __init__(self, body: QWidget, parent=None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setWidget(body)
        body.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if obj is self.widget() and event.type() == QEvent.LayoutRequest:
            self.updateGeometry()  # the form grew (e.g. a longer model line): the dock follows
        return super().eventFilter(obj, event)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        body = self.widget()
        width = (body.minimumSizeHint().width() if body is not None else 0) + self.verticalScrollBar().sizeHint().width()
        margins = self.contentsMargins()  # napari's style sheet draws a frame even with NoFrame
        return QSize(width + margins.left() + margins.right(), MIN_FORM_HEIGHT)


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

    def entries(self, names: list) -> list:
        """The entries shown for these layer names (subclasses add fixed choices)."""
        return ([self.placeholder] if self.allow_none or not names else []) + names

    def refresh(self, event=None) -> None:
        current = self.currentText()
        items = self.entries([lay.name for lay in self.layers()])
        self.blockSignals(True)
        self.clear()
        self.addItems(items)
        if current in items:
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
    """The file the layer was read from: ``layer.source.path``, or the packaged file of
    this plugin's sample data; None when there is none (an array made in Python)."""
    try:
        source = layer.source
        path, sample = source.path, source.sample
    except Exception:
        path, sample = None, None
    if path:
        return str(path)
    if sample and sample[0] == "napari-segneuron":
        from .. import samples as _sample_data

        packaged = _sample_data.RAW_PATH if isinstance(layer, _image_type()) else _sample_data.LABELS_PATH
        return str(packaged)
    return None


def _image_type():
    import napari.layers

    return napari.layers.Image


def placeholder_path(layer_name: Optional[str]) -> str:
    """A clearly-named stand-in for an image that has no file (edit it before running)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (layer_name or "image")).strip("_") or "image"
    return f"PATH/TO/{safe}.tif"


def file_voxel_size(path: Optional[str]) -> Optional[tuple[float, float, float]]:
    """Voxel size (nm) from a tif's ImageJ/resolution tags or a zarr's ``voxel_size_nm``; None if unknown."""
    if not path:
        return None
    from pathlib import Path

    from .. import io

    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff") and p.is_file():
            import tifffile

            with tifffile.TiffFile(p) as tif:
                return io._tif_voxel_size(tif)
        if str(p).rstrip("/").lower().endswith(".zarr") and p.exists():
            return io.read_volume(p)[1]
    except Exception:  # noqa: BLE001 - unknown is a valid answer
        return None
    return None


class VoxelSizeField(QWidget):
    """Voxel size (z, y, x) in nm; a 0 anywhere reads as "unknown" (shown as ?)."""

    def __init__(self, tooltip: str = "", parent=None):
        super().__init__(parent)

        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.boxes: list[QDoubleSpinBox] = []
        for axis in "zyx":
            box = QDoubleSpinBox()
            box.setRange(0.0, 100_000.0)
            box.setDecimals(2)
            box.setSingleStep(1.0)
            box.setPrefix(f"{axis} ")
            box.setSpecialValueText(f"{axis} ?")
            box.setButtonSymbols(QAbstractSpinBox.NoButtons)
            box.setToolTip(tooltip)
            box.setMinimumWidth(40)
            lay.addWidget(box)
            self.boxes.append(box)
        self.setToolTip(tooltip)

    def value(self) -> Optional[tuple[float, float, float]]:
        vals = tuple(float(b.value()) for b in self.boxes)
        return None if min(vals) <= 0 else vals  # type: ignore[return-value]

    def set_value(self, values: Optional[Sequence[float]]) -> None:
        vals = list(values) if values is not None else [0.0, 0.0, 0.0]
        for b, v in zip(self.boxes, vals[-3:]):
            b.setValue(float(v))


# -- provenance -------------------------------------------------------------------------
def weights_provenance(model) -> dict:
    info = dict(getattr(model, "info", {}) or {})
    return {
        "name": info.get("name"),
        "sha256": info.get("sha256"),
        "path": info.get("path"),
        "kn": list(info["kn"]) if info.get("kn") is not None else None,
        "n_parameters": info.get("n_parameters"),
        "fg_threshold": info.get("fg_threshold"),  # the foreground threshold these weights declare (None: none)
    }


def cli_command(prov: dict, output: Optional[str] = None) -> str:
    """The ``napari-segneuron segment`` command that reproduces a run headless."""
    src = prov.get("source_path") or placeholder_path(prov.get("source_image"))
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
    from ..settings import PredictSettings, SegmentSettings

    args += PredictSettings.from_provenance(pred).cli_args()
    args += SegmentSettings.from_provenance(seg).cli_args()
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
