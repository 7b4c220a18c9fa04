"""Large volumes in napari: lazy zarr reading and the dock's blockwise Predict / Segment."""
from __future__ import annotations

import numpy as np
import pytest

WAIT_MS = 180_000


def _write_zarr(path, data, chunks):
    import zarr

    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks, overwrite=True)
    arr[...] = data
    return arr


def test_reader_opens_zarr_lazily(make_napari_viewer, tmp_path, sample_raw):
    import dask.array as da
    import zarr

    viewer = make_napari_viewer()
    crop = np.asarray(sample_raw[:16, :64, :96])
    _write_zarr(tmp_path / "em.zarr", crop, (8, 32, 32))
    layers = viewer.open(str(tmp_path / "em.zarr"), plugin="napari-segneuron")
    assert isinstance(layers[0].data, da.Array) and layers[0].data.shape == crop.shape
    np.testing.assert_array_equal(np.asarray(layers[0].data[3]), crop[3])

    # a prediction group: both arrays lazy
    root = zarr.open_group(str(tmp_path / "pred.zarr"), mode="w")
    root.create_array("affinities", shape=(3,) + crop.shape, dtype="float32", chunks=(3, 8, 32, 32))
    root.create_array("foreground", shape=crop.shape, dtype="float32", chunks=(8, 32, 32))
    layers = viewer.open(str(tmp_path / "pred.zarr"), plugin="napari-segneuron")
    assert all(isinstance(layer.data, da.Array) for layer in layers)
    assert layers[0].data.shape == crop.shape

    # OME-Zarr multiscale: one multiscale layer, a dask array per level
    ome = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    ome.create_array("0", shape=crop.shape, dtype=crop.dtype, chunks=(8, 32, 32))[...] = crop
    ome.create_array("1", shape=(16, 32, 48), dtype=crop.dtype, chunks=(8, 32, 32))[...] = crop[:, ::2, ::2]
    ome.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in "zyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 1.0, 1.0]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 2.0, 2.0]}]}]}]
    layers = viewer.open(str(tmp_path / "ome.zarr"), plugin="napari-segneuron")
    assert layers[0].multiscale and len(layers[0].data) == 2
    assert all(isinstance(level, da.Array) for level in layers[0].data)
    assert layers[0].data[0].shape == crop.shape and tuple(layers[0].scale) == (2.0, 1.0, 1.0)
