"""Reading, validating and writing volumes (tif, zarr), with provenance metadata.

Axis order is always (z, y, x); affinities are (3, z, y, x) with channels for the
offsets (-1,0,0), (0,-1,0), (0,0,-1).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from .atomic import atomic_output

PathLike = Union[str, os.PathLike]
ZARR_SUFFIXES = (".zarr", ".zarr/")
TIF_SUFFIXES = (".tif", ".tiff")


class InputError(ValueError):
    """Bad user input; the message is meant to be shown to the user as is."""


def _is_zarr_path(path: PathLike) -> bool:
    return str(path).rstrip("/").lower().endswith(".zarr")


def _is_tif_path(path: PathLike) -> bool:
    return str(path).lower().endswith(TIF_SUFFIXES)


def as_volume(data: Any, name: str = "image", rgb: Optional[bool] = None) -> Any:
    """Validate an image and return it as a (z, y, x) array (numpy, dask or zarr kept lazy).

    A 2D image becomes a single slice; singleton axes of 4D/5D arrays are dropped.
    RGB(A) and genuine multi-channel or time-series stacks are refused with a message
    saying what to do.
    """
    shape = tuple(int(s) for s in getattr(data, "shape", ()))
    if not shape or not hasattr(data, "dtype"):
        raise InputError(f"The {name} is not an array")
    if 0 in shape:
        raise InputError(f"The {name} is empty (shape {shape})")
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise InputError(f"The {name} has data type {dtype}; a numeric greyscale volume is needed")
    looks_rgb = rgb if rgb is not None else (len(shape) in (3, 4) and shape[-1] in (3, 4) and min(shape[:-1]) > 16)
    if looks_rgb:
        raise InputError(
            f"The {name} looks like an RGB/RGBA image (shape {shape}); SegNeuron needs a greyscale "
            "EM stack. Convert it to greyscale first."
        )
    if len(shape) > 3:
        squeezable = [i for i, s in enumerate(shape) if s == 1]
        while len(shape) > 3 and squeezable:
            axis = squeezable.pop()
            data = data[tuple(0 if i == axis else slice(None) for i in range(len(shape)))]
            shape = tuple(int(s) for s in data.shape)
        if len(shape) > 3:
            raise InputError(
                f"The {name} has {len(shape)} dimensions {shape}; SegNeuron needs one 3D (z, y, x) "
                "stack. Pick a single channel or time point first."
            )
    if len(shape) == 2:
        data = data[None]
    elif len(shape) == 1:
        raise InputError(f"The {name} is one-dimensional (shape {shape}); a 3D stack is needed")
    return data


def check_finite(volume: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``volume`` with NaN/inf replaced by its finite minimum (with a warning).

    Lazy arrays (zarr, dask) are scanned slab by slab and returned as they are (predict
    reads non-finite voxels as the darkest value too); all-NaN raises InputError.
    """
    if np.dtype(volume.dtype).kind != "f":
        return volume
    in_memory = isinstance(volume, np.ndarray)
    if in_memory:
        finite = np.isfinite(volume)
        n_bad = int(finite.size - np.count_nonzero(finite))
    else:
        step = max(1, int(2**24 // max(1, int(np.prod(volume.shape[1:])))))
        n_bad = sum(int(b.size - np.count_nonzero(np.isfinite(b)))
                    for b in (np.asarray(volume[z:z + step]) for z in range(0, int(volume.shape[0]), step)))
    if n_bad == 0:
        return volume
    total = int(np.prod(volume.shape))
    if n_bad == total:
        raise InputError(f"The {name} contains no finite values (all NaN or inf)")
    warnings.warn(f"The {name} has {n_bad:,} NaN/inf voxels ({100 * n_bad / total:.2g} %); they are treated "
                  "as the darkest value (membrane/background). Fill or crop them if that is wrong.", stacklevel=2)
    if not in_memory:
        return volume
    return np.where(finite, volume, volume[finite].min())


def _tif_voxel_size(tif) -> Optional[tuple[float, float, float]]:
    """Voxel size in nm from ImageJ metadata / resolution tags, or None when absent."""
    unit_to_nm = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "micron": 1e3, "\\u00B5m": 1e3, "mm": 1e6}
    try:
        page = tif.pages[0]
        ij = tif.imagej_metadata or {}
        xres = page.tags.get("XResolution")
        yres = page.tags.get("YResolution")
        if xres is None or yres is None:
            return None
        xr = xres.value[0] / xres.value[1]
        yr = yres.value[0] / yres.value[1]
        if xr <= 0 or yr <= 0 or (xr == 1 and yr == 1 and "spacing" not in ij):
            return None
        unit = str(ij.get("unit", "")).strip().lower()
        factor = unit_to_nm.get(unit)
        if factor is None:
            return None
        z = float(ij.get("spacing", 1.0 / xr))
        return (z * factor, factor / yr, factor / xr)
    except Exception:
        return None


def _open_zarr_array(path: Path, preferred: tuple[str, ...] = ("raw", "image", "data", "labels", "0")):
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node
    for key in preferred:
        if key in node and isinstance(node[key], zarr.Array):
            return node[key]
    arrays = [k for k, v in node.arrays()]
    if len(arrays) == 1:
        return node[arrays[0]]
    raise InputError(f"{path} is a zarr group with arrays {arrays}; name one, e.g. {path}/{arrays[0] if arrays else 'raw'}")


def read_volume(path: PathLike) -> tuple[Any, Optional[tuple[float, float, float]]]:
    """Read a tif (into memory) or a zarr array (lazily). Returns ``(array, voxel_size_nm or None)``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"File not found: {path}")
    if _is_zarr_path(path) or (path.is_dir() and (path / "zarr.json").exists() or (path / ".zarray").exists()):
        arr = _open_zarr_array(path)
        voxel = arr.attrs.get("voxel_size_nm")
        return arr, tuple(voxel) if voxel else None
    if _is_tif_path(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                data = tif.asarray()
                voxel = _tif_voxel_size(tif)
        except Exception as err:
            raise InputError(f"Could not read {path.name} as a TIFF: {err}") from None
        return data, voxel
    raise InputError(f"Unsupported file type {path.suffix!r}: use .tif/.tiff or .zarr")


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; choose another name or allow overwriting")


def _json_safe(metadata: Optional[Mapping]) -> dict:
    return json.loads(json.dumps(dict(metadata or {}), default=str))


def write_labels(path: PathLike, labels: Any, metadata: Optional[Mapping] = None, overwrite: bool = False) -> Path:
    """Write a label volume to .tif or .zarr atomically; metadata goes into the file."""
    path = Path(path)
    _refuse_overwrite(path, overwrite)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise InputError(f"Labels must be integers, got {labels.dtype}")
    meta = _json_safe(metadata)
    if _is_tif_path(path):
        import tifffile

        with atomic_output(path) as tmp:
            tifffile.imwrite(tmp, labels, compression="zlib", metadata={"napari_segneuron": meta})
    elif _is_zarr_path(path):
        _write_zarr_arrays(path, {"labels": labels}, meta, single="labels")
    else:
        raise InputError(f"Unsupported output type {path.suffix!r}: use .tif or .zarr")
    return path


def _write_zarr_arrays(path: Path, arrays: Mapping[str, np.ndarray], meta: dict, single: Optional[str] = None) -> None:
    import zarr

    with atomic_output(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        root.attrs["napari_segneuron"] = meta
        for key, arr in arrays.items():
            chunks = tuple(min(s, c) for s, c in zip(arr.shape, (1,) * (arr.ndim - 3) + (32, 256, 256)))
            z = root.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=chunks)
            z[...] = arr
            z.attrs["napari_segneuron"] = meta
            if meta.get("voxel_size_nm"):
                z.attrs["voxel_size_nm"] = meta["voxel_size_nm"]


def write_prediction(
    path: PathLike,
    affinities: np.ndarray,
    foreground: np.ndarray,
    metadata: Optional[Mapping] = None,
    overwrite: bool = False,
) -> Path:
    """Write predictions: zarr group with ``affinities`` (3,Z,Y,X) and ``foreground`` (Z,Y,X),
    or one tif holding 4 channels (affinity z, y, x, then foreground)."""
    path = Path(path)
    _refuse_overwrite(path, overwrite)
    meta = _json_safe(metadata)
    if _is_zarr_path(path):
        _write_zarr_arrays(path, {"affinities": np.asarray(affinities), "foreground": np.asarray(foreground)}, meta)
    elif _is_tif_path(path):
        import tifffile

        stacked = np.concatenate([np.asarray(affinities), np.asarray(foreground)[None]], axis=0)
        meta = {**meta, "channels": ["affinity_z", "affinity_y", "affinity_x", "foreground"]}
        with atomic_output(path) as tmp:
            tifffile.imwrite(tmp, stacked, compression="zlib", metadata={"napari_segneuron": meta})
    else:
        raise InputError(f"Unsupported output type {path.suffix!r}: use .tif or .zarr")
    return path


def read_prediction(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read what ``write_prediction`` wrote: ``(affinities (3,Z,Y,X), foreground (Z,Y,X))``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"File not found: {path}")
    if _is_zarr_path(path):
        import zarr

        root = zarr.open_group(str(path), mode="r")
        if "affinities" not in root or "foreground" not in root:
            raise InputError(f"{path} has no 'affinities' and 'foreground' arrays; is it a prediction?")
        return np.asarray(root["affinities"][...]), np.asarray(root["foreground"][...])
    import tifffile

    data = tifffile.imread(path)
    if data.ndim != 4 or data.shape[0] != 4:
        raise InputError(f"{path.name} is not a prediction tif (expected 4 channels × z × y × x, got {data.shape})")
    return data[:3], data[3]


def read_metadata(path: PathLike) -> dict:
    """Provenance stored by our writers (empty dict if none)."""
    path = Path(path)
    if _is_zarr_path(path):
        import zarr

        node = zarr.open(str(path), mode="r")
        return dict(node.attrs.get("napari_segneuron", {}))
    import tifffile

    with tifffile.TiffFile(path) as tif:
        desc = tif.pages[0].description
    try:
        return dict(json.loads(desc).get("napari_segneuron", {}))
    except (ValueError, AttributeError):
        return {}


# -- SWC morphologies ------------------------------------------------------------------
SWC_COLUMNS = ("id", "type", "x", "y", "z", "radius", "parent")


def read_swc(path: PathLike) -> np.ndarray:
    """Read an SWC file into an (N, 7) float64 array: id, type, x, y, z, radius, parent.

    Lines starting with ``#`` (headers, comments) and blank lines are skipped; extra
    columns are ignored. Root nodes have parent -1.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"SWC file not found: {path}")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.replace(",", " ").split()
            if len(parts) < 7:
                raise InputError(f"{path.name} line {lineno}: an SWC row needs 7 columns, got {len(parts)}")
            try:
                rows.append([float(p) for p in parts[:7]])
            except ValueError:
                raise InputError(f"{path.name} line {lineno}: non-numeric SWC value in {text!r}") from None
    nodes = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    ids = set(nodes[:, 0].astype(np.int64).tolist())
    if len(ids) != len(nodes):
        raise InputError(f"{path.name}: duplicate node ids")
    bad = [int(p) for p in nodes[:, 6] if p >= 0 and int(p) not in ids]
    if bad:
        raise InputError(f"{path.name}: parent {bad[0]} is not a node id")
    return nodes


