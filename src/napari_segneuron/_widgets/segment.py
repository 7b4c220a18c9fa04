"""The SegNeuron dock: 1. Model, 2. Predict, 3. Segment, 4. Export & evaluate.

The widget is glue: the work is done by the Qt-free core (``_model``, ``inference``,
``segmentation``, ``io``) in a background thread through :class:`TaskRunner`.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from ..tta import DEFAULT_TTA
from ._common import (
    Collapsible,
    FormScroll,
    LayerCombo,
    TripleSpin,
    VoxelSizeField,
    cli_command,
    double_spin,
    file_voxel_size,
    int_spin,
    json_safe,
    layer_source_path,
    plugin_version,
    spatial_geometry,
    weights_provenance,
    wrap_label,
)
from . import _large
from .export_step import ExportStep, merge_hint  # noqa: F401  (merge_hint: public here too)
from ._runner import TaskRunner, error_message, notify_info, notify_warning

CHECKPOINT_ITEM = "Checkpoint file…"
#: open SegNeuron docks (the training dock hands its trained model to the one of its viewer)
DOCKS: "weakref.WeakSet" = weakref.WeakSet()


class _DockSignals(QObject):
    """Signals of every SegNeuron dock: ``model_changed(dock)`` after ``set_model``."""

    model_changed = Signal(object)


_SIGNALS: list = []


def dock_signals() -> _DockSignals:
    """The one ``_DockSignals`` (made on first use, once a QApplication exists)."""
    if not _SIGNALS:
        _SIGNALS.append(_DockSignals())
    return _SIGNALS[0]
SLIDER_STEPS = 100  # slider ticks per unit threshold
PREVIEW_DEPTH = 4  # preview: slices above and below the current one (9 slices)
#: previews up to this many voxels agglomerate in-process: starting the worker process
#: costs seconds, more than waterz needs for a 9x256x256 region (see benchmarks/bench_preview.py)
PREVIEW_IN_PROCESS_VOXELS = 4_000_000
#: a preview region up to this many voxels is predicted as one tile (about twice the default
#: 32x192x192 tile); larger regions use the tile/overlap of the advanced settings
PREVIEW_ONE_TILE_VOXELS = 2_500_000
AUTO_MAGNIFY = 0.0  # the Magnify box's lowest value, shown as 'auto': estimated from the image


@dataclass
class _PendingScale:
    """'auto' magnification not estimated yet: the stack's own voxel size and the estimate's key."""

    voxel: Optional[tuple]
    key: tuple


#: the dock's test-time augmentation choices: (shown text, ``Predictor(tta=...)``)
TTA_CHOICES = (("off: 4x faster", False), ("mean of 4 views", "mean"), ("min: fewer merges", "min"))


def score_note(settings: dict) -> str:
    """One sentence naming the edge score a segmentation used and why ("auto" picks it by voxel size)."""
    scoring = settings.get("scoring")
    if not scoring:
        return ""
    if settings.get("scoring_choice", "auto") != "auto":
        return f" Edge score: {scoring}."
    why = "serial sections" if scoring == "median-all" else "not serial sections"
    return f" Edge score: {scoring} (auto: {why})."


def _segmentation():
    from .. import segmentation

    return segmentation


def _defaults() -> tuple[float, float, int]:
    """(merge threshold, foreground threshold, min size) defaults from the core."""
    try:
        seg = _segmentation()
        thr = float(getattr(seg, "DEFAULT_THRESHOLD", 0.5))
        fg = float(getattr(seg, "DEFAULT_FG_THRESHOLD", 0.5))
        ms = int(getattr(seg, "DEFAULT_MIN_SIZE", 50))
        return thr, fg, ms
    except Exception:
        return 0.5, 0.5, 50


def _tiling_defaults():
    try:
        from ..inference import DEFAULT_TILING

        return tuple(DEFAULT_TILING.tile), tuple(DEFAULT_TILING.overlap)
    except Exception:
        return (32, 192, 192), (8, 32, 32)


def _available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            devices.append("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            devices.append("mps")
    except Exception:  # pragma: no cover
        pass
    return devices


@dataclass
class Prediction:
    """The last prediction: arrays in (z, y, x), the source image's geometry and provenance."""

    affinities: np.ndarray
    foreground: np.ndarray
    image_name: str
    scale: tuple
    translate: tuple
    squeeze: bool  # the image was 2D: outputs drop the z axis
    provenance: dict = field(default_factory=dict)
    model_grid: dict = field(default_factory=dict)  # the prediction on the model's grid when resampled


@dataclass
class Segmentation:
    """A finished agglomeration and the labels layer its slider drives."""

    agglomeration: Any
    layer: Any
    provenance: dict
    squeeze: bool
    edited: bool = False
    proofreader: Any = None  # set by the Proofread step: the slider then keeps its edits


