"""Named weights: where each comes from and where it is cached.

``fetch_weights(name_or_path)`` returns a local file. Registry entries are either
bundled with the package (``default``) or downloaded once into the cache folder
(``segneuron``, the released checkpoint on the Hugging Face hub). Downloads resume
from a ``.part`` file, are verified against a known sha256 when the registry has
one, and otherwise pin the hash seen at first download in a ``.sha256`` sidecar,
so a corrupted cache is detected later.

Environment variables: ``NAPARI_SEGNEURON_CACHE`` (cache folder, default
``~/.cache/napari-segneuron``), ``HF_ENDPOINT`` (hub address, as in huggingface_hub).
"""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from ..cancel import CancelToken, check
from .weights import WeightsError, sha256_of

PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    description: str
    filename: str
    bundled: bool = False
    repo: Optional[str] = None
    sha256: Optional[str] = None
    voxel_size_nm: Optional[tuple[float, float, float]] = None

    def url(self) -> Optional[str]:
        if self.repo is None:
            return None
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{self.repo}/resolve/main/{self.filename}"


REGISTRY: dict[str, WeightsEntry] = {
    "default": WeightsEntry(
        name="default",
        description="compact MNet trained on FIB-25 crops, shipped with the plugin (see weights/MODEL_CARD.md)",
        filename="default.pt",
        bundled=True,
        voxel_size_nm=(10.0, 10.0, 10.0),
    ),
    "segneuron": WeightsEntry(
        name="segneuron",
        description="released SegNeuron generalist model (MNet kn=(32,64,96,128,256)), Hugging Face yanchaoz/SegNeuron",
        filename="SegNeuronModel.ckpt",
        repo="yanchaoz/SegNeuron",
        # the authors trained at 6-9 nm in xy; override with --model-voxel-size
        voxel_size_nm=(8.0, 8.0, 8.0),
    ),
}


def list_weights() -> list[str]:
    return list(REGISTRY)


def cache_dir() -> Path:
    root = os.environ.get("NAPARI_SEGNEURON_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "napari-segneuron"


def cached_path(entry: WeightsEntry) -> Path:
    return cache_dir() / entry.name / entry.filename


def _verify(path: Path, expected: Optional[str]) -> None:
    sidecar = path.with_name(path.name + ".sha256")
    digest = sha256_of(path)
    pinned = expected or (sidecar.read_text().strip() if sidecar.exists() else None)
    if pinned and digest != pinned:
        raise WeightsError(
            f"Checksum mismatch for {path}: expected sha256 {pinned[:12]}…, got {digest[:12]}…. "
            "The file is corrupted or was replaced; delete it and download again."
        )
    if not sidecar.exists():
        sidecar.write_text(digest + "\n")


def download(
    url: str,
    dest: Union[str, os.PathLike],
    sha256: Optional[str] = None,
    progress: Optional[Callable[..., None]] = None,
    cancel: Optional[CancelToken] = None,
    timeout: float = 30.0,
    chunk: int = 1 << 16,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial download.

    Bytes go to ``dest.part``; the final file appears only when complete and
    verified. A cancelled download keeps the ``.part`` file for a later resume.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "napari-segneuron"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part file is already complete
            response = None
        else:
            raise _offline_error(url, dest, f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise _offline_error(url, dest, str(getattr(err, "reason", err))) from None
    if response is not None:
        with response:
            resumed = response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else 0
            done = have
            started = time.monotonic()
            with open(part, "ab" if resumed else "wb") as f:
                while True:
                    check(cancel)
                    try:
                        block = response.read(chunk)
                    except OSError as err:
                        raise _offline_error(url, dest, f"connection lost after {done} bytes: {err}") from None
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    if progress is not None:
                        rate = (done - have) / max(time.monotonic() - started, 1e-6)
                        progress(done, total, f"{done / 1e6:.1f} MB at {rate / 1e6:.1f} MB/s")
            if total and done < total:
                raise _offline_error(url, dest, f"download ended early ({done} of {total} bytes)")
    if sha256 is not None:
        digest = sha256_of(part)
        if digest != sha256:
            part.unlink()
            raise WeightsError(
                f"Downloaded file from {url} has sha256 {digest[:12]}…, expected {sha256[:12]}…; removed it."
            )
    os.replace(part, dest)
    return dest


def _offline_error(url: str, dest: Path, reason: str) -> WeightsError:
    return WeightsError(
        f"Could not download weights from {url} ({reason}). If this computer is offline, download "
        f"the file on another computer and put it at {dest}, or pass the file's path instead of the name."
    )


def fetch_weights(
    name_or_path: Union[str, os.PathLike],
    progress: Optional[Callable[..., None]] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Resolve a registry name or a file path to a local weights file (downloading if needed)."""
    key = str(name_or_path)
    entry = REGISTRY.get(key)
    if entry is None:
        path = Path(key).expanduser()
        if path.exists():
            return path
        raise WeightsError(
            f"'{key}' is neither a weights file nor a known name. Known names: {', '.join(REGISTRY)}"
        )
    if entry.bundled:
        path = PACKAGE_WEIGHTS / entry.filename
        if not path.exists():
            raise WeightsError(
                f"The bundled '{entry.name}' model is missing from this installation ({path}). "
                "Reinstall napari-segneuron, or pass a checkpoint file."
            )
        return path
    path = cached_path(entry)
    if not path.exists():
        download(entry.url(), path, sha256=entry.sha256, progress=progress, cancel=cancel)
    _verify(path, entry.sha256)
    return path


def load_named(
    name_or_path: Union[str, os.PathLike],
    device: Optional[str] = None,
    progress: Optional[Callable[..., None]] = None,
    cancel: Optional[CancelToken] = None,
):
    """``fetch_weights`` + ``load_model``; a registry entry supplies the model's voxel size
    when the checkpoint itself does not declare one (the released weights don't)."""
    from .weights import load_model

    key = str(name_or_path)
    path = fetch_weights(key, progress=progress, cancel=cancel)
    entry = REGISTRY.get(key)
    model = load_model(path, device=device, name=entry.name if entry else None)
    if entry is not None and model.info.get("voxel_size_nm") is None and entry.voxel_size_nm is not None:
        model.info["voxel_size_nm"] = tuple(entry.voxel_size_nm)
    return model
