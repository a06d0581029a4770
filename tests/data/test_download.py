"""download() against a real HTTP server on 127.0.0.1: good, corrupted, truncated, resumed."""
import hashlib
import http.server
import threading
import zipfile

import pytest

from dlforge.data.download import download, safe_extract
from dlforge.errors import DlforgeError

BODY = bytes(range(256)) * 400  # 100 KiB


class Handler(http.server.BaseHTTPRequestHandler):
    mode = "good"
    hits = 0

    def do_GET(self):  # noqa: N802
        Handler.hits += 1
        body = BODY if self.mode != "corrupt" else b"X" + BODY[1:]
        start = 0
        if self.headers.get("Range") and self.mode == "good":
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.mode == "truncate-once" and Handler.hits == 1:
            self.wfile.write(body[:1000])
            return
        self.wfile.write(body[start:])

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Handler.hits = 0
    yield f"http://127.0.0.1:{srv.server_address[1]}/file.bin"
    srv.shutdown()


SHA = "sha256:" + hashlib.sha256(BODY).hexdigest()


def test_download_verifies_and_caches(server, tmp_path, reliability):
    Handler.mode = "good"
    p = download(server, tmp_path / "f.bin", SHA, backoff=0)
    assert p.read_bytes() == BODY
    download(server, tmp_path / "f.bin", SHA, backoff=0)
    assert Handler.hits == 1  # the verified copy is reused
    reliability.record("download of a verified file already in the cache", "not fetched again")


def test_corrupted_download_is_refused_and_not_kept(server, tmp_path, reliability):
    Handler.mode = "corrupt"
    with pytest.raises(DlforgeError, match="checksum mismatch"):
        download(server, tmp_path / "f.bin", SHA, retries=2, backoff=0)
    assert not (tmp_path / "f.bin").exists()
    reliability.record("download whose bytes are corrupted (HTTP server on 127.0.0.1)",
                       "checksum mismatch: one-line error, nothing kept under the final name")


def test_truncated_download_is_retried(server, tmp_path, reliability):
    Handler.mode = "truncate-once"
    assert download(server, tmp_path / "f.bin", SHA, retries=3, backoff=0).read_bytes() == BODY
    assert Handler.hits == 2
    reliability.record("connection dropped mid-download", "retried, then verified")


def test_partial_file_is_resumed(server, tmp_path, reliability):
    Handler.mode = "good"
    (tmp_path / "f.bin.part").write_bytes(BODY[:5000])
    assert download(server, tmp_path / "f.bin", SHA, backoff=0).read_bytes() == BODY
    reliability.record("partial download left by an earlier attempt", "resumed with an HTTP Range request, then verified")


def test_unreachable_server(tmp_path, reliability):
    with pytest.raises(DlforgeError, match="failed after 2 tries"):
        download("http://127.0.0.1:9/none", tmp_path / "x", SHA, retries=2, backoff=0, timeout=2)
    reliability.record("server unreachable", "retried with back-off, then a one-line error")


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_archive_path_traversal_refused(tmp_path, name):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr(name, "x")
    with pytest.raises(DlforgeError, match="unsafe member"):
        safe_extract(z, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_archive_extracts(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("GTSRB/readme.txt", "hello")
    assert (safe_extract(z, tmp_path / "out") / "GTSRB" / "readme.txt").read_text() == "hello"
