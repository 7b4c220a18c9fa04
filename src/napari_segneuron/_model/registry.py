"""Named weights: where each comes from and where it is cached.

``fetch_weights(name_or_path)`` returns a local file. Registry entries are either
bundled with the package (``default``) or downloaded once from the Hugging Face Hub
into the cache folder (``segneuron``, the released checkpoint). A download is checked
against the registry's sha256 when it has one (otherwise against the sha256 the Hub
publishes for the file), and the hash seen at first download is pinned in a ``.sha256``
sidecar, so a corrupted or replaced cache file is detected later.

Environment variables: ``NAPARI_SEGNEURON_CACHE`` (cache folder, default
``~/.cache/napari-segneuron``), and huggingface_hub's own, read at each call:
``HF_ENDPOINT`` (hub address or a mirror), ``HF_HUB_OFFLINE=1`` (never use the network),
``HF_TOKEN``.

Why huggingface_hub and not pooch: the weights live on the Hub, and the Hub's own
client resolves a revision (branch, tag or commit hash, so an entry can be pinned),
resumes a transfer that breaks mid-way with HTTP Range requests, honours the mirror,
token and offline settings every other Hub tool uses, writes atomically behind a file
lock, and reports bytes through a tqdm-like class, which is where our progress and
cancel hook in. pooch would need a hand-written downloader to resume and knows nothing
of Hub revisions or offline mode. Both test equally well against a local server
(tests/test_registry.py answers like the Hub), so the better fit for the data won.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from ..cancel import CancelToken, Cancelled, check
from .info import _fraction_or_none
from .weights import WeightsError, sha256_of


PACKAGE_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    description: str
    filename: str
    bundled: bool = False
    repo: Optional[str] = None
    # a branch, tag or 40-hex commit of ``repo``; a commit pins the exact file
    revision: str = "main"
    sha256: Optional[str] = None
    voxel_size_nm: Optional[tuple[float, float, float]] = None
    # the foreground threshold segmentation should use with these weights (None: the package default)
    fg_threshold: Optional[float] = None
    # "em" (MNet: affinities + foreground) or "lm" (ViT3D light-microscopy foreground, see _model/vit3d.py)
    family: str = "em"

    def url(self) -> Optional[str]:
        if self.repo is None:
            return None
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo, self.filename, revision=self.revision, endpoint=_endpoint())


REGISTRY: dict[str, WeightsEntry] = {
    "default": WeightsEntry(
        name="default",
        description="compact MNet trained on FIB-25 crops, shipped with the plugin (see weights/MODEL_CARD.md)",
        filename="default.pt",
        bundled=True,
        # measured: the FIB-25 training crops are ~2x coarser than the 10 nm unlabeled cube (MODEL_CARD.md)
        voxel_size_nm=(20.0, 20.0, 20.0),
        # picked on fib25_b for these weights (MODEL_CARD.md, segmentation/defaults.py)
        fg_threshold=0.75,
    ),
    "segneuron": WeightsEntry(
        name="segneuron",
        description="released SegNeuron generalist model (MNet kn=(32,64,96,128,256)), Hugging Face yanchaoz/SegNeuron",
        filename="SegNeuronModel.ckpt",
        repo="yanchaoz/SegNeuron",
        # the authors trained at 6-9 nm in xy; override with --model-voxel-size
        voxel_size_nm=(8.0, 8.0, 8.0),
    ),
    "lm_default": WeightsEntry(
        name="lm_default",
        description="light-microscopy ViT3D (DINOv2-inflated) neuron foreground for tracing, shipped with the plugin "
        "(see weights/LM_MODEL_CARD.md)",
        filename="lm_default.pt",
        bundled=True,
        family="lm",
    ),
}


def list_weights(family: Optional[str] = "em") -> list[str]:
    """Registry names of one model family ("em": MNet, "lm": light microscopy; None: all)."""
    return [name for name, entry in REGISTRY.items() if family is None or entry.family == family]


def cache_dir() -> Path:
    root = os.environ.get("NAPARI_SEGNEURON_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "napari-segneuron"


def cached_path(entry: WeightsEntry) -> Path:
    return cache_dir() / entry.name / entry.filename


def _endpoint() -> Optional[str]:
    # huggingface_hub reads HF_ENDPOINT once, at import; read it per call so a changed
    # environment (a mirror set in a session, the tests' local server) is honoured.
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.is_offline_mode() or flag in {"1", "ON", "YES", "TRUE"}


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


def _progress_class(progress: Optional[Callable[..., None]], cancel: Optional[CancelToken]):
    """A tqdm class for huggingface_hub that forwards bytes to ``progress`` and raises
    ``Cancelled`` from the download loop when ``cancel`` is set (the library then deletes
    its temporary file; the destination is only written when the download is complete)."""
    from tqdm import tqdm

    class _Report(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # no terminal bar: the caller draws its own
            kwargs.pop("name", None)
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            self._first = self._done
            self._started = time.monotonic()

        def update(self, n=1):
            check(cancel)
            self._done += int(n or 0)
            if progress is not None:
                rate = (self._done - self._first) / max(time.monotonic() - self._started, 1e-6)
                progress(self._done, int(self.total or 0), f"{self._done / 1e6:.1f} MB at {rate / 1e6:.1f} MB/s")
            return super().update(n)

    return _Report


def _offline_error(entry: WeightsEntry, dest: Path, reason: str) -> WeightsError:
    return WeightsError(
        f"Could not download the '{entry.name}' weights from {entry.url()} ({reason}). If this computer is "
        f"offline, download the file on another computer and put it at {dest}, or pass the file's path "
        "instead of the name."
    )


def _reason(err: BaseException) -> str:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"HTTP {status}: {first_line}" if status else f"{type(err).__name__}: {first_line}"


def _download(
    entry: WeightsEntry,
    dest: Path,
    progress: Optional[Callable[..., None]] = None,
    cancel: Optional[CancelToken] = None,
) -> Path:
    """Download ``entry`` from the Hub to ``dest`` (= ``cached_path(entry)``) and check its hash."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download

    check(cancel)
    if _offline():
        raise _offline_error(entry, dest, "offline mode: HF_HUB_OFFLINE is set")
    endpoint = _endpoint()
    try:
        # one quick request first: offline, the library would retry with back-off for ~20 s
        meta = get_hf_file_metadata(entry.url(), endpoint=endpoint)
        got = Path(
            hf_hub_download(
                entry.repo,
                entry.filename,
                revision=entry.revision,
                local_dir=dest.parent,
                endpoint=endpoint,
                tqdm_class=_progress_class(progress, cancel),
            )
        )
    except Cancelled:
        raise
    except Exception as err:  # network, HTTP and hub errors all mean "could not download"
        raise _offline_error(entry, dest, _reason(err)) from None
    expected = entry.sha256 or (meta.etag if meta.etag and _SHA256.fullmatch(meta.etag) else None)
    if expected is not None:
        digest = sha256_of(got)
        if digest != expected:
            got.unlink()
            raise WeightsError(
                f"The file downloaded from {entry.url()} has sha256 {digest[:12]}…, expected "
                f"{expected[:12]}…; removed it. Try again, or check HF_ENDPOINT."
            )
    return got


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
    if not path.exists():  # once cached, no network at all
        _download(entry, path, progress=progress, cancel=cancel)
    _verify(path, entry.sha256)
    return path


