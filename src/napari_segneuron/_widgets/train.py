"""The SegNeuron training dock: finetune on your labels, or pretrain on unlabelled stacks.

Finetune: an image layer + a labels layer of the same shape (0 = membrane/background,
other ids = neurons). The mask (voxels the loss sees) is by default the painted box, the
bounding box of the labels' non-zero voxels: paint the neurons of one block of the stack
and only that block trains; or the whole volume, or a Labels layer's non-zero voxels.
Training runs for a wall-clock budget (Minutes) with the learning rate decaying over it;
then "Re-segment with the adapted model" predicts + segments the image again into new layers. Starts from the model loaded in the SegNeuron dock (or fresh weights);
the trained model becomes the loaded model there, and its Weights box shows the new
checkpoint. "fresh weights" builds the compact architecture of the bundled default.
Pretrain: masked image + HOG reconstruction on one or more image layers; the checkpoint
is then the starting point of a finetune. Cancel stops within the current iteration
(the weights of the last finished step are saved; before the first step, nothing is saved
and no dock changes).
Model LM: Finetune trains the light-microscopy model of the "Trace neurons (LM)" dock
(``training.lm_finetune``) on an LM stack with a Labels layer (> 0 = neuron) or a Shapes
layer of SWC paths (a tracing) rasterised into tubes with the image's scale; picking a
Shapes layer selects LM by itself. The new model goes to the LM dock when it is open.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

import numpy as np
from qtpy.QtCore import QPointF, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ._common import FormScroll, LayerCombo, wrap_label
from ._runner import TaskRunner, error_message, notify_info, notify_warning
from ..calibration import painted_box
from .segment import _available_devices

FINETUNE = "Finetune (image + labels)"
PRETRAIN = "Pretrain (unlabelled images)"
START_LOADED = "loaded model"
START_FRESH = "fresh weights"
START_PRETRAINED = "last pretrained checkpoint"
MASK_BOX = "painted box (auto)"
MASK_ALL = "whole volume annotated"
ADAPTED_SUFFIX = "adapted"
NO_CAP = 10**9  # "no iteration cap": the Minutes budget ends training (= training.loop.NO_ITERATION_CAP)
MODEL_EM = "EM (SegNeuron)"
MODEL_LM = "LM (light microscopy)"
START_LM_DOCK = "model of the LM dock (else lm_default)"
START_LM_DEFAULT = "bundled lm_default"
#: Settings a model family starts with (crop, learning rate); each family keeps its own edits
FAMILY_SETTINGS = {MODEL_EM: {"crop": (16, 96, 96), "lr": 1e-3}, MODEL_LM: {"crop": (20, 112, 112), "lr": 3e-4}}


def describe_box(box) -> str:
    """'40×120×120 at z 10, y 30, x 60' for a (z, y, x) box of (start, stop) pairs."""
    size = "×".join(str(b - a) for a, b in box)
    where = ", ".join(f"{ax} {a}" for ax, (a, _) in zip("zyx"[-len(box):], box))
    return f"{size} at {where}"


def check_box_fits(box, crop) -> None:
    """Raise InputError when the painted box is smaller than a training crop on some axis."""
    from ..io import InputError

    size = [b - a for a, b in box]
    if all(s >= c for s, c in zip(size, crop)):
        return
    fit = (min(size[0], crop[0]), min(crop[1], size[1] // 16 * 16), min(crop[2], size[2] // 16 * 16))
    crop_txt, size_txt = "×".join(map(str, crop)), "×".join(map(str, size))
    if min(fit) < 1:
        raise InputError(f"The painted box is only {size_txt} voxels: paint a block at least 16×16 pixels in y and x "
                         f"(better {crop_txt}, the training crop) over several slices")
    raise InputError(f"The painted box ({size_txt}) is smaller than a training crop ({crop_txt}): paint a larger "
                     f"block, or set Crop in Settings to at most {fit[0]}, {fit[1]}, {fit[2]}")


def dock_of(widget):
    """The QDockWidget holding ``widget`` (napari's dock wrapper), or None."""
    from qtpy.QtWidgets import QDockWidget

    w = widget.parentWidget() if widget is not None else None
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


def model_title(model) -> str:
    """How the Start choice names a model: its registry name ('default'), else its checkpoint's file name."""
    from .._model.registry import REGISTRY

    info = getattr(model, "info", None) or {}
    name, path = info.get("name"), info.get("path")
    if name in REGISTRY or not path:
        return str(name or "unnamed model")
    return Path(path).name


class StartCombo(QComboBox):
    """The Start choice; ``before_popup`` renames the items (the loaded model may have changed)."""

    def __init__(self, before_popup, parent=None):
        super().__init__(parent)
        self._before_popup = before_popup
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(16)

    def showPopup(self) -> None:  # noqa: N802 - Qt API
        self._before_popup()
        super().showPopup()


class MaskCombo(LayerCombo):
    """Mask choices: the painted box, the whole volume, or a Labels layer's non-zero voxels."""

    def entries(self, names: list) -> list:
        return [MASK_BOX, MASK_ALL] + names


class LossPlot(QWidget):
    """A small, dependency-free loss curve (QPainter sparkline) with its last value."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.points: list[tuple[int, float]] = []
        self.setMinimumHeight(70)
        self.setToolTip("Training loss per iteration (should go down)")

    def clear(self) -> None:
        self.points = []
        self.update()

    def add(self, iteration: int, loss: float) -> None:
        if np.isfinite(loss):
            self.points.append((int(iteration), float(loss)))
            self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        rect = self.rect().adjusted(4, 14, -4, -4)
        p.setPen(QPen(QColor(120, 120, 120), 1))
        p.drawRect(rect)
        p.setPen(QColor(200, 200, 200))
        if not self.points:
            p.drawText(self.rect().adjusted(6, 0, 0, 0), Qt.AlignLeft | Qt.AlignTop, "loss: (no training yet)")
            p.end()
            return
        its = np.array([a for a, _ in self.points], float)
        losses = np.array([b for _, b in self.points], float)
        lo, hi = float(losses.min()), float(losses.max())
        if hi - lo < 1e-12:
            hi = lo + 1e-12
        x0, x1 = its.min(), max(its.max(), its.min() + 1)
        path = QPainterPath()
        for i, (it, lv) in enumerate(zip(its, losses)):
            x = rect.left() + (it - x0) / (x1 - x0) * rect.width()
            y = rect.bottom() - (lv - lo) / (hi - lo) * rect.height()
            if i == 0:
                path.moveTo(QPointF(x, y))
            else:
                path.lineTo(QPointF(x, y))
        p.drawText(
            self.rect().adjusted(6, 0, -6, 0), Qt.AlignLeft | Qt.AlignTop,
            f"loss {losses[-1]:.4f} at iteration {int(its[-1])} (min {lo:.4f})",
        )
        p.setPen(QPen(QColor(255, 170, 60), 1.5))
        p.drawPath(path)
        p.end()


def unwrap_viewer(viewer):
    """The viewer behind napari's per-plugin ``PublicOnlyProxy`` (each dock gets its own proxy)."""
    seen = 0
    while hasattr(viewer, "__wrapped__") and seen < 8:
        viewer = viewer.__wrapped__
        seen += 1
    return viewer


def find_segneuron_dock(viewer):
    """The SegNeuron dock of this viewer (the one the model is loaded in), if one is open.

    ``viewer`` may be the proxy napari handed to the calling dock: docks are matched on
    the viewer behind the proxies, then, as a fallback, among the window's dock widgets.
    """
    from .segment import DOCKS, SegNeuronWidget

    target = unwrap_viewer(viewer)
    matches = [w for w in list(DOCKS) if unwrap_viewer(w.viewer) is target]
    if matches:
        # the most recently given a model, else the last opened
        with_model = [w for w in matches if w.model is not None]
        return (with_model or matches)[-1]
    return window_dock_of_type(viewer, SegNeuronWidget)


def find_trace_dock(viewer):
    """The "Trace neurons (LM)" dock of this viewer, if one is open."""
    from .trace import TraceWidget

    return window_dock_of_type(unwrap_viewer(viewer), TraceWidget)


def window_dock_of_type(viewer, cls):
    """The first dock widget of ``viewer``'s window that is (or contains) a ``cls``; None
    without a window (headless viewer) or without such a dock."""
    try:
        docks = dict(viewer.window.dock_widgets)
    except Exception:  # noqa: BLE001 - no window (headless viewer)
        return None
    for widget in docks.values():
        inner = unwrap_viewer(widget)
        if isinstance(inner, cls):
            return inner
        for child in getattr(inner, "findChildren", lambda *_: [])(cls):
            return child
    return None


def give_trace_dock(dock, model, path: Path) -> None:
    """Make the LM dock use ``model`` (loaded from ``path``): its Model box shows the file."""
    dock.set_model(model, path)


def default_architecture() -> tuple[tuple[int, ...], str]:
    """(kn, fmu) of the bundled default model: "fresh weights" build this compact network."""
    from .._model import fetch_weights, load_model

    model = load_model(fetch_weights("default"), device="cpu")
    return tuple(int(k) for k in model.kn), str(model.fmu)


def default_checkpoint_path(kind: str) -> Path:
    root = Path.home() / "napari-segneuron" / "training"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return root / f"{kind}-{stamp}.pt"


def unique_path(path: Path) -> Path:
    """``path``, or ``path`` with a -2, -3 ... suffix so that nothing existing is replaced."""
    if not path.exists():
        return path
    i = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
        if not candidate.exists():
            return candidate
        i += 1


def training_settings():
    """The Settings form, declared with magicgui (labels, layout and the file picker come with it).

    Fields: minutes, iterations (0 = no cap), crop (z, y, x), batch_size, lr, device, save_to
    (empty = automatic).
    """
    from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, SpinBox, TupleEdit

    form = Container(widgets=[
        FloatSpinBox(name="minutes", label="Minutes", value=15.0, min=0.0, max=100_000.0, step=5.0,
                     tooltip="Wall-clock budget: training stops after this many minutes, the learning rate "
                             "decaying over them (15 minutes on a laptop CPU adapt the model to a new stack). "
                             "The clock starts with the first training step: the set-up before it (the "
                             "magnification estimate for Magnify 'auto', and on a CPU with bfloat16 a one-off "
                             "timing of one step in each precision) is not counted. "
                             "0 = no time limit (then set Iterations)"),
        SpinBox(name="iterations", label="Iterations (0: no cap)", value=0, min=0, max=1_000_000, step=100,
                tooltip="Optional cap on the training steps (0 = as many as fit in the Minutes)"),
        TupleEdit(name="crop", label="Crop (z, y, x)", value=(16, 96, 96), options={"min": 1, "max": 512},
                  tooltip="Size of the random training crops (z, y, x); y and x multiples of 16"),
        SpinBox(name="batch_size", label="Batch", value=2, min=1, max=64, tooltip="Crops per step"),
        FloatSpinBox(name="lr", label="Learning rate", value=1e-3, min=1e-6, max=1.0, step=1e-4,
                     tooltip="Adam learning rate (decays to 1e-5 with a cosine schedule)"),
        ComboBox(name="device", label="Device", choices=_available_devices(), tooltip="Where training runs ('auto': a GPU if any)"),
        FileEdit(name="save_to", label="Save to", mode="w", filter="Checkpoints (*.pt)", value="",
                 tooltip="Where checkpoints are saved (atomically, every 100 iterations and at the end); "
                         "an existing file is never replaced. Empty: ~/napari-segneuron/training/<mode>-<time>.pt"),
    ])
    form.lr.native.setDecimals(6)
    form.minutes.native.setDecimals(2)
    form.minutes.native.setSpecialValueText("no limit")
    form.save_to.line_edit.native.setPlaceholderText("automatic: ~/napari-segneuron/training/<mode>-<time>.pt")
    form.margins = (0, 0, 0, 0)
    return form


class _LossBridge(QWidget):
    loss = Signal(int, float)


class TrainingWidget(QWidget):
    """Finetune or pretrain MNet on layers of the viewer, with a live loss plot and Cancel."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        import napari.layers

        self.viewer = napari_viewer
        self.model = None  # the last trained MNet (also handed to the SegNeuron dock)
        self.lm_model = None  # the last trained LM model (also handed to the LM dock)
        self.pretrained_checkpoint: Optional[Path] = None
        self.last_result = None
        self._trained_image = None  # the image layer of the last finetune (re-segmented afterwards)
        self._placed = False  # tabified with the SegNeuron dock on first show (see showEvent)
        # the form scrolls (so the dock shares the side of the window and never squeezes the
        # SegNeuron dock to one row); the progress bar, Cancel and the status stay below it
        frame = QVBoxLayout(self)
        frame.setContentsMargins(4, 4, 4, 4)
        body = QWidget()
        outer = QVBoxLayout(body)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = FormScroll(body)
        frame.addWidget(scroll, 1)
        self._scroll = scroll

        box = QGroupBox("Training data")
        form = QFormLayout(box)
        self.family = QComboBox()
        self.family.addItems([MODEL_EM, MODEL_LM])
        self.family.setToolTip(
            "Which model trains.\n"
            "EM: SegNeuron (the SegNeuron dock's model) from an EM stack and its neuron labels.\n"
            "LM: the light-microscopy model of the 'Trace neurons (LM)' dock, from an LM stack and either a "
            "Labels layer (> 0 = neuron) or a Shapes layer of SWC paths (a tracing, e.g. from Trace, corrected), "
            "drawn as tubes of the SWC radius with the image's scale.\n"
            "Choosing a Shapes layer as Labels switches to LM by itself. Pretrain is for EM only."
        )
        self._family_settings = {k: dict(v) for k, v in FAMILY_SETTINGS.items()}
        self._family_now = MODEL_EM
        form.addRow("Model", self.family)
        self.mode = QComboBox()
        self.mode.addItems([FINETUNE, PRETRAIN])
        self.mode.setToolTip(
            "Finetune: teach the model your neurons from an image and its labels.\n"
            "Pretrain: self-supervised on unlabelled stacks (helps a new microscope/tissue); finetune afterwards."
        )
        form.addRow("Mode", self.mode)
        self.pages = QStackedWidget()
        # finetune page
        ft = QWidget()
        ff = QFormLayout(ft)
        ff.setContentsMargins(0, 0, 0, 0)
        self.image_combo = LayerCombo(self.viewer, (napari.layers.Image,), placeholder="(open an EM image)")
        self.image_combo.setToolTip("The stack the labels belong to (EM, or LM with Model LM)")
        ff.addRow("Image", self.image_combo)
        self.labels_combo = LayerCombo(self.viewer, (napari.layers.Labels, napari.layers.Shapes),
                                       placeholder="(no labels)")
        self.labels_combo.setToolTip(
            "EM: neuron ids of the same shape as the image; 0 = membrane/background.\n"
            "LM: a Labels layer (> 0 = neuron) or a Shapes layer of SWC paths (choosing one selects Model LM)")
        ff.addRow("Labels", self.labels_combo)
        self.mask_combo = MaskCombo(self.viewer, (napari.layers.Labels,))
        self.mask_combo.setToolTip(
            "Which voxels train. Painted box: the bounding box of the painted (non-zero) labels; paint every "
            "neuron in one block of the stack, membranes stay 0, the rest of the stack is ignored.\n"
            "Whole volume: every voxel is annotated. A Labels layer: its non-zero voxels."
        )
        ff.addRow("Mask", self.mask_combo)
        self.mask_note = wrap_label("")
        ff.addRow(self.mask_note)
        self.start_combo = StartCombo(self.refresh_start_labels)
        self._fill_start([START_LOADED, START_FRESH, START_PRETRAINED])
        self.start_combo.setToolTip(
            "Which weights training starts from: the model loaded in the SegNeuron dock, fresh random "
            "weights, or the checkpoint of the last Pretrain run"
        )
        ff.addRow("Start", self.start_combo)
        self._finetune_form = ff
        self.pages.addWidget(ft)
        # pretrain page
        pt = QWidget()
        pf = QFormLayout(pt)
        pf.setContentsMargins(0, 0, 0, 0)
        self.pretrain_list = QListWidget()
        self.pretrain_list.setSelectionMode(QAbstractItemView.NoSelection)
        self.pretrain_list.setToolTip("Tick the unlabelled EM stacks to pretrain on")
        self.pretrain_list.setMaximumHeight(90)
        pf.addRow("Images", self.pretrain_list)
        self.pages.addWidget(pt)
        form.addRow(self.pages)
        outer.addWidget(box)

        box = QGroupBox("Settings")
        lay = QVBoxLayout(box)
        lay.setContentsMargins(4, 4, 4, 4)
        self.settings = training_settings()
        lay.addWidget(self.settings.native)
        outer.addWidget(box)

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.calibrate_button = QPushButton("Calibrate (no training)")
        self.calibrate_button.setToolTip(
            "EM: fit Magnify, Foreground ≥, Edge score and the merge threshold of the SegNeuron dock to the painted block "
            "(minutes on a CPU, no training), then re-segment the image into new '… (calibrated)' layers. "
            "Finetuning afterwards trains at the chosen magnification.")
        self.calibrate_button.clicked.connect(self.calibrate)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(self.train_button, 1)
        hl.addWidget(self.calibrate_button, 1)
        outer.addWidget(row)
        self.resegment_button = QPushButton("Re-segment with the adapted model")
        self.resegment_button.setToolTip(
            "Predict + segment the training image again with the model just trained (in the SegNeuron dock); "
            "the results go to new layers '… (adapted)', nothing existing is replaced"
        )
        self.resegment_button.setEnabled(False)
        self.resegment_button.clicked.connect(self.resegment)
        outer.addWidget(self.resegment_button)
        self.loss_plot = LossPlot()
        outer.addWidget(self.loss_plot)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        self.progress_bar = QProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop now (within the current iteration); the weights of the last finished step are saved and "
                                      "loaded (before the first step: nothing is saved, the model is unchanged)")
        hl.addWidget(self.progress_bar, 1)
        hl.addWidget(self.cancel_button)
        outer.addStretch(1)
        frame.addWidget(row)
        self.status_label = wrap_label("Ready.")
        frame.addWidget(self.status_label)
        self.runner = TaskRunner(self.progress_bar, self.status_label, self.cancel_button, self)
        for button in (self.train_button, self.calibrate_button):
            self.runner.started.connect(lambda _n, b=button: b.setEnabled(False))
            self.runner.finished.connect(lambda _n, _s, b=button: b.setEnabled(True))
        self._loss_bridge = _LossBridge()
        self._loss_bridge.loss.connect(self.loss_plot.add)

        self._mask_timer = QTimer(self)
        self._mask_timer.setSingleShot(True)
        self._mask_timer.setInterval(250)  # painting fires many events: describe the mask once it settles
        self._mask_timer.timeout.connect(self.update_mask_note)
        self._watched_labels = None
        self.labels_combo.currentTextChanged.connect(lambda _t: self._watch_labels())
        self.labels_combo.currentTextChanged.connect(lambda _t: self._follow_target())
        self.family.currentTextChanged.connect(lambda _t: self._family_changed())
        self.mask_combo.currentTextChanged.connect(lambda _t: self._mask_timer.start())
        self.image_combo.currentTextChanged.connect(lambda _t: self._mask_timer.start())
        self._watch_labels()
        self._start_choice = {MODEL_EM: START_LOADED, MODEL_LM: START_LM_DOCK}
        self._follow_target()
        self.mode.currentIndexChanged.connect(self.pages.setCurrentIndex)
        self.mode.currentIndexChanged.connect(lambda _i: self._refresh_pretrain_list())
        ev = self.viewer.layers.events
        ev.inserted.connect(self._refresh_pretrain_list)
        ev.removed.connect(self._refresh_pretrain_list)
        self._refresh_pretrain_list()
        self.setMinimumWidth(300)
        from .segment import dock_signals

        dock_signals().model_changed.connect(self._dock_model_changed)

    # -- where training starts ---------------------------------------------------------------
    def start_choice(self) -> str:
        """The chosen start: ``START_LOADED``, ``START_FRESH``, ``START_PRETRAINED`` (EM) or
        ``START_LM_DOCK``, ``START_LM_DEFAULT`` (LM); the item's text also names the model."""
        return self.start_combo.currentData() or self.start_combo.currentText()

    def set_start_choice(self, key: str) -> None:
        i = self.start_combo.findData(key)
        if i >= 0:
            self.start_combo.setCurrentIndex(i)

    def _fill_start(self, keys) -> None:
        self.start_combo.clear()
        for key in keys:
            self.start_combo.addItem(self._start_label(key), key)

    def _start_label(self, key: str) -> str:
        """The item text of a start choice: the loaded model and the last pretrained checkpoint by name."""
        if key == START_LOADED:
            dock = find_segneuron_dock(self.viewer)
            model = dock.model if dock is not None else self.model
            return f"{START_LOADED} ({model_title(model) if model is not None else 'none loaded yet'})"
        if key == START_PRETRAINED:
            ckpt = self.pretrained_checkpoint
            return f"{START_PRETRAINED} ({ckpt.name if ckpt is not None else 'none yet'})"
        return key

    def refresh_start_labels(self) -> None:
        """Name the current models in the Start choices (the SegNeuron dock calls this through
        ``segment.dock_signals().model_changed`` whenever its model changes)."""
        for i in range(self.start_combo.count()):
            key = self.start_combo.itemData(i)
            if key:
                self.start_combo.setItemText(i, self._start_label(key))
        dock = find_segneuron_dock(self.viewer)
        model = dock.model if dock is not None else None
        path = (getattr(model, "info", None) or {}).get("path")
        i = self.start_combo.findData(START_LOADED)
        if i >= 0:
            self.start_combo.setItemData(i, path or "", Qt.ToolTipRole)

    # -- placement -----------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        self.refresh_start_labels()
        if not self._placed:
            self._placed = True
            # after napari has finished docking this widget (it resizes the docks of the area)
            QTimer.singleShot(0, self.place_beside_segneuron)

    def place_beside_segneuron(self) -> bool:
        """Tabify this dock with the SegNeuron dock when both sit in the same area of the window
        (napari stacks a new plugin dock below the others, which left the SegNeuron dock one row
        high); this one comes to the front. Done once, on first show: the user may move either."""
        try:
            seg = find_segneuron_dock(self.viewer)
            mine, theirs = dock_of(self), dock_of(seg) if seg is not None else None
            if mine is None or theirs is None or mine is theirs or mine.isFloating() or theirs.isFloating():
                return False
            window = mine.parentWidget()
            if window is None or theirs.parentWidget() is not window or not hasattr(window, "tabifyDockWidget"):
                return False
            if window.dockWidgetArea(mine) != window.dockWidgetArea(theirs):
                return False
            if theirs not in window.tabifiedDockWidgets(mine):
                window.tabifyDockWidget(theirs, mine)
            mine.show()
            mine.raise_()
            return True
        except RuntimeError:  # pragma: no cover - a dock closed meanwhile
            return False

    def _dock_model_changed(self, _dock=None) -> None:
        try:
            self.refresh_start_labels()
        except RuntimeError:  # pragma: no cover - this dock's Qt object is gone
            pass

    # -- model family ----------------------------------------------------------------------
    def is_lm(self) -> bool:
        """Whether the LM (light-microscopy) model is the one that trains."""
        return self.family.currentText() == MODEL_LM

    def _follow_target(self) -> None:
        """A Shapes layer (SWC paths) as the target can only train the LM model: select it."""
        import napari.layers

        layer = self.labels_combo.value()
        if isinstance(layer, napari.layers.Shapes) and not self.is_lm():
            kinds = set(layer.shape_type)
            if not kinds or kinds & {"path", "line"}:  # paths (or none yet), not e.g. rectangles
                self.family.setCurrentText(MODEL_LM)

    def _family_changed(self) -> None:
        """Swap the start choices, the mask row and the per-family crop / learning rate."""
        old, new = self._family_now, self.family.currentText()
        lm = new == MODEL_LM
        if old != new:
            values = self.settings.asdict()
            self._family_settings[old] = {"crop": tuple(values["crop"]), "lr": float(values["lr"])}
            self._start_choice[old] = self.start_choice()
            self.settings.crop.value = self._family_settings[new]["crop"]
            self.settings.lr.value = self._family_settings[new]["lr"]
            self._family_now = new
        self.start_combo.blockSignals(True)
        self._fill_start([START_LM_DOCK, START_LM_DEFAULT] if lm else [START_LOADED, START_FRESH, START_PRETRAINED])
        self.set_start_choice(self._start_choice.get(new, ""))
        self.start_combo.blockSignals(False)
        self.start_combo.setToolTip(
            "LM: the model chosen in the 'Trace neurons (LM)' dock (else the last LM model trained here, else "
            "lm_default), or the bundled lm_default" if lm else
            "Which weights training starts from: the model loaded in the SegNeuron dock, fresh random "
            "weights, or the checkpoint of the last Pretrain run")
        label = self._finetune_form.labelForField(self.mask_combo)
        for widget in (self.mask_combo, label):
            if widget is not None:
                widget.setVisible(not lm)  # LM trains on the whole stack
        self.resegment_button.setVisible(not lm)
        self._mask_timer.start()

    def lm_target(self) -> tuple[np.ndarray, np.ndarray, str]:
        """(image, neuron mask, one-line description) of an LM finetune; raises InputError.

        The target is a Labels layer (> 0 = neuron) or a Shapes layer whose paths are drawn
        as tubes (SWC radius from the layer's metadata, else one voxel) on the image's grid,
        through each layer's scale and translate.
        """
        import napari.layers

        from ..io import InputError
        from ..training.lm_finetune import paths_to_mask
        from ._common import spatial_geometry

        image_layer = self.image_combo.value()
        image = self._volume(image_layer, "image")
        target = self.labels_combo.value()
        if target is None:
            raise InputError("Choose the target: a Labels layer (> 0 = neuron) or a Shapes layer of SWC paths")
        if isinstance(target, napari.layers.Shapes):
            if target.ndim < 3:
                raise InputError(f"The Shapes layer '{target.name}' is {target.ndim}D: draw the paths in 3D over "
                                 "the LM stack (or trace it in the 'Trace neurons (LM)' dock)")
            paths = [np.asarray(d)[:, -3:] for d, kind in zip(target.data, target.shape_type)
                     if kind in ("path", "line")]
            if not paths:
                raise InputError(f"The Shapes layer '{target.name}' holds no paths: trace the neuron ('Trace neurons "
                                 "(LM)' dock) or draw paths along it")
            iscale, itranslate = spatial_geometry(image_layer)
            sscale, stranslate = spatial_geometry(target)
            radius = dict((target.metadata or {}).get("swc_radius") or {})
            mask = paths_to_mask(paths, image.shape, iscale, path_scale=sscale, radius=radius,
                                 offset=tuple(a - b for a, b in zip(stranslate, itranslate)))
            if not mask.any():
                raise InputError(f"The paths of '{target.name}' lie outside the image '{image_layer.name}'")
            tubes = "tubes of their SWC radius" if radius else "tubes of one voxel radius (no SWC radii)"
            note = (f"Target: {len(paths)} paths of '{target.name}' drawn as {tubes}, {int(mask.sum())} neuron "
                    "voxels; the whole stack trains")
            return image, mask, note
        labels = self._volume(target, "labels")
        if labels.shape != image.shape:
            raise InputError(f"The labels '{target.name}' are {'×'.join(map(str, labels.shape))} but the image "
                             f"'{image_layer.name}' is {'×'.join(map(str, image.shape))}")
        mask = labels > 0
        if not mask.any():
            raise InputError(f"Nothing is painted in '{target.name}': paint the neuron (values > 0) first")
        note = f"Target: the {int(mask.sum())} neuron voxels (> 0) of '{target.name}'; the whole stack trains"
        return image, mask, note

    # -- helpers ---------------------------------------------------------------------------
    def _refresh_pretrain_list(self, event=None) -> None:
        import napari.layers

        ticked = {self.pretrain_list.item(i).text() for i in range(self.pretrain_list.count())
                  if self.pretrain_list.item(i).checkState() == Qt.Checked}
        self.pretrain_list.clear()
        for lay in self.viewer.layers:
            if isinstance(lay, napari.layers.Image) and not lay.rgb:
                item = QListWidgetItem(lay.name)
                item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Checked if lay.name in ticked else Qt.Unchecked)
                self.pretrain_list.addItem(item)

    def set_pretrain_layers(self, names) -> None:
        for i in range(self.pretrain_list.count()):
            item = self.pretrain_list.item(i)
            item.setCheckState(Qt.Checked if item.text() in names else Qt.Unchecked)

    def _checkpoint_path(self, kind: str) -> Path:
        text = str(self.settings.save_to.value or "").strip()
        path = Path(text).expanduser() if text not in ("", ".") else default_checkpoint_path(kind)
        if path.suffix not in (".pt", ".pth", ".ckpt"):
            path = path.with_suffix(".pt")
        return unique_path(path)

    def _settings(self) -> dict:
        """Keyword arguments of finetune/pretrain: Minutes becomes ``time_limit_s`` (iterations uncapped if 0)."""
        from ..io import InputError

        v = self.settings.asdict()
        minutes = float(v["minutes"])
        iterations = int(v["iterations"])
        if minutes <= 0 and iterations <= 0:
            raise InputError("Set a training budget: Minutes, or Iterations")
        return {
            "iterations": iterations if iterations > 0 else NO_CAP,
            "time_limit_s": 60.0 * minutes if minutes > 0 else None,
            "crop": tuple(int(c) for c in v["crop"]),
            "batch_size": int(v["batch_size"]),
            "lr": float(v["lr"]),
            "device": None if v["device"] == "auto" else v["device"],
            # reduced precision where the hardware has it and (CPU) a timed step is faster
            "mixed_precision": True,
        }

    # -- the mask ------------------------------------------------------------------------
    def _schedule_mask_note(self, event=None) -> None:
        self._mask_timer.start()

    def _watch_labels(self) -> None:
        """Follow paint strokes in the chosen labels layer to keep the mask line current."""
        layer = self.labels_combo.value()
        if layer is not self._watched_labels:
            for old in (self._watched_labels,):
                if old is not None:
                    for ev in ("paint", "data"):
                        try:
                            getattr(old.events, ev).disconnect(self._schedule_mask_note)
                        except Exception:  # noqa: BLE001 - not connected / no such event
                            pass
            if layer is not None:
                for ev in ("paint", "data"):
                    emitter = getattr(layer.events, ev, None)
                    if emitter is not None:
                        emitter.connect(self._schedule_mask_note)
            self._watched_labels = layer
        self._mask_timer.start()

    def mask_region(self, labels: np.ndarray, shape: tuple):
        """(mask array or None, one-line description) for the chosen mask; raises InputError."""
        from ..training.targets import no_membranes_warning

        mask, text = self._mask_region(labels, shape)
        warning = no_membranes_warning(labels, mask)
        return mask, text + (f". Warning: {warning}" if warning else "")

    def _mask_region(self, labels: np.ndarray, shape: tuple):
        from ..io import InputError

        choice = self.mask_combo.currentText()
        name = getattr(self.labels_combo.value(), "name", "labels")
        if choice == MASK_ALL:
            if not np.any(labels):
                raise InputError(f"Nothing is painted in '{name}': it holds no neuron ids (all 0)")
            return None, f"Mask: the whole volume {'×'.join(map(str, shape))} (every 0 is membrane/background)"
        if choice == MASK_BOX:
            box = painted_box(labels)
            if box is None:
                raise InputError(f"Nothing is painted in '{name}' yet: paint every neuron (ids 1, 2, …) in one "
                                 "block of the stack, leaving membranes 0; that block becomes the mask")
            mask = np.zeros(shape, bool)
            mask[tuple(slice(a, b) for a, b in box)] = True
            return mask, f"Mask: painted box {describe_box(box)} (only this block trains)"
        layer = self.mask_combo.value()
        if layer is None:
            raise InputError(f"No mask layer '{choice}'")
        mask = self._volume(layer, "mask")
        if mask.shape != tuple(shape):
            raise InputError(f"The mask '{layer.name}' is {'×'.join(map(str, mask.shape))} but the image is "
                             f"{'×'.join(map(str, shape))}")
        mask = mask != 0
        box = painted_box(mask)
        if box is None:
            raise InputError(f"The mask '{layer.name}' is empty (all 0)")
        return mask, f"Mask: non-zero voxels of '{layer.name}' ({int(mask.sum())} voxels in {describe_box(box)})"

    def update_mask_note(self) -> str:
        """Describe the mask the next Train will use (or why there is none) in the dock."""
        try:
            if self.is_lm():
                _, _, text = self.lm_target()
            else:
                image = self._volume(self.image_combo.value(), "image")
                labels = self._volume(self.labels_combo.value(), "labels")
                self._check_labels(image, labels)
                _, text = self.mask_region(labels, image.shape)
            colour = ""
        except Exception as exc:  # noqa: BLE001 - shown in the note, not as an error
            text, colour = str(exc), "color: #f0a030;"
        self.mask_note.setText(text)
        self.mask_note.setStyleSheet(colour)
        return text

    def _check_labels(self, image: np.ndarray, labels: np.ndarray) -> None:
        from ..io import InputError

        if image.shape != labels.shape:
            lname = getattr(self.labels_combo.value(), "name", "labels")
            iname = getattr(self.image_combo.value(), "name", "image")
            raise InputError(
                f"The labels '{lname}' are {'×'.join(map(str, labels.shape))} but the image '{iname}' is "
                f"{'×'.join(map(str, image.shape))}: paint in a Labels layer of the image's shape (the layer "
                "list's 'New labels layer' button makes one)")
        if labels.dtype.kind not in "biu":
            raise InputError("The labels layer must hold integer neuron ids")

    @staticmethod
    def _volume(layer, what: str, lazy: bool = False) -> np.ndarray:
        """The layer as a checked (z, y, x) volume, in memory (or as it is with ``lazy``: dask and
        zarr stay unread)."""
        import napari.layers

        from ..io import InputError, as_volume

        if layer is None:
            raise InputError(f"Choose the {what} layer")
        if isinstance(layer, napari.layers.Shapes):
            raise InputError(f"'{layer.name}' is a Shapes layer: paths train the LM model only (set Model to LM); "
                             "the EM model needs a Labels layer")
        if getattr(layer, "rgb", False):
            raise InputError(f"'{layer.name}' is an RGB image; training needs a greyscale EM stack")
        vol = as_volume(layer.data, name=f"{what} '{layer.name}'", rgb=False)
        return vol if lazy else np.asarray(vol)

    # -- training --------------------------------------------------------------------------
    def train(self) -> None:
        from ..io import InputError

        try:
            if self.mode.currentText() == FINETUNE:
                job = self._lm_finetune_job() if self.is_lm() else self._finetune_job()
            elif self.is_lm():
                raise InputError("Pretrain trains the EM model only: set Model to EM to pretrain, or Finetune the "
                                 "LM model (it starts from the trained lm_default)")
            else:
                job = self._pretrain_job()
        except Exception as exc:  # noqa: BLE001
            self.runner.show_error(error_message(exc, "Training"))
            return
        name, work, done = job
        self.loss_plot.clear()
        self.runner.start(name, work, done, keep_result_when_cancelled=True)

    def _finetune_job(self):
        from ..io import InputError

        image = self._volume(self.image_combo.value(), "image")
        labels = self._volume(self.labels_combo.value(), "labels")
        self._check_labels(image, labels)
        settings = self._settings()
        mask, note = self.mask_region(labels, image.shape)
        self.mask_note.setText(note)
        self.mask_note.setStyleSheet("")
        if mask is not None:
            check_box_fits(painted_box(mask), settings["crop"])
        start = self.start_choice()
        model = None
        if start == START_LOADED:
            dock = find_segneuron_dock(self.viewer)
            loaded = dock.model if dock is not None else self.model
            if loaded is None:
                raise InputError("No model is loaded: load one in the SegNeuron dock, or start from fresh random weights")
            model = copy.deepcopy(loaded).cpu()  # the loaded model stays usable while training
        elif start == START_PRETRAINED:
            if self.pretrained_checkpoint is None:
                raise InputError("There is no pretrained checkpoint yet: run Pretrain first")
            model = str(self.pretrained_checkpoint)
        if model is None:  # fresh weights: the compact architecture of the bundled default
            settings["kn"], settings["fmu"] = default_architecture()
        settings["time_schedule"] = settings["time_limit_s"] is not None
        ckpt = self._checkpoint_path("finetune")
        bridge = self._loss_bridge
        self._trained_image = self.image_combo.value()
        voxel, model_voxel, magnify = self._training_grid(model)
        dock = find_segneuron_dock(self.viewer)
        extra = {}
        if hasattr(model, "info") and not (dock is not None and dock.magnify_is_auto()):
            # a magnification chosen by hand: the starting weights' reference neurite width no
            # longer describes the grid these weights learn, so 'auto' must not use it with them
            extra["neurite_halfwidth"] = None

        data = {"image": getattr(self.image_combo.value(), "name", None),
                "labels": getattr(self.labels_combo.value(), "name", None), "mask": self.mask_combo.currentText()}

        def work(progress, cancel):
            from ..cancel import Cancelled
            from ..inference import Predictor
            from ..scale_estimate import estimate_magnification
            from ..training.finetune import TrainResult, finetune
            from ..training.loop import TrainingCancelled
            from ..training.grid import block_on_model_grid

            m = magnify
            try:
                if m is None:  # the dock's 'auto', not estimated for this image yet: estimated as prediction would
                    m = estimate_magnification(Predictor(model, device="cpu"), image, voxel, progress=progress,
                                               cancel=cancel).magnify
                img, lab, msk, grid = block_on_model_grid(image, labels, mask, voxel, model_voxel, m)
                return finetune(
                    model, img, lab, mask=msk, checkpoint=ckpt, progress=progress, cancel=cancel,
                    loss_callback=lambda it, lv: bridge.loss.emit(int(it), float(lv)),
                    metadata={"name": ckpt.stem, "trained_in": "napari-segneuron training dock", **grid, **extra,
                              "training_data": data},
                    **settings,
                )
            except TrainingCancelled as exc:
                return exc.result
            except Cancelled:  # during the magnification estimate: no step, nothing written
                return TrainResult(model=None, checkpoint=None, iterations=0, cancelled=True)

        return "Finetune", work, self._finetune_done

    def _training_grid(self, model) -> tuple:
        """(the image's voxel size from the SegNeuron dock's Voxel field, the starting model's
        declared voxel size, the dock's magnification): training runs on the grid prediction uses."""
        dock = find_segneuron_dock(self.viewer)
        voxel = dock.voxel_field.value() if dock is not None and hasattr(dock, "voxel_field") else None
        magnify = 1.0  # also for 'auto' with pretrained or fresh weights: no reference width to compare with
        if dock is not None and (hasattr(model, "info") or not dock.magnify_is_auto()):
            magnify = dock.magnification(self.image_combo.value())  # None: 'auto', not estimated yet
        if voxel is None:
            from ..resample import voxel_size_from_scale

            layer = self.image_combo.value()
            voxel = voxel_size_from_scale(layer.scale) if layer is not None else None
        model_voxel = None
        if isinstance(model, str):
            from ..training.checkpoints import read_checkpoint

            model_voxel = read_checkpoint(model)["metadata"].get("voxel_size_nm")
        elif model is not None:
            model_voxel = (getattr(model, "info", None) or {}).get("voxel_size_nm")
        if not model_voxel:
            magnify = 1.0  # nothing to magnify onto
        return voxel, (tuple(model_voxel) if model_voxel else None), magnify

    def _finetune_done(self, result) -> None:
        from .._model import load_model

        self.last_result = result
        if result.checkpoint is None:  # cancelled before a step finished: nothing was written or replaced
            self._unchanged("the model is unchanged")
            return
        device = self.settings.device.value
        model = load_model(result.checkpoint, device=None if device == "auto" else device,
                           name=Path(result.checkpoint).stem)
        self.model = model
        dock = find_segneuron_dock(self.viewer)
        if dock is None:
            try:
                _, dock = self.viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
            except Exception:  # pragma: no cover - dock unavailable
                dock = None
        n = result.iterations
        its = f"{n} iteration{'' if n == 1 else 's'}"
        what = f"cancelled at iteration {n}" if result.cancelled else f"finished {its} in {result.wall_time_s:.0f} s"
        meta = model.info["metadata"]  # the checkpoint just loaded above
        if meta.get("resampled_from_shape"):
            fmt = lambda v: "×".join(f"{x:g}" for x in v)  # noqa: E731
            source = meta.get("adapted_on_voxel_size_nm")
            src = f" from {fmt(source)} nm" if source else ""
            if meta.get("magnify"):
                what += (f" at {fmt(meta['voxel_size_nm'])} nm per voxel (the block was resampled{src}, magnified "
                         f"{meta['magnify']:g}× onto the model's grid)")
            else:
                what += f" on the model's {fmt(meta['voxel_size_nm'])} nm grid (the block was resampled{src})"
        if dock is not None:
            dock.set_model(model, source=str(result.checkpoint))
            msg = (f"Training {what}. The SegNeuron dock now uses the new weights '{model.info.get('name')}' "
                   f"({result.checkpoint}); press 'Re-segment with the adapted model', or pick 'default' "
                   "there and press Load model to go back.")
            if meta.get("magnify") and float(dock.magnify.value()) != 1.0:
                # the weights declare the magnified grid they trained on: magnifying again would do it twice
                msg += (f" Magnify is back to 1: these weights already work at the magnification they were "
                        f"trained at ({meta['magnify']:g}×); set it again if you go back to other weights.")
                dock.magnify.setValue(1.0)
            self.resegment_button.setEnabled(True)
        else:
            msg = f"Training {what}; weights saved to {result.checkpoint} (load them in the SegNeuron dock)"
        self.status_label.setText(msg)
        (notify_warning if result.cancelled else notify_info)(msg)

    def _unchanged(self, what: str) -> None:
        """Say (status line and a warning) that a run stopped before its first step changed nothing."""
        msg = f"Cancelled before the first step; {what} (nothing was saved)."
        self.status_label.setText(msg)
        self.progress_bar.setValue(0)
        notify_warning(msg)

    def _lm_start(self):
        """(model or registry name / checkpoint file, description) an LM finetune starts from."""
        from .trace import CHECKPOINT_ITEM

        if self.start_choice() == START_LM_DOCK:
            dock = find_trace_dock(self.viewer)
            if dock is not None:
                key = dock.weights_combo.currentText()
                model = dock.loaded_model(key)
                if model is not None:
                    return model, f"the LM dock's model '{model.info.get('name')}'"
                if key and key != CHECKPOINT_ITEM:
                    return key, f"the LM dock's '{Path(key).name}'"
            if self.lm_model is not None:
                return self.lm_model, f"the last LM model trained here '{self.lm_model.info.get('name')}'"
        return "lm_default", "the bundled lm_default"

    def _lm_finetune_job(self):
        image, mask, note = self.lm_target()
        self.mask_note.setText(note)
        self.mask_note.setStyleSheet("")
        settings = self._settings()
        start, start_text = self._lm_start()
        ckpt = self._checkpoint_path("finetune-lm")
        bridge = self._loss_bridge
        minutes = settings["time_limit_s"] / 60.0 if settings["time_limit_s"] else None
        iterations = settings["iterations"] if settings["iterations"] < NO_CAP else None
        self._lm_start_text = start_text

        def work(progress, cancel):
            from ..training.loop import TrainingCancelled
            from ..training.lm_finetune import finetune_lm

            try:
                return finetune_lm(
                    start, image, mask, minutes=minutes, iterations=iterations, crop=settings["crop"],
                    batch_size=settings["batch_size"], lr=settings["lr"], checkpoint=ckpt, device=settings["device"],
                    progress=progress, cancel=cancel, loss_callback=lambda it, lv: bridge.loss.emit(int(it), float(lv)),
                    metadata={"trained_in": "napari-segneuron training dock"},
                )
            except TrainingCancelled as exc:
                return exc.result

        return "Finetune (LM)", work, self._lm_finetune_done

    def _lm_finetune_done(self, result) -> None:
        from .._model.vit3d import load_vit3d

        self.last_result = result
        if result.checkpoint is None:
            self._unchanged("the LM model is unchanged")
            return
        device = self.settings.device.value
        model = load_vit3d(result.checkpoint, device=None if device == "auto" else device)
        self.lm_model = model
        n = result.iterations
        its = f"{n} iteration{'' if n == 1 else 's'}"
        what = f"cancelled at iteration {n}" if result.cancelled else f"finished {its} in {result.wall_time_s:.0f} s"
        start = getattr(self, "_lm_start_text", "")
        dock = find_trace_dock(self.viewer)
        if dock is not None:
            give_trace_dock(dock, model, result.checkpoint)
            msg = (f"LM training {what}, from {start}. Weights saved to {result.checkpoint}; the 'Trace neurons "
                   "(LM)' dock now uses them: press Predict foreground or Trace there.")
        else:
            msg = (f"LM training {what}, from {start}. Weights saved to {result.checkpoint} (in the 'Trace neurons "
                   "(LM)' dock choose Model ▸ checkpoint file… to use them).")
        self.status_label.setText(msg)
        (notify_warning if result.cancelled else notify_info)(msg)

    def _pretrain_job(self):
        from ..io import InputError

        names = [self.pretrain_list.item(i).text() for i in range(self.pretrain_list.count())
                 if self.pretrain_list.item(i).checkState() == Qt.Checked]
        if not names:
            raise InputError("Tick at least one image layer to pretrain on")
        images = [self._volume(self.viewer.layers[n], "image") for n in names]
        settings = self._settings()
        ckpt = self._checkpoint_path("pretrain")
        bridge = self._loss_bridge
        dock = find_segneuron_dock(self.viewer)
        loaded = dock.model if dock is not None else None
        kn = tuple(loaded.kn) if loaded is not None else default_architecture()[0]

        def work(progress, cancel):
            from ..cancel import Cancelled
            from ..training.pretrain import pretrain

            try:
                return pretrain(
                    images, kn=kn, checkpoint=ckpt, progress=progress, cancel=cancel,
                    loss_callback=lambda it, lv: bridge.loss.emit(int(it), float(lv)),
                    metadata={"name": ckpt.stem, "trained_in": "napari-segneuron training dock"}, **settings,
                )
            except Cancelled as exc:
                result = getattr(exc, "result", None)
                if result is None:
                    raise
                return result

        return "Pretrain", work, self._pretrain_done

    def _pretrain_done(self, result) -> None:
        self.last_result = result
        if result.checkpoint is None:
            self._unchanged("there is no new pretrained checkpoint")
            return
        self.pretrained_checkpoint = Path(result.checkpoint)
        self.refresh_start_labels()
        self.set_start_choice(START_PRETRAINED)
        msg = (f"Pretraining {'cancelled' if result.cancelled else 'finished'} after {result.iterations} iterations; "
               f"{result.checkpoint} is the starting point of the next Finetune")
        self.status_label.setText(msg)
        notify_info(msg)

    # -- calibration -----------------------------------------------------------------------
    def calibrate(self) -> bool:
        """Fit the SegNeuron dock's magnification, thresholds and edge score to the painted block
        (``calibration.calibrate``), then re-segment the image into new '(calibrated)' layers."""
        from ..io import InputError

        try:
            if self.is_lm():
                raise InputError("Calibrate fits the EM segmentation: set Model to EM")
            dock = find_segneuron_dock(self.viewer)
            if dock is None or dock.model is None:
                raise InputError("Load a model in the SegNeuron dock first (Plugins ▸ SegNeuron): calibration "
                                 "fits its settings")
            if dock.runner.busy:
                raise InputError("The SegNeuron dock is busy: wait for it or cancel it first")
            image_layer = self.image_combo.value()
            image = self._volume(image_layer, "image", lazy=True)  # only the block and its context are read
            labels = self._volume(self.labels_combo.value(), "labels")
            self._check_labels(image, labels)
            mask, note = self.mask_region(labels, image.shape)
            predictor = dock.predictor()
            voxel = dock.voxel_field.value()
            fg_default, t_default = float(dock.fg_threshold.value()), float(dock.threshold())
            scoring_default = dock.scoring.currentText()
            # the default to beat is what the dock predicts with: its magnification, or 'auto' (estimated below)
            m_default = dock.magnification(image_layer)
            pending = dock.voxel_size(image_layer, predictor) if m_default is None else None
        except Exception as exc:  # noqa: BLE001
            self.runner.show_error(error_message(exc, "Calibrate"))
            return False
        self.mask_note.setText(note)
        self.mask_note.setStyleSheet("")

        def work(progress, cancel):
            from ..calibration import calibrate

            m = m_default
            if m is None:  # 'auto' not estimated for this image yet: as Predict would (and remembered there)
                dock.resolved_voxel(pending, predictor, image, progress, cancel)
                m = dock.estimated_magnification(pending)
            return calibrate(predictor, image, labels, voxel_size=voxel, mask=mask, default_threshold=t_default,
                             default_fg_threshold=fg_default, default_scoring=scoring_default, default_magnify=m, worker=dock.agglomerate_in_worker,
                             progress=progress, cancel=cancel)

        def done(result) -> None:
            from ..calibration import MIN_GAIN

            self.last_calibration = result
            if result.improved:  # else the dock's settings were the defaults that stayed best: left as they are
                dock.magnify.setValue(result.magnify)
                dock.fg_threshold.setValue(result.fg_threshold)
                dock.scoring.setCurrentText(result.scoring)
                dock.set_threshold(result.threshold)
            if result.improved:
                msg = (f"Calibrated on the painted block: {result.summary()}. The SegNeuron dock now uses these "
                       "settings; re-segmenting into new '… (calibrated)' layers.")
            else:
                msg = (f"Calibrated: the defaults stay best on the painted block (VI {result.default_vi:.3f}; "
                       f"nothing beat them by {MIN_GAIN:g}). Finetuning is the next step.")
            self.status_label.setText(msg)
            notify_info(msg)
            if result.improved and dock.resegment(image_layer, suffix="calibrated"):
                self._report_resegment(dock, "with the calibrated settings", f"Calibrated: {result.summary()}. ")

        self.runner.start("Calibrate", work, done)
        return True

    # -- re-segment ------------------------------------------------------------------------
    def resegment(self) -> bool:
        """Predict + segment the training image again with the adapted model, into new layers."""
        from ..io import InputError

        try:
            if self.model is None:
                raise InputError("Train first: there is no adapted model yet")
            dock = find_segneuron_dock(self.viewer)
            if dock is None:
                raise InputError("Open the SegNeuron dock (Plugins ▸ SegNeuron) to re-segment")
            if dock.runner.busy:
                raise InputError("The SegNeuron dock is busy: wait for it or cancel it first")
        except Exception as exc:  # noqa: BLE001
            self.runner.show_error(error_message(exc, "Re-segment"))
            return False
        if dock.model is not self.model:
            dock.set_model(self.model, source=str(self.model.info.get("path", "")) or None)
        image = getattr(self, "_trained_image", None)
        if image is None or image not in self.viewer.layers:
            image = self.image_combo.value()
        started = dock.resegment(image, suffix=ADAPTED_SUFFIX)
        if not started:
            return False
        self.status_label.setText(f"Re-segmenting '{image.name}' with '{self.model.info.get('name')}' in the "
                                  "SegNeuron dock; the result goes to a new layer '… (adapted)'.")
        self._report_resegment(dock, "with the adapted model")
        return True

    def _report_resegment(self, dock, how: str, before: str = "") -> None:
        """Say in this dock's status line where the SegNeuron dock's re-segment went."""

        def finished(name: str, status: str) -> None:
            if name != "Re-segment":
                return
            dock.runner.finished.disconnect(finished)
            if status == "ok" and dock.segmentation is not None:
                self.status_label.setText(
                    f"{before}Re-segmented {how} into '{dock.segmentation.layer.name}'; earlier results are kept. "
                    "Compare them, then tune the merge slider in the SegNeuron dock.")
            else:
                self.status_label.setText(f"{before}Re-segment {status}; see the SegNeuron dock.")

        dock.runner.finished.connect(finished)
