"""Write a label volume as a Neuroglancer precomputed segmentation (tensorstore), meshes by zmesh.

Meshes use Neuroglancer's legacy format: ``mesh/<id>:0`` lists fragments; each fragment is
``uint32 n_vertices``, ``float32 vertices (x, y, z, nm)``, ``uint32 triangle indices``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import tensorstore as ts
import zmesh

from ..atomic import atomic_output
from . import checked_labels

MESH_DIR = "mesh"


def write_meshes(folder: Path, labels_xyz: np.ndarray, voxel_xyz: Sequence[float]) -> int:
    """Mesh every segment (zmesh marching cubes, simplified) into ``folder/mesh``; returns the mesh count."""
    mesh_dir = folder / MESH_DIR
    mesh_dir.mkdir()
    (mesh_dir / "info").write_text(json.dumps({"@type": "neuroglancer_legacy_mesh"}))
    mesher = zmesh.Mesher(tuple(float(v) for v in voxel_xyz))
    mesher.mesh(labels_xyz)
    count = 0
    for seg in mesher.ids():
        m = mesher.get(int(seg), normals=False, reduction_factor=10, max_error=float(max(voxel_xyz)))
        mesher.erase(int(seg))
        if len(m.vertices) == 0:
            continue
        verts = np.asarray(m.vertices, dtype="<f4")
        faces = np.asarray(m.faces, dtype="<u4")
        frag = f"{int(seg)}:0:0"
        (mesh_dir / frag).write_bytes(np.uint32(len(verts)).astype("<u4").tobytes() + verts.tobytes() + faces.tobytes())
        (mesh_dir / f"{int(seg)}:0").write_text(json.dumps({"fragments": [frag]}))
        count += 1
    return count


def read_mesh(folder: Union[str, Path], seg: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one legacy mesh back: ``(vertices (n, 3) nm x-y-z, faces (m, 3))``."""
    mesh_dir = Path(folder) / MESH_DIR
    verts, faces, offset = [], [], 0
    for frag in json.loads((mesh_dir / f"{seg}:0").read_text())["fragments"]:
        raw = (mesh_dir / frag).read_bytes()
        n = int(np.frombuffer(raw[:4], "<u4")[0])
        verts.append(np.frombuffer(raw[4:4 + 12 * n], "<f4").reshape(n, 3))
        faces.append(np.frombuffer(raw[4 + 12 * n:], "<u4").reshape(-1, 3) + offset)
        offset += n
    return np.concatenate(verts), np.concatenate(faces)


def write_precomputed(
    path: Union[str, Path],
    labels: np.ndarray,
    voxel_nm: Sequence[float] = (1.0, 1.0, 1.0),
    meshes: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``labels`` (z, y, x) to a local precomputed folder; precomputed axes are x, y, z, channel."""
    path, labels = checked_labels(path, labels, overwrite)
    dtype = np.uint64 if labels.dtype.itemsize > 4 else np.uint32
    xyz = np.ascontiguousarray(np.transpose(labels.astype(dtype, copy=False), (2, 1, 0)))
    voxel_xyz = [float(v) for v in voxel_nm[::-1]]
    with atomic_output(path) as tmp:
        tmp.mkdir()
        spec = {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(tmp) + "/"},
            "multiscale_metadata": {"type": "segmentation", "data_type": np.dtype(dtype).name, "num_channels": 1},
            "scale_metadata": {"size": list(xyz.shape), "resolution": voxel_xyz, "encoding": "raw",
                               "chunk_size": [min(64, s) for s in xyz.shape], "voxel_offset": [0, 0, 0]},
        }
        store = ts.open(spec, create=True).result()
        store[...] = xyz[..., None]
        if meshes:
            write_meshes(tmp, xyz, voxel_xyz)
            info = json.loads((tmp / "info").read_text())
            info["mesh"] = MESH_DIR
            (tmp / "info").write_text(json.dumps(info))
    return path
