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
    QLineEdit,
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
        self.max_gap = double_spin(15.0, 0.0, 500.0, 1.0, 1,
                                   "join pieces across dim gaps up to this length along the cheapest path (0 = off)")
        self.voxel_size = QLineEdit()
        self.voxel_size.setPlaceholderText("z,y,x µm (blank: the image layer's scale)")
        self.voxel_size.setToolTip("voxel size in µm: the SWC is written in µm when it is known, else in voxels")
        self.root_button = QPushButton("Pick roots…")
        self.root_button.setToolTip("add a '<image> roots' points layer: click each neuron's soma; "
                                    "without roots each tree is rooted at its thickest point")
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
        form.addRow("Max. gap (voxels)", self.max_gap)
        form.addRow("Voxel size (µm)", self.voxel_size)
        form.addRow("Roots", self.root_button)
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
        self.root_button.clicked.connect(lambda: self.add_root_layer())

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

    def loaded_model(self, key: Optional[str] = None):
        """The model already loaded for ``key`` (default: the Model box's choice), or None."""
        key = self.weights_combo.currentText() if key is None else key
        return self._model if self._model is not None and self._model_key == key else None

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

    def _voxel(self, layer) -> tuple[float, float, float]:
        """The voxel size (µm) from the field, else the layer's scale (1,1,1 = unknown: voxels)."""
        from ..io import InputError

        text = self.voxel_size.text().strip()
        if not text:
            return spatial_geometry(layer)[0]  # type: ignore[return-value]
        try:
            parts = [float(v) for v in text.replace(" ", ",").split(",") if v]
        except ValueError:
            raise InputError(f"Voxel size must be z,y,x numbers in µm, got {text!r}") from None
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3 or min(parts) <= 0:
            raise InputError(f"Voxel size must be three positive numbers z,y,x in µm, got {text!r}")
        return tuple(parts)  # type: ignore[return-value]

    def _roots_name(self, layer) -> str:
        return f"{layer.name} roots"

    def add_root_layer(self):
        """Add (or select) the '<image> roots' points layer in add mode: each click is a root."""
        layer = self.image_combo.value()
        if layer is None:
            return None
        name = self._roots_name(layer)
        if name not in self.viewer.layers:
            scale, translate = spatial_geometry(layer)
            self.viewer.add_points(np.zeros((0, 3)), name=name, ndim=3, scale=scale, translate=translate,
                                   size=6, face_color="cyan", symbol="star")
        roots = self.viewer.layers[name]
        self.viewer.layers.selection.active = roots
        roots.mode = "add"
        return roots

    def _roots(self, layer) -> Optional[np.ndarray]:
        name = self._roots_name(layer)
        if name not in self.viewer.layers or not len(self.viewer.layers[name].data):
            return None
        pts = self.viewer.layers[name]
        world = np.asarray([pts.data_to_world(p) for p in pts.data])
        return np.asarray([layer.world_to_data(w) for w in world])[:, -3:]

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
        layer, volume = outcome.value
        name = self._foreground_name(layer)
        if name not in self.viewer.layers:
            return self.predict(on_done=lambda _p: self.trace())
        prob = np.asarray(self.viewer.layers[name].data, dtype=np.float32)
        scale, translate = spatial_geometry(layer)
        outcome = self.runner.run_sync("trace", lambda: (self._voxel(layer), self._roots(layer)))
        if outcome.status != "ok":
            return None
        voxel, roots = outcome.value
        threshold, min_size, spur = self.threshold.value(), self.min_size.value(), self.spur_length.value()
        max_gap = self.max_gap.value()

        def work(progress, cancel):
            from ..tracing import trace

            return trace(prob, threshold=threshold, voxel_size=voxel, min_size=min_size, spur_length=spur,
                         cancel=cancel, max_gap=max_gap, image=volume, root=roots)[0]

        def done(nodes):
            from ..swc_metrics import n_trees, total_length
            from .reader import swc_layer_data

            paths, kwargs, _ = swc_layer_data(nodes, voxel, name=f"{layer.name} SWC")
            kwargs["scale"], kwargs["translate"] = scale, translate
            kwargs["metadata"]["swc_nodes"] = nodes
            kwargs["metadata"]["voxel_size"] = voxel
            swc_name = kwargs["name"]
            points_name = f"{swc_name} nodes"
            for old in (swc_name, points_name):
                if old in self.viewer.layers:
                    self.viewer.layers.remove(old)
            if paths:
                self.viewer.add_shapes(paths, **kwargs)
                # the paths of a Shapes layer show only in the slice they start in: nodes show the trace in 2D
                zyx = nodes[:, [4, 3, 2]] / np.asarray(voxel, dtype=np.float64)
                self.viewer.add_points(zyx, name=points_name, scale=scale, translate=translate, size=2.0,
                                       face_color="yellow", border_width=0)
            unit = "µm" if tuple(voxel) != (1.0, 1.0, 1.0) else "voxels"
            message = (f"Traced {len(nodes)} nodes in {n_trees(nodes)} trees, total length "
                       f"{total_length(nodes):.1f} {unit}")
            self.status_label.setText(message)
            notify_info(message)

        return self.runner.start("trace", work, done)
