"""Write a label volume as a Neuroglancer precomputed segmentation (cloud-volume), meshes by zmesh."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
from cloudvolume import CloudVolume, Mesh
import zmesh

from ..atomic import atomic_output
from ..io import InputError


def _mesh_segments(cv: CloudVolume, labels_xyz: np.ndarray, voxel_xyz: Sequence[float]) -> int:
    """Mesh every segment with zmesh (marching cubes, simplified) and upload as legacy precomputed meshes."""
    mesher = zmesh.Mesher(tuple(float(v) for v in voxel_xyz))
    mesher.mesh(labels_xyz)
    count = 0
    for seg in mesher.ids():
        m = mesher.get(seg, normals=False, reduction_factor=10, max_error=float(max(voxel_xyz)))
        mesher.erase(seg)
        if len(m.vertices) == 0:
            continue
        cv.mesh.put(Mesh(m.vertices, m.faces, None, segid=int(seg)), compress=False)
        count += 1
    return count


def write_precomputed(
    path: Union[str, Path],
    labels: np.ndarray,
    voxel_nm: Sequence[float] = (1.0, 1.0, 1.0),
    meshes: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``labels`` (z, y, x) to a local precomputed folder; precomputed axes are x, y, z."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite to replace it")
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype.kind not in "iu":
        raise InputError(f"labels must be a 3D integer volume, got {labels.shape} {labels.dtype}")
    dtype = np.uint64 if labels.dtype.itemsize > 4 or labels.dtype.kind == "i" else np.uint32
    if labels.dtype.kind == "i" and labels.min() < 0:
        raise InputError("labels must be non-negative")
    xyz = np.ascontiguousarray(np.transpose(labels.astype(dtype, copy=False), (2, 1, 0)))
    voxel_xyz = [float(v) for v in voxel_nm[::-1]]
    with atomic_output(path) as tmp:
        info = CloudVolume.create_new_info(
            num_channels=1, layer_type="segmentation", data_type=np.dtype(dtype).name, encoding="raw",
            resolution=voxel_xyz, voxel_offset=[0, 0, 0], chunk_size=[min(64, s) for s in xyz.shape],
            volume_size=list(xyz.shape), mesh="mesh" if meshes else None,
        )
        cv = CloudVolume("file://" + str(tmp), info=info, progress=False, compress=False)
        cv.commit_info()
        cv[:, :, :] = xyz
        if meshes:
            _mesh_segments(cv, xyz, voxel_xyz)
    return path
