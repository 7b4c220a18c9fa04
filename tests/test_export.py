"""Export round trips on a crop of real labels (fib25_b ground truth), read back with zarr / cloud-volume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_segneuron.cli import main
from napari_segneuron.export.ome_zarr import write_ome_zarr

LABELS = Path("/work/shared/data/fib25_b_labels.tif")
pytestmark = pytest.mark.skipif(not LABELS.exists(), reason="reference labels not present")


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return np.ascontiguousarray(tifffile.imread(LABELS)[:16, :64, :64])


def test_ome_zarr_roundtrip(tmp_path, crop):
    out = tmp_path / "l.ome.zarr"
    write_ome_zarr(out, crop, (40.0, 8.0, 8.0), levels=3)
    g = zarr.open_group(str(out), mode="r")
    ms = g.attrs["multiscales"][0]
    assert [a["unit"] for a in ms["axes"]] == ["nanometer"] * 3
    assert len(ms["datasets"]) == 3
    np.testing.assert_array_equal(np.asarray(g[ms["datasets"][0]["path"]]), crop)
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [40.0, 8.0, 8.0]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [40.0, 16.0, 16.0]
    level1 = np.asarray(g[ms["datasets"][1]["path"]])
    np.testing.assert_array_equal(level1, crop[:, ::2, ::2])  # striding: ids exact, none invented
    assert set(np.unique(level1)) <= set(np.unique(crop))


def test_ome_zarr_with_image_and_cli_refuses_overwrite(tmp_path, crop):
    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, crop)
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, (crop % 251).astype(np.uint8))
    out = tmp_path / "x.ome.zarr"
    args = ["export", str(src), "-o", str(out), "--format", "ome-zarr", "--image", str(image), "--voxel-size", "40,8,8"]
    assert main(args) == 0
    g = zarr.open_group(str(out), mode="r")
    assert g["labels"].attrs["labels"] == ["segmentation"]
    seg = g["labels/segmentation"]
    np.testing.assert_array_equal(np.asarray(seg["0"]), crop)
    np.testing.assert_array_equal(np.asarray(g["0"]), crop % 251)
    assert main(args) == 2  # exists, no --overwrite
    assert main(args + ["--overwrite"]) == 0


def test_ome_zarr_read_by_ome_zarr_py(tmp_path, crop):
    reader_mod = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    out = tmp_path / "l.ome.zarr"
    write_ome_zarr(out, crop, (40.0, 8.0, 8.0))
    nodes = list(reader_mod.Reader(parse_url(str(out)))())
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), crop)


def test_precomputed_roundtrip_with_meshes(tmp_path, crop):
    ts = pytest.importorskip("tensorstore")
    pytest.importorskip("zmesh")
    from napari_segneuron.export.precomputed import read_mesh

    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, crop)
    out = tmp_path / "l.precomputed"
    assert main(["export", str(src), "-o", str(out), "--format", "precomputed", "--meshes",
                 "--voxel-size", "40,8,8"]) == 0
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": "file://" + str(out)}).result()
    back = np.transpose(np.asarray(store.read().result())[..., 0], (2, 1, 0))
    np.testing.assert_array_equal(back, crop)
    info = json.loads((out / "info").read_text())
    assert info["scales"][0]["resolution"] == [8, 8, 40] and info["mesh"] == "mesh"
    ids = [int(i) for i in np.unique(crop) if i]
    extent = np.array(crop.shape[::-1]) * np.array([8, 8, 40])
    for seg in ids:
        verts, faces = read_mesh(out, seg)
        assert len(faces) and faces.max() < len(verts)
        assert verts.min() >= -1e-3 and (verts.max(axis=0) <= extent + 1e-3).all()


def test_ome_zarr_opens_in_project_reader(tmp_path, crop):
    from napari_segneuron._widgets.reader import get_reader

    out = tmp_path / "l.ome.zarr"
    write_ome_zarr(out, crop, (40.0, 8.0, 8.0), levels=2)
    (data, meta, kind), = get_reader(str(out))(str(out))
    assert kind == "labels" and len(data) == 2 and tuple(meta["scale"]) == (40.0, 8.0, 8.0)
    np.testing.assert_array_equal(np.asarray(data[0]), crop)
