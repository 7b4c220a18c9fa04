"""The FIB-25 sample opens with its measured voxel size, and the SegNeuron dock shows it."""
from __future__ import annotations

import numpy as np

from napari_segneuron.samples import EM_VOXEL_SIZE_NM, load_raw


def test_fib25_sample_voxel_size_in_dock(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-segneuron", "fib25_both")
    raw = viewer.layers["fib25 EM"]
    labels = viewer.layers["fib25 ground truth"]
    assert np.allclose(raw.scale, EM_VOXEL_SIZE_NM)
    assert np.allclose(labels.scale, raw.scale)
    assert raw.data.shape == load_raw().shape
    _, widget = viewer.window.add_plugin_dock_widget("napari-segneuron", "SegNeuron")
    assert widget.image_combo.value() is raw
    shown = widget.voxel_field.value()
    assert shown is not None and np.allclose(shown, EM_VOXEL_SIZE_NM)
    assert "?" not in [b.text() for b in widget.voxel_field.boxes]
