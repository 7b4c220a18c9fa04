"""Dock: light-microscopy neuron foreground and SWC tracing (thin glue over ``tracing``)."""
from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._common import LayerCombo, double_spin, int_spin, spatial_geometry
from ._runner import TaskRunner, notify_info

CHECKPOINT_ITEM = "checkpoint file…"


class TraceWidget(QWidget):
    """Predict the neuron foreground of an LM image and trace it into a Shapes (paths) layer."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        import napari

        self.viewer = napari_viewer
        self._model = None
        self._model_key: Optional[str] = None
        self.image_combo = LayerCombo(napari_viewer, [napari.layers.Image])
        self.weights_combo = QComboBox()
        try:
            from .._model import list_weights

            names = list_weights("lm")
        except Exception:  # pragma: no cover
            names = ["lm_default"]
        self.weights_combo.addItems(names + [CHECKPOINT_ITEM])
        self.weights_combo.activated.connect(self._maybe_browse)
        self.threshold = double_spin(0.5, 0.01, 0.99, 0.05, 2, "foreground probability above which a voxel is neuron")
        self.min_size = int_spin(50, 0, 100000, 10, "drop foreground pieces smaller than this")
        self.spur_length = double_spin(4.0, 0.0, 100.0, 1.0, 1, "prune terminal branches shorter than this")
        self.predict_button = QPushButton("Predict foreground")
        self.trace_button = QPushButton("Trace")
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.runner = TaskRunner(self.progress_bar, self.status_label, self.cancel_button, self)

        form = QFormLayout()
        form.addRow("LM image", self.image_combo)
        form.addRow("Model", self.weights_combo)
        form.addRow("Threshold", self.threshold)
        form.addRow("Min. size (voxels)", self.min_size)
        form.addRow("Spur length (voxels)", self.spur_length)
        buttons = QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.trace_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        row = QHBoxLayout()
        row.addWidget(self.status_label, 1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addStretch(1)
        self.predict_button.clicked.connect(lambda: self.predict())
        self.trace_button.clicked.connect(lambda: self.trace())

    # -- helpers -----------------------------------------------------------------------------
    def _maybe_browse(self, _index: int) -> None:
        if self.weights_combo.currentText() != CHECKPOINT_ITEM:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Choose an LM (ViT3D) checkpoint", "", "Checkpoints (*.pt *.pth)")
        if path:
            self.weights_combo.insertItem(0, path)
            self.weights_combo.setCurrentIndex(0)

    def _load_model(self):
        from .._model.vit3d import load_lm_model

        key = self.weights_combo.currentText()
        if self._model is None or self._model_key != key:
            self._model = load_lm_model(key)
            self._model_key = key
        return self._model

    def set_model(self, model, path) -> None:
        """Use ``model`` (loaded from ``path``, e.g. just finetuned) for the next Predict / Trace;
        the Model box shows the file."""
        key = str(path)
        if self.weights_combo.findText(key) < 0:
            self.weights_combo.insertItem(0, key)
        self.weights_combo.setCurrentText(key)
        self._model, self._model_key = model, key

    def _image(self):
        from ..io import InputError, as_volume

        layer = self.image_combo.value()
        if layer is None:
            raise InputError("Choose an LM image layer first")
        return layer, np.asarray(as_volume(layer.data, name=layer.name))

    def _foreground_name(self, layer) -> str:
        return f"{layer.name} foreground"

    # -- actions -----------------------------------------------------------------------------
    def predict(self, on_done=None):
        """Add (or replace) a '<image> foreground' probability layer."""
        outcome = self.runner.run_sync("predict", self._image)
        if outcome.status != "ok":
            return None
        layer, volume = outcome.value
        scale, translate = spatial_geometry(layer)

        def work(progress, cancel):
            from ..tracing import predict_foreground

            return predict_foreground(self._load_model(), volume, progress=progress, cancel=cancel)

        def done(prob):
            name = self._foreground_name(layer)
            if name in self.viewer.layers:
                self.viewer.layers[name].data = prob
            else:
                self.viewer.add_image(prob, name=name, scale=scale, translate=translate, colormap="magma",
                                      blending="additive", contrast_limits=(0.0, 1.0))
            if on_done:
                on_done(prob)

        return self.runner.start("predict", work, done)

    def trace(self):
        """Trace the foreground layer (predicting it first if missing) into a Shapes paths layer."""
        outcome = self.runner.run_sync("trace", self._image)
        if outcome.status != "ok":
            return None
        layer, _ = outcome.value
        name = self._foreground_name(layer)
        if name not in self.viewer.layers:
            return self.predict(on_done=lambda _p: self.trace())
        prob = np.asarray(self.viewer.layers[name].data, dtype=np.float32)
        scale, translate = spatial_geometry(layer)
        threshold, min_size, spur = self.threshold.value(), self.min_size.value(), self.spur_length.value()

        def work(progress, cancel):
            from ..tracing import trace

            return trace(prob, threshold=threshold, voxel_size=scale, min_size=min_size, spur_length=spur,
                         cancel=cancel)[0]

        def done(nodes):
            from .reader import swc_layer_data

            paths, kwargs, _ = swc_layer_data(nodes, scale, name=f"{layer.name} SWC")
            kwargs["translate"] = translate
            kwargs["metadata"]["swc_nodes"] = nodes
            swc_name = kwargs["name"]
            if swc_name in self.viewer.layers:
                self.viewer.layers.remove(swc_name)
            if paths:
                self.viewer.add_shapes(paths, **kwargs)
            n_trees = int((nodes[:, 6] < 0).sum()) if len(nodes) else 0
            notify_info(f"Traced {len(nodes)} nodes in {n_trees} trees")

        return self.runner.start("trace", work, done)
