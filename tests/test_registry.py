"""Named weights: download from a local HTTP server (resume, checksum, offline message)."""
import hashlib
import http.server
import socket
import threading

import pytest
import torch

from napari_segneuron._model import MNet, REGISTRY, WeightsError, download, fetch_weights, load_model, save_checkpoint
from napari_segneuron.cancel import CancelToken, Cancelled


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload, honouring ``Range: bytes=N-`` like the Hugging Face CDN."""

    payload = b""
    requests: list = []

    def do_GET(self):  # noqa: N802
        type(self).requests.append((self.path, self.headers.get("Range")))
        if not self.path.endswith(REGISTRY["segneuron"].filename):
            self.send_error(404, "not found")
            return
        data = type(self).payload
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        if start >= len(data) and rng:
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path, monkeypatch):
    model = MNet(kn=(4, 8, 12, 16, 20))
    ckpt = save_checkpoint(model, tmp_path / "served.ckpt", iters=1)
    RangeHandler.payload = ckpt.read_bytes()
    RangeHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path / "cache"))
    yield httpd
    httpd.shutdown()


def test_named_download_then_cached(server, tmp_path):
    calls = []
    path = fetch_weights("segneuron", progress=lambda d, t, m="": calls.append((d, t)))
    assert path == tmp_path / "cache" / "segneuron" / REGISTRY["segneuron"].filename
    assert path.read_bytes() == RangeHandler.payload
    assert calls and calls[-1] == (len(RangeHandler.payload), len(RangeHandler.payload))
    assert load_model(path).kn == (4, 8, 12, 16, 20)
    n = len(RangeHandler.requests)
    assert fetch_weights("segneuron") == path  # cached: no new request
    assert len(RangeHandler.requests) == n


def test_resume_from_partial_download(server, tmp_path):
    dest = tmp_path / "cache" / "segneuron" / REGISTRY["segneuron"].filename
    dest.parent.mkdir(parents=True)
    half = len(RangeHandler.payload) // 2
    (dest.parent / (dest.name + ".part")).write_bytes(RangeHandler.payload[:half])
    fetch_weights("segneuron")
    assert RangeHandler.requests[-1][1] == f"bytes={half}-"
    assert dest.read_bytes() == RangeHandler.payload


def test_checksum_mismatch_removes_download(server, tmp_path):
    url = REGISTRY["segneuron"].url()
    dest = tmp_path / "w.ckpt"
    with pytest.raises(WeightsError, match="sha256"):
        download(url, dest, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "w.ckpt.part").exists()
    good = hashlib.sha256(RangeHandler.payload).hexdigest()
    assert download(url, dest, sha256=good).read_bytes() == RangeHandler.payload


def test_corrupted_cache_is_detected(server):
    path = fetch_weights("segneuron")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(WeightsError, match="Checksum mismatch"):
        fetch_weights("segneuron")


def test_cancel_keeps_partial_file_for_resume(server, tmp_path):
    token = CancelToken()

    def progress(done, total, message=""):
        token.cancel()

    dest = tmp_path / "c.ckpt"
    with pytest.raises(Cancelled):
        download(REGISTRY["segneuron"].url(), dest, progress=progress, cancel=token, chunk=1024)
    assert not dest.exists()
    assert (tmp_path / "c.ckpt.part").stat().st_size > 0


def test_offline_message_says_where_to_put_the_file(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError) as err:
        fetch_weights("segneuron")
    text = str(err.value)
    assert "offline" in text and str(tmp_path / "cache" / "segneuron") in text


def test_http_error_is_reported(server, tmp_path):
    with pytest.raises(WeightsError, match="HTTP 404"):
        download(REGISTRY["segneuron"].url().replace(".ckpt", ".missing"), tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_unknown_name_lists_known_ones():
    with pytest.raises(WeightsError, match="default, segneuron"):
        fetch_weights("no-such-model")


def test_path_passes_through(tmp_path):
    p = save_checkpoint(MNet(kn=(4, 8, 12, 16, 20)), tmp_path / "mine.pt")
    assert fetch_weights(str(p)) == p


def test_released_weights_get_the_registry_voxel_size(server):
    from napari_segneuron._model import load_named

    model = load_named("segneuron")
    assert model.info["name"] == "segneuron"
    assert model.info["voxel_size_nm"] == REGISTRY["segneuron"].voxel_size_nm
