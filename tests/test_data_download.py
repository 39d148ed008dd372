"""download(): against a local HTTP server serving a synthetic archive (Range-aware), no internet needed."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from fastcifar.data import download as download_module
from fastcifar.data.cifar import SYNTHETIC_MARKER, raw_dir, read_split
from fastcifar.data.download import Archive, download
from fastcifar.errors import FastcifarError


class _Server:
    """Serves `files` {url path: bytes}; honours `Range: bytes=N-` unless `ignore_range`; logs requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ignore_range = False
        self.cut_after: int | None = None  # send only this many body bytes, then close (a dropped connection)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                header = self.headers.get("Range")
                if header and not server.ignore_range:
                    start = int(header.split("=")[1].rstrip("-"))
                    if start >= len(body):
                        self.send_error(416)
                        return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:] if server.cut_after is None else body[start:start + server.cut_after])

            def log_message(self, *args):  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def archive_bytes(tmp_path_factory) -> bytes:
    """A cifar-10-python.tar.gz with the official folder name, holding 60/20 synthetic images.
    The SYNTHETIC marker file is left out (batch labels still say synthetic), as a real archive has none."""
    from fastcifar.data.synth import write_synthetic

    folder = write_synthetic("cifar10", tmp_path_factory.mktemp("archive"), train=60, test=20, seed=5)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name, filter=lambda info: None if info.name.endswith(SYNTHETIC_MARKER) else info)
    return buffer.getvalue()


def _serve(monkeypatch, server, body: bytes, md5: str | None = None, name: str = "cifar-10-python.tar.gz"):
    server.files[f"/{name}"] = body
    archive = Archive(f"{server.url}/{name}", md5 or hashlib.md5(body).hexdigest(), name)
    monkeypatch.setitem(download_module.ARCHIVES, "cifar10", archive)
    return archive


def test_download_extracts_checks_and_skips(tmp_path, monkeypatch, server, archive_bytes):
    _serve(monkeypatch, server, archive_bytes)
    folder = download("cifar10", tmp_path, progress=False)
    assert folder == raw_dir("cifar10", tmp_path)
    assert len(read_split("cifar10", tmp_path, "train")) == 60
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == archive_bytes
    assert not any(p.name.startswith(".tmp-") or p.suffix == ".part" for p in tmp_path.iterdir())
    assert server.requests == [("/cifar-10-python.tar.gz", None)]
    assert download("cifar10", tmp_path, progress=False) == folder  # present and valid: no request
    assert len(server.requests) == 1


def test_connection_closed_early_keeps_the_part_and_resumes(tmp_path, monkeypatch, server, archive_bytes):
    _serve(monkeypatch, server, archive_bytes)
    server.cut_after = 1000
    with pytest.raises(FastcifarError, match="stopped at 1000 of .* run the same command again to resume"):
        download("cifar10", tmp_path, progress=False)
    assert (tmp_path / "cifar-10-python.tar.gz.part").stat().st_size == 1000
    server.cut_after = None
    download("cifar10", tmp_path, progress=False)
    assert server.requests[-1] == ("/cifar-10-python.tar.gz", "bytes=1000-")
    assert len(read_split("cifar10", tmp_path, "train")) == 60


def test_resume_from_part_file(tmp_path, monkeypatch, server, archive_bytes):
    _serve(monkeypatch, server, archive_bytes)
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(archive_bytes[:1000])
    download("cifar10", tmp_path, progress=False)
    assert server.requests == [("/cifar-10-python.tar.gz", "bytes=1000-")]
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == archive_bytes
    assert len(read_split("cifar10", tmp_path, "test")) == 20


def test_server_ignoring_range_restarts(tmp_path, monkeypatch, server, archive_bytes):
    _serve(monkeypatch, server, archive_bytes)
    server.ignore_range = True
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(b"garbage" * 100)
    download("cifar10", tmp_path, progress=False)
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == archive_bytes


def test_complete_part_file_gets_416(tmp_path, monkeypatch, server, archive_bytes):
    _serve(monkeypatch, server, archive_bytes)
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(archive_bytes)
    download("cifar10", tmp_path, progress=False)
    assert server.requests == [("/cifar-10-python.tar.gz", f"bytes={len(archive_bytes)}-")]
    assert raw_dir("cifar10", tmp_path).is_dir()


def test_md5_mismatch(tmp_path, monkeypatch, server, archive_bytes):
    _serve(monkeypatch, server, archive_bytes, md5="0" * 32)
    with pytest.raises(FastcifarError) as err:
        download("cifar10", tmp_path, progress=False)
    message = str(err.value)
    assert f"has md5 {hashlib.md5(archive_bytes).hexdigest()}, expected {'0' * 32}" in message
    assert "fastcifar data download cifar10" in message
    assert list(tmp_path.iterdir()) == []  # the bad .part was deleted, nothing extracted


