"""napari-segneuron: SegNeuron 3D EM neuron segmentation for napari."""
try:
    from importlib.metadata import version as _version

    __version__ = _version("napari-segneuron")
except Exception:  # pragma: no cover - not installed
    __version__ = "0.0.0+unknown"
