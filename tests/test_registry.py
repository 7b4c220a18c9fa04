"""Named weights through huggingface_hub, against a local server that answers like the Hub
(HEAD with X-Repo-Commit / X-Linked-Etag, GET with Range): resume, hashes, offline, cancel."""
import hashlib
import http.server
import socket
import threading

import pytest

from napari_segneuron._model import MNet, REGISTRY, WeightsError, fetch_weights, load_model, save_checkpoint
from napari_segneuron._model import registry
from napari_segneuron.cancel import CancelToken, Cancelled

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ORIGINAL = REGISTRY["segneuron"]  # what the server serves, whatever a test puts in the registry


class HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves one file at /<repo>/resolve/<revision>/<filename>, like huggingface.co."""

    protocol_version = "HTTP/1.1"
    payload = b""
    etag = ""  # the sha256 the hub publishes for an LFS file
    drop_first_get_after = None  # close the connection mid-body once, to exercise resume
    requests: list = []

    def _resolve(self):
        entry = ORIGINAL
        return self.path in (
            f"/{entry.repo}/resolve/{entry.revision}/{entry.filename}",
            f"/{entry.repo}/resolve/{COMMIT}/{entry.filename}",
        )

    def _headers(self, length, status=200, extra=()):
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("X-Linked-Etag", f'"{type(self).etag}"')
        self.send_header("X-Linked-Size", str(len(type(self).payload)))
        self.send_header("ETag", f'"{type(self).etag}"')
        self.send_header("Content-Length", str(length))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def _not_found(self):
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        type(self).requests.append(("HEAD", self.path, None))
        if not self._resolve():
            return self._not_found()
        self._headers(len(type(self).payload))

    def do_GET(self):  # noqa: N802
        rng = self.headers.get("Range")
        type(self).requests.append(("GET", self.path, rng))
        if not self._resolve():
            return self._not_found()
        data = type(self).payload
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        extra = [("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")] if rng else []
        self._headers(len(body), 206 if rng else 200, extra)
        cut = type(self).drop_first_get_after
        if cut is not None:
            type(self).drop_first_get_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        for i in range(0, len(body), 4096):  # several chunks, so progress and cancel see them
            self.wfile.write(body[i : i + 4096])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path, monkeypatch):
    ckpt = save_checkpoint(MNet(kn=(4, 8, 12, 16, 20)), tmp_path / "served.ckpt", iters=1)
    HubHandler.payload = ckpt.read_bytes()
    HubHandler.etag = hashlib.sha256(HubHandler.payload).hexdigest()
    HubHandler.drop_first_get_after = None
    HubHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path / "cache"))
    yield httpd
    httpd.shutdown()


def serve_large_file():
    """12 MB of random bytes: more than huggingface_hub's 10 MiB read chunk, so a transfer
    has several chunks to report, cancel between and resume after."""
    import numpy as np

    HubHandler.payload = np.random.default_rng(0).bytes(12 * 2**20)
    HubHandler.etag = hashlib.sha256(HubHandler.payload).hexdigest()


def cached(tmp_path):
    return tmp_path / "cache" / "segneuron" / REGISTRY["segneuron"].filename


def test_named_download_then_cached(server, tmp_path):
    calls = []
    path = fetch_weights("segneuron", progress=lambda d, t, m="": calls.append((d, t, m)))
    assert path == cached(tmp_path)
    assert path.read_bytes() == HubHandler.payload
    n = len(HubHandler.payload)
    assert calls and calls[-1][:2] == (n, n) and "MB" in calls[-1][2]
    assert [d for d, _, _ in calls] == sorted(d for d, _, _ in calls)
    assert load_model(path).kn == (4, 8, 12, 16, 20)
    assert (path.parent / (path.name + ".sha256")).read_text().strip() == HubHandler.etag
    seen = len(HubHandler.requests)
    assert fetch_weights("segneuron") == path  # cached: no new request
    assert len(HubHandler.requests) == seen


def test_broken_transfer_resumes_with_range(server, tmp_path):
    serve_large_file()
    cut = 11 * 2**20
    HubHandler.drop_first_get_after = cut
    path = fetch_weights("segneuron")
    gets = [r for r in HubHandler.requests if r[0] == "GET"]
    assert len(gets) == 2 and gets[0][2] is None
    start = int(gets[1][2].split("=")[1].rstrip("-"))
    assert 0 < start <= cut  # resumed from the bytes it had, not restarted
    assert path.read_bytes() == HubHandler.payload


def test_revision_is_pinned_in_the_url(server, tmp_path, monkeypatch):
    entry = REGISTRY["segneuron"]
    monkeypatch.setitem(REGISTRY, "segneuron", registry.WeightsEntry(**{**entry.__dict__, "revision": COMMIT}))
    assert fetch_weights("segneuron").read_bytes() == HubHandler.payload
    assert all(f"/resolve/{COMMIT}/" in p for _, p, _ in HubHandler.requests)


def test_registry_checksum_mismatch_removes_download(server, tmp_path, monkeypatch):
    entry = REGISTRY["segneuron"]
    monkeypatch.setitem(REGISTRY, "segneuron", registry.WeightsEntry(**{**entry.__dict__, "sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="sha256"):
        fetch_weights("segneuron")
    assert not cached(tmp_path).exists()
    good = registry.WeightsEntry(**{**entry.__dict__, "sha256": HubHandler.etag})
    monkeypatch.setitem(REGISTRY, "segneuron", good)
    assert fetch_weights("segneuron").read_bytes() == HubHandler.payload


def test_file_not_matching_the_hubs_hash_is_rejected(server, tmp_path):
    HubHandler.etag = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(WeightsError, match="sha256"):
        fetch_weights("segneuron")
    assert not cached(tmp_path).exists()


def test_corrupted_cache_is_detected(server):
    path = fetch_weights("segneuron")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(WeightsError, match="Checksum mismatch"):
        fetch_weights("segneuron")


def test_cancel_leaves_no_partial_file(server, tmp_path):
    serve_large_file()
    token = CancelToken()
    calls = []

    def progress(done, total, message=""):
        calls.append(done)
        token.cancel()

    with pytest.raises(Cancelled):
        fetch_weights("segneuron", progress=progress, cancel=token)
    assert len(calls) == 1 and calls[0] < len(HubHandler.payload)  # stopped mid-transfer
    folder = tmp_path / "cache" / "segneuron"
    assert not cached(tmp_path).exists()
    assert not [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size >= calls[0]]
    assert fetch_weights("segneuron").read_bytes() == HubHandler.payload  # a later try completes


def test_offline_message_says_where_to_put_the_file(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("NAPARI_SEGNEURON_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError) as err:
        fetch_weights("segneuron")
    text = str(err.value)
    assert "offline" in text and str(cached(tmp_path)) in text


def test_offline_mode_uses_no_network_and_accepts_a_placed_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE") as err:
        fetch_weights("segneuron")
    assert str(cached(tmp_path)) in str(err.value)
    assert HubHandler.requests == []
    # the user follows the message: copies the file there by hand
    cached(tmp_path).parent.mkdir(parents=True)
    cached(tmp_path).write_bytes(HubHandler.payload)
    assert fetch_weights("segneuron") == cached(tmp_path)
    assert HubHandler.requests == []


def test_http_error_is_reported(server, tmp_path, monkeypatch):
    entry = REGISTRY["segneuron"]
    missing = registry.WeightsEntry(**{**entry.__dict__, "filename": "missing.ckpt"})
    monkeypatch.setitem(REGISTRY, "segneuron", missing)
    with pytest.raises(WeightsError, match="HTTP 404"):
        fetch_weights("segneuron")
    assert not (tmp_path / "cache" / "segneuron" / "missing.ckpt").exists()


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