def test_offline_error_names_folder_and_synth(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(download_module.ARCHIVES, "cifar10",
                        Archive(f"http://127.0.0.1:{port}/cifar-10-python.tar.gz", "0" * 32, "cifar-10-python.tar.gz"))
    with pytest.raises(FastcifarError) as err:
        download("cifar10", tmp_path / "data", progress=False)
    message = str(err.value)
    assert "Could not reach" in message and f"in '{tmp_path / 'data'}'" in message
    assert "cifar-10-batches-py" in message and "`fastcifar data synth cifar10" in message


def test_http_error(tmp_path, monkeypatch, server):
    monkeypatch.setitem(download_module.ARCHIVES, "cifar10",
                        Archive(f"{server.url}/missing.tar.gz", "0" * 32, "cifar-10-python.tar.gz"))
    with pytest.raises(FastcifarError, match=r"failed with HTTP 404.*fastcifar data synth cifar10"):
        download("cifar10", tmp_path, progress=False)


def _tar_with(member: tarfile.TarInfo, payload: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        ok = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return buffer.getvalue()


@pytest.mark.parametrize("name,kind,expected", [
    ("../evil.txt", tarfile.REGTYPE, "unsafe path '../evil.txt'"),
    ("cifar-10-batches-py/../../evil.txt", tarfile.REGTYPE, "unsafe path"),
    ("/tmp/evil.txt", tarfile.REGTYPE, "unsafe path '/tmp/evil.txt'"),
    ("cifar-10-batches-py/link", tarfile.SYMTYPE, "link or special file"),
])
def test_unsafe_archive_members_refused(tmp_path, monkeypatch, server, name, kind, expected):
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
    root = tmp_path / "root"
    _serve(monkeypatch, server, _tar_with(member))
    with pytest.raises(FastcifarError, match=expected):
        download("cifar10", root, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert not raw_dir("cifar10", root).exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # no half-extracted folder left


def test_corrupt_archive_and_missing_folder(tmp_path, monkeypatch, server):
    _serve(monkeypatch, server, b"this is not a tarball")
    with pytest.raises(FastcifarError, match="is not a readable archive"):
        download("cifar10", tmp_path, progress=False)
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("other/readme.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    _serve(monkeypatch, server, buffer.getvalue())
    with pytest.raises(FastcifarError, match="has no 'cifar-10-batches-py' folder"):
        download("cifar10", tmp_path, progress=False)


def test_download_replaces_synthetic_stand_in(tmp_path, monkeypatch, server, archive_bytes):
    from fastcifar.data.synth import write_synthetic

    write_synthetic("cifar10", tmp_path, train=10, test=5)
    _serve(monkeypatch, server, archive_bytes)
    download("cifar10", tmp_path, progress=False)
    assert not (raw_dir("cifar10", tmp_path) / SYNTHETIC_MARKER).exists()
    test = read_split("cifar10", tmp_path, "test")
    assert len(test) == 20 and test.images.dtype == np.uint8


def test_timeout_is_reported_as_offline(tmp_path, monkeypatch):
    """A server that accepts the connection but never answers: the socket timeout becomes the offline error."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        monkeypatch.setattr(download_module, "TIMEOUT_S", 0.5)
        monkeypatch.setitem(download_module.ARCHIVES, "cifar10",
                            Archive(f"http://127.0.0.1:{port}/a.tar.gz", "0" * 32, "cifar-10-python.tar.gz"))
        with pytest.raises(FastcifarError, match=r"Could not reach .*timed out.*fastcifar data synth cifar10"):
            download("cifar10", tmp_path, progress=False)


def test_user_archive_with_wrong_md5_is_kept_and_named(tmp_path, monkeypatch):
    """Offline, a user's tarball with another md5 survives (renamed aside); the message gives both md5s and
    both choices."""
    with socket.socket() as s:  # a port nobody listens on: the network fails
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    official = "c58f30108f718f92721af3b95e74349a"
    monkeypatch.setitem(download_module.ARCHIVES, "cifar10",
                        Archive(f"http://127.0.0.1:{port}/cifar-10-python.tar.gz", official, "cifar-10-python.tar.gz"))
    user_file = tmp_path / "cifar-10-python.tar.gz"
    user_file.write_bytes(b"the user's own archive")
    mine = hashlib.md5(b"the user's own archive").hexdigest()
    (tmp_path / "cifar-10-python.tar.gz.md5-mismatch").write_bytes(b"an earlier one")  # also kept: a fresh name is used
    with pytest.raises(FastcifarError) as err:
        download("cifar10", tmp_path, progress=False)
    message = str(err.value)
    aside = tmp_path / "cifar-10-python.tar.gz.md5-mismatch.1"
    assert aside.read_bytes() == b"the user's own archive" and not user_file.exists()
    assert (tmp_path / "cifar-10-python.tar.gz.md5-mismatch").read_bytes() == b"an earlier one"
    assert f"has md5 {mine}, not the official {official}, so it was kept as '{aside}'" in message
    assert "Could not reach" in message and f"`fastcifar data download cifar10 --root {tmp_path}` online" in message
    assert f"`fastcifar data prepare cifar10 --root {tmp_path} --custom --archive {aside}`" in message
    with pytest.raises(FastcifarError):  # a second attempt keeps it too
        download("cifar10", tmp_path, progress=False)
    assert aside.read_bytes() == b"the user's own archive"
