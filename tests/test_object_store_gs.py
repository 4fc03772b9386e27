"""Stores on Google Cloud Storage (``gs://``), against gcp-storage-emulator (from PyPI) started on
127.0.0.1: a killed harvest resumes to the store a local harvest makes, train and eval read it, and the
writer's lock is taken, renewed and taken over with conditional writes. gcsfs finds the server through
the standard variable STORAGE_EMULATOR_HOST. The emulator ignores GCS's preconditions
(``ifGenerationMatch``), which real GCS enforces, so the tests talk to it through ``GenerationProxy``: a
pass-through that answers 412 when a request's ``ifGenerationMatch`` differs from the object's current
generation (0: the object must not exist), as GCS documents. Skipped without gcsfs or the emulator."""

import http.client
import http.server
import json
import os
import re
import shutil
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
from conftest import free_port, local_server, run_cli
from test_object_store import (
    hold_and_refuse,
    kill_resume_equals_local,
    lock_refuses_live_and_takes_over_stale,
    train_and_eval_read,
)

# before gcsfs is imported here: its default class asks a gRPC control API the emulator lacks for
# every bucket's layout (a 60 s timeout each; the subprocesses get it from the fixture's environment)
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
pytest.importorskip("gcsfs")
EMULATOR = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent)) or shutil.which(
    "gcp-storage-emulator"
)
pytestmark = pytest.mark.skipif(not EMULATOR, reason="gcp-storage-emulator (pip install) not found")


class GenerationProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to the emulator at ``upstream`` (host:port), one at a time, after GCS's
    generation precondition: a request carrying ``ifGenerationMatch=G`` is answered 412 unless the
    object it names has generation G now (G = 0: no such object). The object is named by the URL
    (``/b/<bucket>/o/<name>``), the ``name`` parameter of a media upload, or the JSON metadata that
    opens a multipart or resumable upload's body."""

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.serial, self.refused = upstream, threading.Lock(), 0
        self.daemon_threads = True

    def request(self, method: str, path: str, body: bytes = b"", headers=None):
        c = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            c.request(method, path, body or None, headers or {})
            r = c.getresponse()
            return r.status, r.getheaders(), r.read()
        finally:
            c.close()

    def generation(self, bucket: str, name: str) -> str:
        path = f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/{urllib.parse.quote(name, safe='')}"
        status, _, data = self.request("GET", path)
        return str(json.loads(data)["generation"]) if status == 200 else "0"


_PRECONDITION_FAILED = json.dumps({"error": {"code": 412, "message": "Precondition Failed"}}).encode()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _target(self, url, query: dict, body: bytes) -> tuple[str, str] | None:
        m = re.search(r"/b/([^/]+)/o(?:/([^?]+))?$", url.path)
        if not m:
            return None
        name = urllib.parse.unquote(m.group(2)) if m.group(2) else query.get("name", [None])[0]
        if name is None and (j := re.search(rb'"name": ?("(?:[^"\\]|\\.)*")', body)):
            name = json.loads(j.group(1))
        return (urllib.parse.unquote(m.group(1)), name) if name else None

    def _any(self):
        srv: GenerationProxy = self.server
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding")}
        headers["Content-Length"] = str(len(body))
        with srv.serial:
            want, target = query.get("ifGenerationMatch", [None])[0], self._target(url, query, body)
            if want is not None and target and srv.generation(*target) != want:
                srv.refused += 1
                status, out_headers, data = 412, [("Content-Type", "application/json")], _PRECONDITION_FAILED
            else:
                status, out_headers, data = srv.request(self.command, self.path, body, headers)
        self.send_response(status)
        mine = f"127.0.0.1:{srv.server_address[1]}"
        for k, v in out_headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                self.send_header(k, v.replace(srv.upstream, mine) if k.lower() == "location" else v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any


@pytest.fixture(scope="module")
def gs():
    """The emulator on 127.0.0.1 with a bucket, behind a ``GenerationProxy``, STORAGE_EMULATOR_HOST (the
    proxy) in the environment; yields gcsfs (its ``proxy`` attribute: the proxy)."""
    port = free_port()
    argv = [EMULATOR, "start", "--host", "127.0.0.1", "--port", str(port), "--default-bucket", "sagsae-test",
            "--in-memory", "--quiet"]  # fmt: skip
    proxy = GenerationProxy(f"127.0.0.1:{port}")
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{proxy.server_address[1]}",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}  # fmt: skip
    try:
        with local_server(argv, port, env):
            import gcsfs

            fs = gcsfs.GCSFileSystem()
            fs.proxy = proxy
            yield fs
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_the_proxy_enforces_generation_preconditions(gs):
    """The test double itself: what it lets through and what it refuses (else the lock tests below
    would prove nothing)."""
    gs.pipe_file("sagsae-test/p/x", b"1", mode="create")
    with pytest.raises(FileExistsError):
        gs.pipe_file("sagsae-test/p/x", b"2", mode="create")  # ifGenerationMatch=0 on an existing object
    assert gs.cat_file("sagsae-test/p/x") == b"1" and gs.proxy.refused == 1


def test_harvest_kill_resume_train_eval_on_gcs(tmp_path, gs):
    url = "gs://sagsae-test/syn"
    p = kill_resume_equals_local(tmp_path, gs, url)
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    p = run_cli("store", "info", url, check=0)
    assert url in p.stderr + p.stdout and "100,000" in p.stderr + p.stdout
    train_and_eval_read(tmp_path, url)


def test_missing_bucket_is_one_line(gs):
    p = run_cli("store", "info", "gs://no-such-bucket/x", check=2)
    assert p.stderr.count("\n") == 1 and "gs://no-such-bucket/x" in p.stderr, p.stderr


def test_gcs_lock_refuses_a_second_writer(gs):
    from sagsae_cli.store import open_store

    url = "gs://sagsae-test/locked"
    hold_and_refuse(url).close()
    gs.invalidate_cache()
    assert open_store(url).rows("train") == 5 and not gs.exists("sagsae-test/locked/.lock")


def test_gcs_lock_takeover_is_conditional(gs, monkeypatch):
    refused = gs.proxy.refused
    lock_refuses_live_and_takes_over_stale(gs, "gs://sagsae-test/taken", monkeypatch)
    assert gs.proxy.refused > refused  # the loser's renewal was refused by its generation condition