def declared_fg_threshold(name_or_path: Union[str, os.PathLike]) -> Optional[float]:
    """The foreground threshold that checkpoint metadata or a registry entry declares for these
    weights, without loading the network (None when neither does or the file is not here)."""
    from .weights import _read_checkpoint, extract_state_dict

    entry = REGISTRY.get(str(name_or_path))
    path = cached_path(entry) if entry is not None and not entry.bundled else (
        PACKAGE_WEIGHTS / entry.filename if entry is not None else Path(name_or_path))
    declared = None
    if path.is_file():
        try:
            declared = _fraction_or_none(extract_state_dict(_read_checkpoint(path, mmap=True))[1].get("fg_threshold"))
        except Exception:  # noqa: BLE001 - an unreadable file is reported where it is loaded
            declared = None
    if declared is None and entry is not None:
        declared = entry.fg_threshold
    return declared


def load_named(
    name_or_path: Union[str, os.PathLike],
    device: Optional[str] = None,
    progress: Optional[Callable[..., None]] = None,
    cancel: Optional[CancelToken] = None,
):
    """``fetch_weights`` + ``load_model``; a registry entry supplies the model's voxel size and
    foreground threshold when the checkpoint itself does not declare them (the released weights don't)."""
    from .weights import load_model

    key = str(name_or_path)
    path = fetch_weights(key, progress=progress, cancel=cancel)
    entry = REGISTRY.get(key)
    model = load_model(path, device=device, name=entry.name if entry else None)
    return declare_from_registry(model, key)


def declare_from_registry(model, name_or_path: Union[str, os.PathLike]):
    """``model`` with the voxel size and foreground threshold of the registry entry ``name_or_path``
    put in ``model.info`` where its checkpoint declares none (a file path: unchanged)."""
    entry = REGISTRY.get(str(name_or_path))
    if entry is not None and model.info.get("voxel_size_nm") is None and entry.voxel_size_nm is not None:
        model.info["voxel_size_nm"] = tuple(entry.voxel_size_nm)
    if entry is not None and model.info.get("fg_threshold") is None and entry.fg_threshold is not None:
        model.info["fg_threshold"] = float(entry.fg_threshold)
    return model