class SegNeuronWidget(ExportStep, QWidget):
    """Weights, predict, segment with a live merge slider, export and evaluate."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        import napari.layers

        self.viewer = napari_viewer
        DOCKS.add(self)
        self.model = None
        self.prediction: Optional[Prediction] = None
        self.segmentation: Optional[Segmentation] = None
        self.slider_latency_ms: list[float] = []
        #: waterz runs in a worker process (cancellable, keeps the GUI responsive)
        self.agglomerate_in_worker = True
        self._pending_threshold: Optional[float] = None
        thr, fg, min_size = _defaults()
        tile, overlap = _tiling_defaults()

        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        body = QWidget()
        root = QVBoxLayout(body)
        root.setContentsMargins(0, 0, 0, 0)
        # never squeezed to one row by another dock beside it, never clipped on the right
        scroll = FormScroll(body)
        outer.addWidget(scroll)
        self._scroll = scroll

        # ---- 1. Model -------------------------------------------------------------------
        box = QGroupBox("1. Model")
        form = QFormLayout(box)
        self.weights_combo = QComboBox()
        self._fill_weights()
        self.weights_combo.setToolTip(
            "Which trained network to use. 'default' is bundled with the plugin (works offline); "
            "'segneuron' is the authors' released model (downloaded once, ~100 MB); or pick a checkpoint file."
        )
        form.addRow("Weights", self.weights_combo)
        path_row = QWidget()
        hl = QHBoxLayout(path_row)
        hl.setContentsMargins(0, 0, 0, 0)
        self.weights_path = QLineEdit()
        self.weights_path.setPlaceholderText("path to a .pt / .ckpt checkpoint")
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse_weights)
        hl.addWidget(self.weights_path)
        hl.addWidget(self.browse_button)
        self.path_row = path_row
        self.path_label = QLabel("File")
        form.addRow(self.path_label, path_row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(_available_devices())
        self.device_combo.setToolTip("Where the network runs. 'auto' uses a GPU when there is one.")
        form.addRow("Device", self.device_combo)
        self.load_button = QPushButton("Load model")
        self.load_button.setToolTip("Load (and if needed download) the chosen weights")
        self.load_button.clicked.connect(self.load_weights)
        form.addRow(self.load_button)
        self.model_label = wrap_label("No model loaded.")
        form.addRow(self.model_label)
        root.addWidget(box)
        self.weights_combo.currentTextChanged.connect(self._weights_choice_changed)
        self._weights_choice_changed(self.weights_combo.currentText())

        # ---- 2. Predict ------------------------------------------------------------------
        box = QGroupBox("2. Predict")
        form = QFormLayout(box)
        self.image_combo = LayerCombo(self.viewer, (napari.layers.Image,), placeholder="(open an EM image)")
        self.image_combo.setToolTip("The greyscale 3D EM stack to segment")
        form.addRow("Image", self.image_combo)
        self.voxel_field = VoxelSizeField(
            tooltip="The stack's voxel size in nm (z, y, x), from the layer scale or the file; '?' = unknown "
                    "(the model's own is assumed). When it differs from the model's, the stack is resampled "
                    "to the model's grid and back."
        )
        form.addRow("Voxel (nm)", self.voxel_field)
        self.magnify = double_spin(
            AUTO_MAGNIFY, AUTO_MAGNIFY, 4.0, 0.25,
            tooltip="Show the stack to the model this many times larger than its true scale (1 = true scale). "
                    ">1 helps tissue whose neurites and membranes are finer than the model's training data "
                    "(e.g. larval ssTEM). 'auto' (the lowest value) estimates it from the image when you predict, "
                    "without labels, and keeps 1 for stacks like the training data. The training dock's "
                    "'Calibrate' picks it from one painted block.")
        self.magnify.setSpecialValueText("auto")
        self.magnify.setSuffix(" ×")
        self._scale_estimates: dict = {}  # (image layer id, name, shape, voxel size, weights sha256) -> ScaleEstimate
        self._estimates_shown: set = set()  # ids of the estimates already announced
        self.magnify.valueChanged.connect(lambda _v: self._show_voxel_note())
        form.addRow("Magnify", self.magnify)
        self.voxel_note = wrap_label("")
        self.voxel_note.setVisible(False)
        form.addRow(self.voxel_note)
        self.image_note = wrap_label("")  # NaN voxels, constant or noise-only images
        self.image_note.setStyleSheet("color: #f0a030;")
        self.image_note.setVisible(False)
        form.addRow(self.image_note)
        self._scale_layer = None
        adv = QWidget()
        af = QFormLayout(adv)
        af.setContentsMargins(0, 0, 0, 0)
        self.tile = TripleSpin(tile, 1, 1024, tooltip="Size of the blocks the network sees at once (z, y, x); y and x must be multiples of 16. Smaller uses less memory.")
        af.addRow("Tile", self.tile)
        self.overlap = TripleSpin(overlap, 0, 512, tooltip="How much neighbouring blocks overlap (z, y, x); more overlap = smoother seams, slower")
        af.addRow("Overlap", self.overlap)
        self.batch = int_spin(0, 0, 64, tooltip="Blocks per network call; 0 = automatic (1 on CPU, fits GPU memory)")
        self.batch.setSpecialValueText("auto")
        af.addRow("Batch", self.batch)
        self.half = QCheckBox("Half precision (faster on GPU)")
        self.half.setToolTip("Run the network in 16-bit floats: about 2x faster on GPUs, tiny differences")
        af.addRow(self.half)
        self.tta = QComboBox()
        for text, mode in TTA_CHOICES:
            self.tta.addItem(text, mode)
        # the dock keeps its width: the combo does not grow to its longest item
        self.tta.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.tta.setMinimumContentsLength(8)
        self.tta.setCurrentIndex(self.tta.findData(DEFAULT_TTA))
        self.tta.setToolTip("Test-time augmentation: predict the y, x and y+x flips too (4x the compute). 'min' "
                            "(default) keeps each affinity's lowest view, so a boundary any view sees stays: fewer "
                            "merges (unseen ssTEM stack VI 0.449 -> 0.404); 'mean' averages the four views; 'off' "
                            "predicts once, 4x faster")
        af.addRow("Flips", self.tta)
        self.preview_depth = int_spin(PREVIEW_DEPTH, 1, 256, tooltip="Preview: slices above and below the current one "
                                      "(a thin slab keeps the preview to seconds)", suffix=" slices")
        af.addRow("Preview ±", self.preview_depth)
        self.preview_size = int_spin(256, 32, 2048, 16, tooltip="Preview: largest y/x size of the region in view (pixels)", suffix=" px")
        af.addRow("Preview ≤", self.preview_size)
        self.advanced = Collapsible("Advanced settings", adv, expanded=False)
        form.addRow(self.advanced)
        self.predict_button = QPushButton("Predict whole image")
        self.predict_button.setToolTip("Predict boundaries (affinities) and foreground for the whole stack")
        self.predict_button.clicked.connect(self.predict)
        self.preview_button = QPushButton("Preview in view")
        self.preview_button.setToolTip(
            "Predict + segment only the region in view (or the last rectangle of a selected Shapes layer), "
            "a few slices around the current one: tune settings in seconds"
        )
        self.preview_button.clicked.connect(self.preview)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(self.predict_button)
        hl.addWidget(self.preview_button)
        form.addRow(row)
        root.addWidget(box)

        # ---- 3. Segment ------------------------------------------------------------------
        box = QGroupBox("3. Segment")
        form = QFormLayout(box)
        self.fg_threshold = double_spin(fg, 0.0, 1.0, 0.05, tooltip="Voxels with foreground probability below this are background (label 0); "
                                        "set to the value the loaded weights declare until you change it")
        self._declared_fg = float(fg)  # the value set_model last put in the box (user edits are kept)
        form.addRow("Foreground ≥", self.fg_threshold)
        self.min_size = int_spin(min_size, 0, 10_000_000, 10, tooltip="Segments smaller than this many voxels are merged into the segment they touch most (while you drag the slider they are shown unmerged)", suffix=" voxels")
        form.addRow("Min size", self.min_size)
        self.membrane_fill = int_spin(
            _segmentation().DEFAULT_MEMBRANE_FILL, 0, 50, 1,
            tooltip="Membranes between touching neurons are background to the model. Background voxels up to "
                    "this far from a neuron join the neuron on their side of the membrane, so the labels leave no "
                    "gaps; wider background (glia, extracellular space) stays 0. 0 keeps every background voxel 0.",
            suffix=" voxels")
        form.addRow("Fill membranes ≤", self.membrane_fill)
        seg_mod = _segmentation()
        self.scoring = QComboBox()
        self.scoring.addItems([seg_mod.AUTO_SCORING, *sorted(seg_mod.SCORING_FUNCTIONS)])
        self.scoring.setCurrentText(seg_mod.AUTO_SCORING)
        self.scoring.setToolTip(
            "How two touching pieces are compared. median: the median boundary affinity, starting from the "
            "highest one along the contact (SegNeuron's choice: keeps thin necks whole); median-all: the median "
            "over the whole contact (resists leaks through a few bright voxels between sections); mean: the mean. "
            f"auto: {seg_mod.ANISOTROPIC_SCORING} for serial sections (Voxel z at least {seg_mod.ANISOTROPY:g}x y "
            f"and x), else {seg_mod.DEFAULT_SCORING}. Calibrate in the training dock picks one from a painted block.")
        form.addRow("Edge score", self.scoring)
        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip("Split the prediction into neurons (watershed + agglomeration)")
        self.segment_button.clicked.connect(self.segment)
        form.addRow(self.segment_button)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(1, SLIDER_STEPS - 1)
        self.slider.setValue(int(round(thr * SLIDER_STEPS)))
        self.slider.setEnabled(False)
        self.slider.setToolTip("Merge threshold: higher merges more (fewer, larger segments); lower splits more. Updates live after Segment.")
        self.slider.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.slider.setMinimumWidth(160)
        self.slider_label = QLabel(f"{thr:.2f}")
        self.slider_label.setMinimumWidth(36)
        self.slider_label.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        # the slider gets the dock's full width (a form field column left it ~40 px)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(QLabel("Merge threshold"))
        hl.addStretch(1)
        hl.addWidget(self.slider_label)
        form.addRow(row)
        form.addRow(self.slider)
        ends = QWidget()
        hl = QHBoxLayout(ends)
        hl.setContentsMargins(0, 0, 0, 0)
        for text, align in (("◀ split more", Qt.AlignLeft), ("merge more ▶", Qt.AlignRight)):
            lab = QLabel(f"<small>{text}</small>")
            lab.setAlignment(align)
            hl.addWidget(lab, 1)
        form.addRow(ends)
        self.segment_label = wrap_label("Predict first, then Segment; then move the slider.")
        form.addRow(self.segment_label)
        self.slider.valueChanged.connect(self._slider_moved)
        self.slider.sliderReleased.connect(lambda: self._slider_moved(self.slider.value()))
        self._slider_timer = QTimer(self)
        self._slider_timer.setSingleShot(True)
        self._slider_timer.setInterval(0)
        self._slider_timer.timeout.connect(self._apply_threshold)
        root.addWidget(box)
        from .proofread import ProofreadStep

        box = QGroupBox("Proofread")
        self.proofread_step = ProofreadStep(self.viewer, lambda: self.segmentation)
        QVBoxLayout(box).addWidget(self.proofread_step)
        root.addWidget(box)

        # ---- 4. Export & evaluate --------------------------------------------------------
        box = QGroupBox("4. Export && evaluate")
        form = QFormLayout(box)
        self.labels_combo = LayerCombo(self.viewer, (napari.layers.Labels,), placeholder="(choose a segmentation)",
                                       allow_none=True)
        self.labels_combo.setToolTip("The segmentation to export or evaluate (Segment and Preview select theirs)")
        form.addRow("Labels", self.labels_combo)
        self.export_button = QPushButton("Export labels…")
        self.export_button.setToolTip("Save as .tif or .zarr, with the settings used (provenance) inside the file")
        self.export_button.clicked.connect(self._export_clicked)
        self.cli_button = QPushButton("Copy as CLI command")
        self.cli_button.setToolTip("Copy the napari-segneuron command that reproduces this segmentation without the GUI")
        self.cli_button.clicked.connect(self.copy_cli_command)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(self.export_button)
        hl.addWidget(self.cli_button)
        form.addRow(row)
        self.gt_combo = LayerCombo(self.viewer, (napari.layers.Labels,), placeholder="(choose the ground truth)",
                                   allow_none=True)
        self.gt_combo.setToolTip("Ground-truth labels of the same shape (0 = ignored); never picked for you "
                                 "unless a layer's name says 'truth' or 'gt'")
        form.addRow("Ground truth", self.gt_combo)
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setToolTip("Compare the labels with the ground truth (lower is better)")
        self.evaluate_button.clicked.connect(self.evaluate)
        form.addRow(self.evaluate_button)
        self.eval_label = wrap_label(
            "VI split / merge (over- / under-segmentation) and adapted Rand error; lower is better."
        )
        form.addRow(self.eval_label)
        root.addWidget(box)
        root.addStretch(1)

        # ---- progress / cancel -----------------------------------------------------------
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status_label = wrap_label("Ready.")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running step; what you had stays as it was")
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(self.progress_bar, 1)
        hl.addWidget(self.cancel_button)
        outer.addWidget(row)
        outer.addWidget(self.status_label)
        self.runner = TaskRunner(self.progress_bar, self.status_label, self.cancel_button, self)
        self.runner.started.connect(lambda _n: self._set_busy(True))
        self.runner.finished.connect(lambda _n, _s: self._set_busy(False))
        self._pick_default_layers()
        self.viewer.layers.events.inserted.connect(self._pick_default_layers)
        self.labels_combo.currentTextChanged.connect(self._labels_changed)
        self.image_combo.currentTextChanged.connect(self._image_changed)
        self._image_changed()
        self.setMinimumWidth(340)

    # =====================================================================================
    # helpers
    # =====================================================================================
    def _set_busy(self, busy: bool) -> None:
        for w in (self.load_button, self.predict_button, self.preview_button, self.segment_button,
                  self.export_button, self.evaluate_button):
            w.setEnabled(not busy)

    def _fill_weights(self) -> None:
        try:
            from .._model import REGISTRY, list_weights

            names = list_weights()
        except Exception:
            REGISTRY, names = {}, ["default"]
        for name in names:
            self.weights_combo.addItem(name)
            entry = REGISTRY.get(name) if REGISTRY else None
            if entry is not None:
                self.weights_combo.setItemData(self.weights_combo.count() - 1, entry.description, Qt.ToolTipRole)
        self.weights_combo.addItem(CHECKPOINT_ITEM)

    def _weights_choice_changed(self, text: str) -> None:
        self.path_row.setVisible(text == CHECKPOINT_ITEM)
        self.path_label.setVisible(text == CHECKPOINT_ITEM)

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a SegNeuron checkpoint", "", "Checkpoints (*.pt *.pth *.ckpt);;All files (*)")
        if path:
            self.weights_path.setText(path)

    def _pick_default_layers(self, event=None) -> None:
        """After a layer is added, pick a ground truth only by its name ('truth', 'gt', 'ground'),
        never the labels layer being evaluated nor one SegNeuron made."""
        current = self.gt_combo.value()
        if current is not None and current is not self.labels_combo.value():
            return
        for lay in self.gt_combo.layers():
            words = lay.name.lower().replace("_", " ").split()
            named = "truth" in lay.name.lower() or "gt" in words or "groundtruth" in words
            ours = (lay.metadata or {}).get("segneuron", {}).get("plugin") == "napari-segneuron"
            if named and not ours and lay is not self.labels_combo.value():
                self.gt_combo.set_value(lay)
                return
        if current is not None:  # it was the evaluated layer: back to "choose"
            self.gt_combo.setCurrentIndex(0)

    def _labels_changed(self, _text: str = "") -> None:
        self._pick_default_layers()

    def _image_changed(self, _text: str = "") -> None:
        """Prefill the voxel size from the new image (layer scale, else file metadata); follow its scale."""
        layer = self.image_combo.value()
        if self._scale_layer is not None and self._scale_layer is not layer:
            try:
                self._scale_layer.events.scale.disconnect(self._prefill_voxel_size)
            except Exception:  # noqa: BLE001
                pass
            self._scale_layer = None
        if layer is not None and self._scale_layer is None:
            layer.events.scale.connect(self._prefill_voxel_size)
            self._scale_layer = layer
        self.image_note.setVisible(False)
        self._prefill_voxel_size()

    def _prefill_voxel_size(self, event=None) -> None:
        from ..resample import voxel_size_from_scale

        layer = self.image_combo.value()
        voxel, origin = None, ""
        if layer is not None:
            voxel = voxel_size_from_scale(layer.scale)
            origin = "layer scale"
            if voxel is None:
                voxel = file_voxel_size(layer_source_path(layer))
                origin = "file metadata"
        self.voxel_field.set_value(voxel)
        self.voxel_field.setToolTip(
            self.voxel_field.boxes[0].toolTip() + (f"\n(prefilled from the {origin})" if voxel is not None else "")
        )
        self._show_voxel_note()

    def _show_voxel_note(self) -> None:
        """Say under the field what happens with the voxel size in it."""
        model_voxel = (getattr(self.model, "info", None) or {}).get("voxel_size_nm") if self.model is not None else None
        voxel = self.voxel_field.value()
        if self.image_combo.value() is None or model_voxel is None:
            self.voxel_note.setVisible(False)
            return
        mv = "×".join(f"{v:g}" for v in model_voxel)
        magnify = self.magnification()
        est = self._scale_estimates.get(self._estimate_key(self.image_combo.value(), voxel))
        auto = ""
        if self.magnify_is_auto():
            auto = (f"Magnify auto: {est.magnify:g}× estimated from the image. " if est is not None else
                    "Magnify auto: estimated from the image when you predict (no labels needed). ")
        if magnify is not None and magnify != 1.0:
            from ..calibration import magnified_voxel_size
            from ..resample import DEFAULT_TOLERANCE, needs_resampling

            shown = magnified_voxel_size(voxel, model_voxel, magnify)
            back = (", then resampled back." if needs_resampling(shown, model_voxel)
                    else f": within {DEFAULT_TOLERANCE:.0%} of that grid, so it is predicted as it is.")
            text = (f"<small>{auto}Magnified {magnify:g}× onto the model's {mv} nm grid"
                    + (" (voxel size unknown: the model's own assumed)" if voxel is None else "")
                    + back + "</small>")
        elif voxel is None:
            text = (f"<small>{auto}Voxel size unknown: the model's own {mv} nm is assumed. Type the stack's voxel size "
                    "(z, y, x in nm) above if it differs.</small>")
        else:
            from ..resample import needs_resampling

            text = (f"<small>{auto}Resampled to the model's {mv} nm and back.</small>" if needs_resampling(voxel, model_voxel)
                    else f"<small>{auto}Matches the model's {mv} nm: no resampling.</small>")
        self.voxel_note.setText(text)
        self.voxel_note.setVisible(True)

    def _image_volume(self):
        """The selected image as a validated (z, y, x) volume; raises InputError with a message."""
        from ..io import InputError, as_volume

        layer = self.image_combo.value()
        if layer is None:
            raise InputError("There is no image layer: open an EM stack (File ▸ Open) or a sample (File ▸ Open Sample ▸ SegNeuron)")
        if layer.multiscale:
            raise InputError(f"'{layer.name}' is a multiscale image; open its full-resolution level as a normal image")
        if layer.rgb:
            raise InputError(f"'{layer.name}' is an RGB image; SegNeuron needs a greyscale EM stack (convert it first)")
        volume = as_volume(layer.data, name=f"image '{layer.name}'", rgb=False)
        if volume.ndim != 3:
            raise InputError(f"'{layer.name}' must be a 3D (z, y, x) stack, got shape {tuple(layer.data.shape)}")
        return layer, volume

    def _checked_volume(self, layer, volume):
        """``volume`` with NaN/inf as the darkest value (``io.check_finite``); a constant or
        noise-only image is warned about. Warnings go to a notification and under the Image box."""
        import warnings

        from ..image_checks import content_warning
        from ..io import check_finite

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            volume = check_finite(volume, name=f"image '{layer.name}'")
        notes = [str(w.message) for w in caught]
        note = content_warning(volume, name=f"image '{layer.name}'")
        if note:
            notes.append(note)
        for text in notes:
            notify_warning(text)
        self.image_note.setText("⚠ " + "<br>⚠ ".join(notes) if notes else "")
        self.image_note.setVisible(bool(notes))
        return volume

    def _require_model(self) -> None:
        from ..io import InputError

        if self.model is None:
            raise InputError("No model is loaded: choose weights in '1. Model' and press 'Load model'")

    def _predict_settings(self) -> dict:
        return {
            "tile": list(self.tile.value()),
            "overlap": list(self.overlap.value()),
            "batch_size": int(self.batch.value()) or None,
            "device": self.device_combo.currentText(),
            "half": bool(self.half.isChecked()),
            "tta": self.tta.currentData() or False,
            "magnify": self.magnification() or 1.0,
            "magnify_auto": self.magnify_is_auto(),
        }

    def _segment_settings(self) -> dict:
        return {
            "fg_threshold": float(self.fg_threshold.value()),
            "min_size": int(self.min_size.value()),
            "membrane_fill": int(self.membrane_fill.value()),
            "scoring": _segmentation().resolve_scoring(self.scoring.currentText(), self.voxel_field.value()),
            "scoring_choice": self.scoring.currentText(),
            "threshold": self.threshold(),
        }

    def threshold(self) -> float:
        return self.slider.value() / SLIDER_STEPS

    def set_threshold(self, value: float) -> None:
        self.slider.setValue(int(round(value * SLIDER_STEPS)))

    def magnify_is_auto(self) -> bool:
        return float(self.magnify.value()) == AUTO_MAGNIFY

    def _estimate_key(self, layer, voxel) -> tuple:
        sha = (getattr(self.model, "info", None) or {}).get("sha256") if self.model is not None else None
        shape = tuple(getattr(getattr(layer, "data", None), "shape", ()) or ())
        return (id(layer), getattr(layer, "name", None), shape, tuple(voxel) if voxel else None, sha)

    def magnification(self, layer=None) -> Optional[float]:
        """The magnification predictions use: the box's number; with 'auto', the estimate made for
        ``layer`` (default: the chosen image) with these weights, 1 when the weights cannot be
        compared, None when it is not estimated yet."""
        if not self.magnify_is_auto():
            return float(self.magnify.value())
        from ..scale_estimate import reference_halfwidth

        if self.model is None or reference_halfwidth(self.model) is None or \
                not (getattr(self.model, "info", None) or {}).get("voxel_size_nm"):
            return 1.0
        layer = layer if layer is not None else self.image_combo.value()
        est = self._scale_estimates.get(self._estimate_key(layer, self.voxel_field.value()))
        return None if est is None else est.magnify

    def _resolved_voxel(self, planned, predictor, volume, progress, cancel, provenance: Optional[dict] = None):
        """In a worker: ``planned`` from ``_voxel_size``; a pending 'auto' is estimated on ``volume``
        (``scale_estimate``, label-free), remembered for the image, and turned into the voxel size
        to predict with. The provenance records the magnification and the estimate."""
        if not isinstance(planned, _PendingScale):
            return planned
        from ..calibration import magnified_voxel_size
        from ..scale_estimate import estimate_magnification

        est = estimate_magnification(predictor, volume, planned.voxel, progress=progress, cancel=cancel)
        self._scale_estimates[planned.key] = est
        if provenance is not None:
            provenance.setdefault("predict", {})["magnify"] = est.magnify
            provenance["predict"]["magnify_estimate"] = est.record()
        return magnified_voxel_size(planned.voxel, predictor.model_voxel_size, est.magnify)

    def _after_estimate(self, layer) -> None:
        """On the GUI thread after a task that may have estimated the magnification: say it."""
        if not self.magnify_is_auto():
            return
        est = self._scale_estimates.get(self._estimate_key(layer, self.voxel_field.value()))
        if est is not None and id(est) not in self._estimates_shown:
            self._estimates_shown.add(id(est))
            notify_info(f"Magnify auto for '{layer.name}': {est.summary()}")
        self._show_voxel_note()

    def _voxel_size(self, layer, predictor, provenance: Optional[dict] = None):
        """The voxel size in nm to predict with: the dock's voxel-size field (prefilled from the
        layer scale or the file), times the magnification; says once when it is unknown. The
        stack's own voxel size goes into ``provenance``."""
        from ..calibration import magnified_voxel_size
        from ..resample import needs_resampling

        voxel = self.voxel_field.value()
        if voxel is not None and provenance is not None:
            provenance["voxel_size_nm"] = list(voxel)
        model_voxel = predictor.model_voxel_size
        magnify = self.magnification(layer)
        if magnify is None:  # 'auto', not estimated yet for this image: the worker estimates it first
            return _PendingScale(voxel, self._estimate_key(layer, voxel))
        if magnify != 1.0 and model_voxel is None:
            notify_warning("The loaded weights declare no voxel size, so there is no grid to magnify onto: "
                           "predicting at magnification 1")
        elif magnify != 1.0:
            shown = magnified_voxel_size(voxel, model_voxel, magnify)
            notify_info(f"Predicting '{layer.name}' magnified {magnify:g}× (as if its voxels were "
                        f"{'×'.join(f'{v:g}' for v in shown)} nm) and resampling back")
            return shown
        if voxel is None and model_voxel is not None and not getattr(self, "_voxel_note_shown", False):
            self._voxel_note_shown = True
            notify_info(
                f"'{layer.name}' has no voxel size: assuming the model's own "
                f"{'×'.join(f'{v:g}' for v in model_voxel)} nm. If the stack's differs, type it (z, y, x in nm) "
                "in '2. Predict ▸ Voxel (nm)' and the stack is resampled to the model's grid."
            )
        elif voxel is not None and needs_resampling(voxel, model_voxel, predictor.tolerance):
            notify_info(
                f"Predicting '{layer.name}' at the model's voxel size "
                f"{'×'.join(f'{v:g}' for v in model_voxel)} nm and resampling back"
            )
        return voxel

    # The public API other docks use (training, calibration): the predictor the dock would use, the
    # voxel size it would predict with, and the magnification it estimated.
    def predictor(self, settings: Optional[dict] = None):
        """A ``Predictor`` with the dock's model and predict settings."""
        return self._predictor(settings)

    def voxel_size(self, layer, predictor, provenance: Optional[dict] = None):
        """The voxel size (nm) Predict would use for ``layer``, or a pending 'auto' estimate."""
        return self._voxel_size(layer, predictor, provenance)

    def resolved_voxel(self, planned, predictor, volume, progress=None, cancel=None,
                       provenance: Optional[dict] = None):
        """In a worker: turn ``voxel_size``'s answer into a voxel size, estimating 'auto' on ``volume``."""
        return self._resolved_voxel(planned, predictor, volume, progress, cancel, provenance)

    def estimated_magnification(self, planned) -> Optional[float]:
        """The magnification estimated for a pending 'auto' (after ``resolved_voxel``), else None."""
        est = self._scale_estimates.get(getattr(planned, "key", None))
        return None if est is None else est.magnify

    def _predictor(self, settings: Optional[dict] = None):
        from ..inference import Predictor

        s = settings or self._predict_settings()
        device = None if s["device"] == "auto" else s["device"]
        return Predictor(self.model, tile=s["tile"], overlap=s["overlap"], batch_size=s["batch_size"], device=device, half=s["half"],
                         tta=s["tta"])

    def _preview_settings(self, region) -> dict:
        """Predict settings of a preview: one tile fitted to the region (y, x rounded up to the
        network's multiple of 16), no overlap; a region too large for one tile keeps the
        advanced settings' tiling."""
        s = self._predict_settings()
        size = [sl.stop - sl.start for sl in region]
        tile = [size[0], -(-size[1] // 16) * 16, -(-size[2] // 16) * 16]
        if int(np.prod(tile)) <= PREVIEW_ONE_TILE_VOXELS:
            s["tile"], s["overlap"] = tile, [0, 0, 0]
        return s

    def _agglomerate(self, affinities, foreground, seg_settings, progress=None, cancel=None, model_grid=None,
                     worker: Optional[bool] = None):
        """Agglomerate; a resampled prediction is agglomerated on the model's grid
        (``model_grid``) and its fragments carried to the image grid. waterz runs in the
        worker process (``agglomerate_in_worker``) unless ``worker`` says otherwise."""
        seg = _segmentation()
        shape = tuple(affinities.shape[1:])
        if model_grid:
            affinities, foreground = model_grid["affinities"], model_grid["foreground"]
        return seg.agglomerate(
            affinities,
            foreground,
            fg_threshold=seg_settings["fg_threshold"],
            min_size=seg_settings["min_size"],
            membrane_fill=seg_settings.get("membrane_fill", seg.DEFAULT_MEMBRANE_FILL),
            scoring=seg_settings.get("scoring", seg.DEFAULT_SCORING),
            max_threshold=getattr(seg, "DEFAULT_MAX_THRESHOLD", 1.0),
            worker=bool(self.agglomerate_in_worker if worker is None else worker),
            output_shape=shape if model_grid else None,
            progress=progress,
            cancel=cancel,
        )

    def _base_provenance(self, image_layer, step: str) -> dict:
        return {
            "plugin": "napari-segneuron",
            "plugin_version": plugin_version(),
            "step": step,
            "source_image": image_layer.name,
            "source_path": layer_source_path(image_layer),
            "weights": weights_provenance(self.model),
            "predict": self._predict_settings(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _upsert_layer(self, name: str, data, kind: str, provenance: dict, scale, translate, **kwargs):
        """Update our own output layer of that name, or add a new one (never touch the user's layers)."""
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        ours = (
            existing is not None
            and existing.metadata.get("segneuron", {}).get("plugin") == "napari-segneuron"
            and not existing.metadata.get("segneuron_edited")  # painted by the user: keep it
        )
        # isinstance, not the type's name: napari hands plugins its layers wrapped in a proxy
        from napari.layers import Image, Labels

        same_kind = isinstance(existing, {"labels": Labels, "image": Image}[kind])
        if existing is not None and ours and same_kind and existing.ndim == np.ndim(data) - (1 if kwargs.get("rgb") else 0):
            existing.data = data
            existing.scale = scale
            existing.translate = translate
            existing.metadata["segneuron"] = provenance
            return existing
        if existing is not None:
            i = 2
            while f"{name} [{i}]" in self.viewer.layers:
                i += 1
            name = f"{name} [{i}]"
        add = getattr(self.viewer, f"add_{kind}")
        return add(data, name=name, scale=scale, translate=translate, metadata={"segneuron": provenance}, **kwargs)

    # =====================================================================================
    # 1. Model
    # =====================================================================================
    def load_weights(self) -> None:
        choice = self.weights_combo.currentText()
        if choice == CHECKPOINT_ITEM:
            source = self.weights_path.text().strip()
            if not source:
                self.runner.show_error("Choose a checkpoint file first (Browse…)")
                return
            if not Path(source).expanduser().is_file():
                self.runner.show_error(f"Checkpoint file not found: {source}")
                return
        else:
            source = choice
        device = self.device_combo.currentText()
        device = None if device == "auto" else device
        name = Path(source).stem if choice == CHECKPOINT_ITEM else choice

        def work(progress, cancel):
            from .._model import load_named

            progress(0, 1, f"finding and loading weights '{name}'")
            model = load_named(source, device=device, progress=progress, cancel=cancel)
            if choice == CHECKPOINT_ITEM:
                model.info["name"] = name
            progress(1, 1, "loaded")
            return model

        self.runner.start("Load model", work, self.set_model)

    def set_model(self, model, source: Optional[str] = None) -> None:
        """Use ``model`` (an MNet with ``.info``) from now on; old predictions stay as they are.

        ``source``: the checkpoint file the model came from when it was not chosen in this
        dock (e.g. the training dock's result); the Weights box then shows that file.
        """
        self.model = model
        if source is not None:
            self.weights_combo.setCurrentText(CHECKPOINT_ITEM)
            self.weights_path.setText(str(source))
        info = getattr(model, "info", {}) or {}
        n = info.get("n_parameters") or sum(p.numel() for p in model.parameters())
        sha = (info.get("sha256") or "")[:12]
        vs = info.get("voxel_size_nm")
        text = (
            f"<b>{info.get('name', 'model')}</b>: MNet kn={tuple(info.get('kn', getattr(model, 'kn', ())))}, "
            f"{n / 1e6:.2f} M parameters, on {info.get('device', '?')}"
        )
        if vs:
            text += f"; trained at {'×'.join(f'{v:g}' for v in vs)} nm"
        if sha:
            text += f"<br><small>sha256 {sha}…</small>"
        self.model_label.setText(text)
        self.model_label.setToolTip(info.get("path", ""))
        origin = f" from {source}" if source is not None else ""
        note = self._follow_declared_fg(info)
        self.status_label.setText(f"Model '{info.get('name', 'model')}' loaded{origin}.{note}")
        self._show_voxel_note()
        dock_signals().model_changed.emit(self)

    def _follow_declared_fg(self, info: dict) -> str:
        """Put the foreground threshold the weights declare (else the package default) in the box,
        unless the user has changed the box since the last model; returns a note for the status."""
        declared = float(_segmentation().foreground_threshold_for(info))
        if abs(self.fg_threshold.value() - self._declared_fg) > 1e-9 or abs(declared - self._declared_fg) <= 1e-9:
            return ""
        self.fg_threshold.setValue(declared)
        self._declared_fg = declared
        why = "the value these weights declare" if info.get("fg_threshold") is not None else \
            "the package default (these weights declare none)"
        return f" Foreground ≥ set to {declared:g}, {why}."

    # =====================================================================================
    # 2. Predict
    # =====================================================================================
    def predict(self) -> None:
        try:
            self._require_model()
            layer, volume = self._image_volume()
            predictor = self._predictor()
            if _large.is_large(volume):  # a lazy volume beyond LARGE_VOXELS: blockwise, lazy layers
                self._predict_large(layer, volume, predictor)
                return
            volume = self._checked_volume(layer, volume)
        except Exception as exc:  # noqa: BLE001
            self.runner.show_error(error_message(exc, "Predict"))
            return
        squeeze = layer.ndim == 2
        scale, translate = spatial_geometry(layer, 2 if squeeze else 3)
        provenance = self._base_provenance(layer, "predict")

        voxel = self._voxel_size(layer, predictor, provenance)

        def work(progress, cancel):
            grid: dict = {}
            shown = self._resolved_voxel(voxel, predictor, volume, progress, cancel, provenance)
            aff, fg = predictor.predict(volume, progress=progress, cancel=cancel, voxel_size=shown, model_grid=grid)
            return aff, fg, grid

        def done(result):
            aff, fg, grid = result
            self._after_estimate(layer)
            self._invalidate_segmentation("the prediction changed: press Segment again")
            self.prediction = Prediction(aff, fg, layer.name, scale, translate, squeeze, provenance, grid)
            self._show_prediction(self.prediction)

        self.runner.start("Predict", work, done)

    def _predict_large(self, layer, volume, predictor) -> None:
        """Blockwise prediction of a large lazy image into a zarr group (``_large``); the
        layers show it lazily. No resampling: the image must be on the model's voxel size."""
        from ..io import InputError
        from ..resample import needs_resampling

        voxel = self.voxel_field.value()
        model_voxel = predictor.model_voxel_size
        if self.magnify_is_auto():
            notify_info(f"'{layer.name}' is predicted block by block (it is larger than memory allows), which does "
                        "not resample: Magnify 'auto' is not applied (magnification 1)")
        elif float(self.magnify.value()) != 1.0:
            raise InputError(f"'{layer.name}' is predicted block by block (it is larger than memory allows), which "
                             "does not resample: set Magnify to 1, or resample the stack first")
        if voxel is not None and needs_resampling(voxel, model_voxel, predictor.tolerance):
            raise InputError(
                f"'{layer.name}' is predicted block by block (it is larger than memory allows), which does not "
                f"resample: resample it to the model's {'×'.join(f'{v:g}' for v in model_voxel)} nm first")
        settings = self._predict_settings()
        scale, translate = spatial_geometry(layer, 3)
        provenance = self._base_provenance(layer, "predict")
        output = _large.work_dir() / "prediction.zarr"
        provenance.update(blockwise=True, prediction_zarr=str(output))

        def work(progress, cancel):
            return _large.predict_large(predictor, settings, volume, output, progress=progress, cancel=cancel)

        def done(result):
            aff, fg = result
            self._invalidate_segmentation("the prediction changed: press Segment again")
            self.prediction = Prediction(aff, fg, layer.name, scale, translate, False, provenance)
            self._show_prediction(self.prediction)

        self.runner.start("Predict", work, done)

    def _show_prediction(self, p: Prediction, suffix: str = "") -> None:
        aff, fg = p.affinities, p.foreground
        if p.squeeze:
            aff, fg = aff[:, 0], fg[0]
        prov = json_safe(p.provenance)
        # affinities as one RGB layer (z, y, x channels -> R, G, B): dark = boundary
        self._upsert_layer(
            self._new_layer_name(f"{p.image_name} affinities", suffix), np.moveaxis(aff, 0, -1), "image", prov,
            p.scale, p.translate, rgb=True, opacity=0.6, visible=True,
        )
        self._upsert_layer(
            self._new_layer_name(f"{p.image_name} foreground", suffix), fg, "image", prov, p.scale, p.translate,
            colormap="magma", contrast_limits=(0.0, 1.0), visible=False,
        )
        self.segment_label.setText("Prediction ready: press Segment.")

    def _new_layer_name(self, base: str, suffix: str) -> str:
        """``base`` unchanged without a suffix; else ``base (suffix)``, numbered so no layer is replaced."""
        if not suffix:
            return base
        name = f"{base} ({suffix})"
        i = 2
        while name in self.viewer.layers:
            name = f"{base} ({suffix} {i})"
            i += 1
        return name

    def _predict_and_segment(self, predictor, volume, voxel, seg_settings, progress, cancel,
                             worker: Optional[bool] = None):
        """Predict then agglomerate in one task (Preview, Re-segment): the bar's first half is
        the prediction, the second the segmentation. Returns (aff, fg, model grid, agg, labels)."""
        def p_pred(done, total, msg=""):
            progress(done, 2 * total, f"predict {msg}")

        def p_seg(done, total, msg=""):
            progress(total + done, 2 * total, f"segment {msg}")

        grid: dict = {}
        aff, fg = predictor.predict(volume, progress=p_pred, cancel=cancel, voxel_size=voxel, model_grid=grid)
        agg = self._agglomerate(aff, fg, seg_settings, progress=p_seg, cancel=cancel, model_grid=grid, worker=worker)
        return aff, fg, grid, agg, agg.labels(seg_settings["threshold"])

    def resegment(self, layer=None, suffix: str = "adapted") -> bool:
        """Predict + segment ``layer`` (default: the chosen image) in one step with the loaded model.

        The outputs go to new layers named ``<image> affinities/foreground/segmentation (<suffix>)``
        (numbered when taken): earlier results and the user's layers are never replaced.
        Returns False (with a message) when it cannot start.
        """
        if layer is not None:
            self.image_combo.set_value(layer)
        try:
            self._require_model()
            layer, volume = self._image_volume()
            predictor = self._predictor()
            volume = self._checked_volume(layer, volume)
        except Exception as exc:  # noqa: BLE001
            self.runner.show_error(error_message(exc, "Re-segment"))
            return False
        squeeze = layer.ndim == 2
        scale, translate = spatial_geometry(layer, 2 if squeeze else 3)
        seg_settings = self._segment_settings()
        provenance = self._base_provenance(layer, "predict")
        voxel = self._voxel_size(layer, predictor, provenance)

        def work(progress, cancel):
            shown = self._resolved_voxel(voxel, predictor, volume, progress, cancel, provenance)
            return self._predict_and_segment(predictor, volume, shown, seg_settings, progress, cancel)

        def done(result):
            aff, fg, grid, agg, labels = result
            self._after_estimate(layer)
            self._invalidate_segmentation("a new prediction was made")
            self.prediction = Prediction(aff, fg, layer.name, scale, translate, squeeze, provenance, grid)
            self._show_prediction(self.prediction, suffix)
            seg_prov = dict(provenance, step="segment", segment=seg_settings)
            name = self._new_layer_name(f"{layer.name} segmentation", suffix)
            self._install_segmentation(agg, labels, name, seg_prov, scale, translate, squeeze)
            self.segment_label.setText(f"Segmented '{layer.name}' into '{name}'. Move the merge slider: it updates live."
                                       + score_note(seg_settings))

        self.runner.start("Re-segment", work, done)
        return True

    def _invalidate_segmentation(self, why: str) -> None:
        if self.segmentation is not None:
            self.segmentation = None
            self.slider.setEnabled(False)
            self.segment_label.setText(f"Old segmentation kept as is; {why}.")

    def preview_region(self, layer, shape) -> tuple[slice, slice, slice]:
        """The (z, y, x) region to preview: a box from a selected Shapes layer, else the view."""
        import napari.layers

        zc = None
        try:
            point = np.asarray(layer.world_to_data(self.viewer.dims.point), dtype=float)
            zc = int(round(point[-3]))
        except Exception:
            pass
        if zc is None or not (0 <= zc < shape[0]):
            zc = shape[0] // 2
        dz = int(self.preview_depth.value())
        z0, z1 = max(0, zc - dz), min(shape[0], zc + dz + 1)
        y0, y1, x0, x1 = 0, shape[1], 0, shape[2]
        active = self.viewer.layers.selection.active
        box_found = False
        if isinstance(active, napari.layers.Shapes) and len(active.data):
            verts = np.asarray(active.data[-1], dtype=float)
            world = np.array([active.data_to_world(v) for v in verts])
            full = np.zeros((len(world), self.viewer.dims.ndim))
            full[:, -world.shape[1]:] = world
            data = np.array([layer.world_to_data(w) for w in full])
            y0, x0 = np.floor(data[:, -2:].min(0)).astype(int)
            y1, x1 = np.ceil(data[:, -2:].max(0)).astype(int) + 1
            box_found = True
        else:
            corners = np.asarray(getattr(layer, "corner_pixels", np.zeros((2, layer.ndim))), dtype=int)
            if corners.shape[-1] >= 2 and (corners[1, -2:] > corners[0, -2:]).all():
                y0, x0 = corners[0, -2:]
                y1, x1 = corners[1, -2:] + 1
        y0, y1 = max(0, int(y0)), min(shape[1], int(y1))
        x0, x1 = max(0, int(x0)), min(shape[2], int(x1))
        if y1 <= y0 or x1 <= x0:
            y0, y1, x0, x1 = 0, shape[1], 0, shape[2]
        limit = int(self.preview_size.value())
        if not box_found:
            # cap the region around its centre
            if y1 - y0 > limit:
                c = (y0 + y1) // 2
                y0, y1 = max(0, c - limit // 2), min(shape[1], c - limit // 2 + limit)
            if x1 - x0 > limit:
                c = (x0 + x1) // 2
                x0, x1 = max(0, c - limit // 2), min(shape[2], c - limit // 2 + limit)
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    def preview(self) -> None:
        try:
            self._require_model()
            layer, volume = self._image_volume()
            region = self.preview_region(layer, tuple(volume.shape))
            pred_settings = self._preview_settings(region)
            predictor = self._predictor(pred_settings)
            volume = self._checked_volume(layer, volume)
        except Exception as exc:  # noqa: BLE001
            self.runner.show_error(error_message(exc, "Preview"))
            return
        squeeze = layer.ndim == 2
        scale, translate = spatial_geometry(layer, 2 if squeeze else 3)
        start = [s.start for s in region]
        stop = [s.stop for s in region]
        offset = [t + s * a for t, s, a in zip(translate, scale, start[-len(scale):])]
        seg_settings = self._segment_settings()
        provenance = self._base_provenance(layer, "preview")
        provenance["predict"] = pred_settings
        provenance["segment"] = seg_settings
        small = int(np.prod([b - a for a, b in zip(start, stop)])) <= PREVIEW_IN_PROCESS_VOXELS
        provenance["region"] = {"start": start, "stop": stop}
        voxel = self._voxel_size(layer, predictor, provenance)

        def work(progress, cancel):
            # 'auto' is estimated on the whole image (once per image), not on the previewed region
            shown = self._resolved_voxel(voxel, predictor, volume, progress, cancel, provenance)
            _, _, _, agg, labels = self._predict_and_segment(
                predictor, np.asarray(volume[region]), shown, seg_settings, progress, cancel,
                worker=False if small else None)
            return agg, labels

        def done(result):
            agg, labels = result
            self._after_estimate(layer)
            self._install_segmentation(
                agg, labels, f"{layer.name} preview", provenance, scale, offset, squeeze,
            )
            shape_txt = "×".join(str(b - a) for a, b in zip(start, stop))
            self.segment_label.setText(
                f"Preview of z {start[0]}–{stop[0] - 1}, y {start[1]}–{stop[1] - 1}, x {start[2]}–{stop[2] - 1} "
                f"({shape_txt}): move the slider to tune, then Predict/Segment the whole image."
            )

        self.runner.start("Preview", work, done)

    # =====================================================================================
    # 3. Segment
    # =====================================================================================
    def _prediction_from_layers(self) -> Optional[Prediction]:
        """A prediction zarr opened in the viewer (File > Open on a saved prediction): the
        selected layer's, else the last one opened; None when there is none."""
        from .. import io

        layers = list(self.viewer.layers.selection) + list(self.viewer.layers)[::-1]
        for layer in layers:
            md = getattr(layer, "metadata", {}) or {}
            path = md.get("source_path")
            if not path:
                continue
            large = _large.is_large(getattr(layer, "data", None))  # opened lazily and large: stay lazy
            try:
                aff, fg = _large.open_prediction(path) if large else io.read_prediction(path)
            except Exception:  # noqa: BLE001 - not a prediction: keep looking
                continue
            if not large:
                aff, fg = np.asarray(aff, dtype=np.float32), np.asarray(fg, dtype=np.float32)
            scale, translate = spatial_geometry(layer, 3)
            prov = dict(md.get("segneuron") or {})
            prov.setdefault("prediction", str(path))
            return Prediction(aff, fg, Path(str(path)).stem, scale, translate, False, prov)
        return None

    def segment(self) -> None:
        if self.prediction is None:
            try:
                self.prediction = self._prediction_from_layers()
            except Exception as exc:  # noqa: BLE001
                self.runner.show_error(error_message(exc, "Segment"))
                return
            if self.prediction is not None:
                notify_info(f"Segmenting the prediction opened from {self.prediction.provenance['prediction']}")
        if self.prediction is None:
            self.runner.show_error("Nothing to segment yet: run '2. Predict' first (or Preview), or open a saved prediction (.zarr)")
            return
        p = self.prediction
        seg_settings = self._segment_settings()
        provenance = dict(p.provenance)
        provenance["step"] = "segment"
        provenance["segment"] = seg_settings

        large = _large.is_large(p.foreground)

        def work(progress, cancel):
            if large:  # blockwise with one global merge graph; lazy labels
                agg = _large.segment_large(p.affinities, p.foreground, _large.work_dir() / "segmentation.zarr",
                                           seg_settings, getattr(_segmentation(), "DEFAULT_MAX_THRESHOLD", 1.0),
                                           progress=progress, cancel=cancel)
                return agg, _large.lazy_labels(agg, seg_settings["threshold"])
            agg = self._agglomerate(p.affinities, p.foreground, seg_settings, progress=progress, cancel=cancel,
                                    model_grid=p.model_grid)
            labels = agg.labels(seg_settings["threshold"])
            return agg, labels

        def done(result):
            agg, labels = result
            if self.prediction is not p:
                notify_warning("The prediction changed while segmenting; press Segment again")
                return
            self._install_segmentation(agg, labels, f"{p.image_name} segmentation", provenance, p.scale, p.translate, p.squeeze)
            self.segment_label.setText(
                f"Segmented '{p.image_name}'. Move the merge slider: the labels update live." + score_note(seg_settings)
            )

        self.runner.start("Segment", work, done)

    def _install_segmentation(self, agg, labels, name, provenance, scale, translate, squeeze) -> None:
        data = labels[0] if squeeze else labels
        prov = json_safe(provenance)
        prov["cli"] = cli_command(prov)
        layer = self._upsert_layer(name, data, "labels", prov, scale, translate, opacity=0.5)
        try:
            layer.events.paint.connect(self._labels_painted)
        except Exception:  # pragma: no cover - older napari
            pass
        self.segmentation = Segmentation(agg, layer, prov, squeeze)
        self.proofread_step.attach()
        self.slider.setEnabled(True)
        self.labels_combo.set_value(layer)
        self.viewer.layers.selection.active = layer

    def _labels_painted(self, event=None) -> None:
        """The user painted one of our labels layers: from now on nothing overwrites it."""
        layer = getattr(event, "source", None)
        seg = self.segmentation
        if layer is None and seg is not None:
            layer = seg.layer
        if layer is None or layer.metadata.get("segneuron_edited"):
            return
        layer.metadata["segneuron_edited"] = True
        if seg is not None and seg.layer is layer:
            seg.edited = True
        notify_info(
            f"You edited '{layer.name}': it is kept as is; the merge slider and new runs write to a new layer"
        )

    def _slider_moved(self, value: int) -> None:
        self.slider_label.setText(f"{value / SLIDER_STEPS:.2f}")
        if self.segmentation is None:
            return
        self._pending_threshold = value / SLIDER_STEPS
        self._slider_timer.start()  # coalesce fast slider drags into one update per event-loop pass

    def _apply_threshold(self) -> None:
        """Relabel at the slider's threshold; measured latency goes to ``slider_latency_ms``."""
        seg = self.segmentation
        t = self._pending_threshold
        if seg is None or t is None:
            return
        self._pending_threshold = None
        t0 = time.perf_counter()
        # merging small segments costs 0.1-1 s on large volumes: skip it while the slider is dragged,
        # do it when it is released
        dragging = self.slider.isSliderDown() and seg.agglomeration.min_size > 1
        try:
            if _large.is_lazy(seg.agglomeration.fragments):  # blockwise: a new lazy array, chunks on screen only
                labels = _large.lazy_labels(seg.agglomeration, t, min_size=0 if dragging else None)
            elif seg.proofreader is not None and seg.proofreader.edits:  # edits stay applied at every threshold
                seg.proofreader.set_threshold(t)
                labels = seg.proofreader.labels()
            else:
                if seg.proofreader is not None:
                    seg.proofreader.set_threshold(t)
                labels = seg.agglomeration.labels(t, min_size=0 if dragging else None)
        except Exception as exc:  # noqa: BLE001
            self.runner.show_error(error_message(exc, "Updating the segmentation"))
            return
        data = labels[0] if seg.squeeze else labels
        prov = dict(seg.provenance)
        prov["segment"] = {**prov.get("segment", {}), "threshold": t}
        prov["cli"] = cli_command(prov)
        layer = seg.layer
        if seg.edited or layer not in self.viewer.layers:
            layer = self._upsert_layer(f"{layer.name} t={t:.2f}", data, "labels", prov, layer.scale, layer.translate, opacity=0.5)
            layer.events.paint.connect(self._labels_painted)
            seg.layer = layer
            seg.edited = False
        else:
            layer.data = data
            layer.metadata["segneuron"] = prov
        seg.provenance = prov
        ms = (time.perf_counter() - t0) * 1000
        self.slider_latency_ms.append(ms)
        note = " (small segments merged when you release the slider)" if dragging else ""
        self.status_label.setText(f"Merge threshold {t:.2f}: labels updated in {ms:.0f} ms{note}")
