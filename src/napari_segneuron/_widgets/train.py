"""The SegNeuron training dock: finetune on your labels, or pretrain on unlabelled stacks.

Finetune: an image layer + a labels layer of the same shape (0 = membrane/background,
other ids = neurons) and, optionally, a mask layer (non-zero = annotated voxels; the
rest is ignored). Starts from the model loaded in the SegNeuron dock (or fresh weights);
the trained model becomes the loaded model there, and its Weights box shows the new
checkpoint. "fresh weights" builds the compact architecture of the bundled default.
Pretrain: masked image + HOG reconstruction on one or more image layers; the checkpoint
is then the starting point of a finetune. Cancel stops within the current iteration
(the weights of the last finished step are saved).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

import numpy as np
from qtpy.QtCore import QPointF, Qt, Signal
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

from ._common import LayerCombo, wrap_label
from ._runner import TaskRunner, error_message, notify_info, notify_warning
from .segment import _available_devices

FINETUNE = "Finetune (image + labels)"
PRETRAIN = "Pretrain (unlabelled images)"
START_LOADED = "loaded model"
START_FRESH = "fresh weights"
START_PRETRAINED = "last pretrained checkpoint"


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
    try:
        docks = dict(viewer.window.dock_widgets)
    except Exception:  # noqa: BLE001 - no window (headless viewer)
        return None
    for widget in docks.values():
        inner = unwrap_viewer(widget)
        if isinstance(inner, SegNeuronWidget):
            return inner
        for child in getattr(inner, "findChildren", lambda *_: [])(SegNeuronWidget):
            return child
    return None


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

    Fields: iterations, crop (z, y, x), batch_size, lr, device, save_to (empty = automatic).
    """
    from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, SpinBox, TupleEdit

    form = Container(widgets=[
        SpinBox(name="iterations", label="Iterations", value=500, min=1, max=1_000_000, step=100,
                tooltip="Training steps; a few hundred already adapt a model to new data"),
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
        self.pretrained_checkpoint: Optional[Path] = None
        self.last_result = None
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)

        box = QGroupBox("Training data")
        form = QFormLayout(box)
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
        self.image_combo.setToolTip("The EM stack the labels belong to")
        ff.addRow("Image", self.image_combo)
        self.labels_combo = LayerCombo(self.viewer, (napari.layers.Labels,), placeholder="(no labels)")
        self.labels_combo.setToolTip("Neuron ids of the same shape as the image; 0 = membrane/background")
        ff.addRow("Labels", self.labels_combo)
        self.mask_combo = LayerCombo(self.viewer, (napari.layers.Labels,), placeholder="(whole volume annotated)", allow_none=True)
        self.mask_combo.setToolTip("Optional: non-zero where the labels are complete; other voxels are ignored")
        ff.addRow("Mask", self.mask_combo)
        self.start_combo = QComboBox()
        self.start_combo.addItems([START_LOADED, START_FRESH, START_PRETRAINED])
        self.start_combo.setToolTip(
            "Which weights training starts from: the model loaded in the SegNeuron dock, fresh random "
            "weights, or the checkpoint of the last Pretrain run"
        )
        ff.addRow("Start", self.start_combo)
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
        outer.addWidget(self.train_button)
        self.loss_plot = LossPlot()
        outer.addWidget(self.loss_plot)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        self.progress_bar = QProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop now (within the current iteration); the weights of the last finished step are saved and loaded")
        hl.addWidget(self.progress_bar, 1)
        hl.addWidget(self.cancel_button)
        outer.addWidget(row)
        self.status_label = wrap_label("Ready.")
        outer.addWidget(self.status_label)
        outer.addStretch(1)
        self.runner = TaskRunner(self.progress_bar, self.status_label, self.cancel_button, self)
        self.runner.started.connect(lambda _n: self.train_button.setEnabled(False))
        self.runner.finished.connect(lambda _n, _s: self.train_button.setEnabled(True))
        self._loss_bridge = _LossBridge()
        self._loss_bridge.loss.connect(self.loss_plot.add)

        self.mode.currentIndexChanged.connect(self.pages.setCurrentIndex)
        self.mode.currentIndexChanged.connect(lambda _i: self._refresh_pretrain_list())
        ev = self.viewer.layers.events
        ev.inserted.connect(self._refresh_pretrain_list)
        ev.removed.connect(self._refresh_pretrain_list)
        self._refresh_pretrain_list()
        self.setMinimumWidth(300)

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
        v = self.settings.asdict()
        return {
            "iterations": int(v["iterations"]),
            "crop": tuple(int(c) for c in v["crop"]),
            "batch_size": int(v["batch_size"]),
            "lr": float(v["lr"]),
            "device": None if v["device"] == "auto" else v["device"],
        }

    @staticmethod
    def _volume(layer, what: str) -> np.ndarray:
        from ..io import InputError, as_volume

        if layer is None:
            raise InputError(f"Choose the {what} layer")
        if getattr(layer, "rgb", False):
            raise InputError(f"'{layer.name}' is an RGB image; training needs a greyscale EM stack")
        vol = as_volume(layer.data, name=f"{what} '{layer.name}'", rgb=False)
        return np.asarray(vol)

    # -- training --------------------------------------------------------------------------
    def train(self) -> None:
        try:
            if self.mode.currentText() == FINETUNE:
                job = self._finetune_job()
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
        if image.shape != labels.shape:
            raise InputError(f"The labels {labels.shape} must have the image's shape {image.shape}")
        if labels.dtype.kind not in "biu":
            raise InputError("The labels layer must hold integer neuron ids")
        mask = None
        mask_layer = self.mask_combo.value()
        if mask_layer is not None:
            mask = self._volume(mask_layer, "mask")
            if mask.shape != image.shape:
                raise InputError(f"The mask {mask.shape} must have the image's shape {image.shape}")
            mask = mask != 0
        start = self.start_combo.currentText()
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
        settings = self._settings()
        if model is None:  # fresh weights: the compact architecture of the bundled default
            settings["kn"], settings["fmu"] = default_architecture()
        ckpt = self._checkpoint_path("finetune")
        bridge = self._loss_bridge

        def work(progress, cancel):
            from ..training.finetune import TrainingCancelled, finetune

            try:
                return finetune(
                    model, image, labels, mask=mask, checkpoint=ckpt, progress=progress, cancel=cancel,
                    loss_callback=lambda it, lv: bridge.loss.emit(int(it), float(lv)),
                    metadata={"name": ckpt.stem, "trained_in": "napari-segneuron training dock"}, **settings,
                )
            except TrainingCancelled as exc:
                return exc.result

        return "Finetune", work, self._finetune_done

    def _finetune_done(self, result) -> None:
        from .._model import load_model

        self.last_result = result
        if result.checkpoint is None:
            notify_warning("Training stopped before the first checkpoint; the loaded model is unchanged")
            return
        model = load_model(result.checkpoint, device=self._settings()["device"], name=Path(result.checkpoint).stem)
        self.model = model
        dock = find_segneuron_dock(self.viewer)
        if dock is None:
            try:
                _, dock = self.viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
            except Exception:  # pragma: no cover - dock unavailable
                dock = None
        what = f"cancelled at iteration {result.iterations}" if result.cancelled else f"finished {result.iterations} iterations"
        if dock is not None:
            dock.set_model(model, source=str(result.checkpoint))
            msg = (f"Training {what}. The SegNeuron dock now uses the new weights '{model.info.get('name')}' "
                   f"({result.checkpoint}); pick 'default' there and press Load model to go back.")
        else:
            msg = f"Training {what}; weights saved to {result.checkpoint} (load them in the SegNeuron dock)"
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
            notify_warning("Pretraining stopped before the first checkpoint was written")
            return
        self.pretrained_checkpoint = Path(result.checkpoint)
        self.start_combo.setCurrentText(START_PRETRAINED)
        msg = (f"Pretraining {'cancelled' if result.cancelled else 'finished'} after {result.iterations} iterations; "
               f"{result.checkpoint} is the starting point of the next Finetune")
        self.status_label.setText(msg)
        notify_info(msg)
