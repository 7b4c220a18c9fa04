"""An SWC file opens from a script through the plugin's reader (docs/lm-tracing.md)."""
from __future__ import annotations

import numpy as np


def test_viewer_open_swc_with_plugin(make_napari_viewer, tmp_path):
    path = tmp_path / "x.swc"
    path.write_text("1 0 0 0 0 1 -1\n2 0 5 0 0 1 1\n3 0 5 5 2 1 2\n")
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-segneuron")
    [layer] = list(viewer.layers)
    assert type(layer).__name__ == "Shapes" and len(layer.data) >= 1
    ends = np.concatenate([np.asarray(p) for p in layer.data])
    assert ends.max() >= 5.0  # the nodes' coordinates, not an empty layer