def write_swc(path: PathLike, nodes: Any, header: Optional[str] = None) -> Path:
    """Write an (N, 7) array (id, type, x, y, z, radius, parent) as an SWC file, atomically."""
    nodes = np.asarray(nodes, dtype=np.float64)
    if nodes.ndim != 2 or nodes.shape[1] != 7:
        raise InputError(f"SWC nodes must be an (N, 7) array, got shape {nodes.shape}")
    path = Path(path)
    lines = []
    for text in (header or "").splitlines():
        lines.append(f"# {text}")
    lines.append("# " + " ".join(SWC_COLUMNS))
    for row in nodes:
        lines.append(
            f"{int(row[0])} {int(row[1])} {row[2]:.6g} {row[3]:.6g} {row[4]:.6g} {row[5]:.6g} {int(row[6])}"
        )
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def intensity_scale(volume: Any) -> tuple[float, float]:
    """``(offset, scale)`` so that ``(x - offset) / scale`` lies in [0, 1]."""
    dtype = np.dtype(volume.dtype)
    if dtype.kind == "b":
        return 0.0, 1.0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if dtype.kind == "i":
            return 0.0, float(info.max)  # negative values are clipped to 0
        return 0.0, float(info.max)
    lo, hi = _finite_range(volume)
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    return lo, max(hi - lo, 1e-12)


def _finite_range(volume: Any) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    step = max(1, int(2**24 // max(1, int(np.prod(volume.shape[1:])))))
    for z in range(0, volume.shape[0], step):
        block = np.asarray(volume[z : z + step], dtype=np.float32)
        finite = block[np.isfinite(block)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not math.isfinite(lo):
        raise InputError("The image contains no finite values (all NaN or inf)")
    return lo, hi
