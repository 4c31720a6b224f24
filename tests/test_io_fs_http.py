"""Sources at http(s) URLs (fsspec's HTTPFileSystem), against a local server with range
requests that answers 503 to the first request of every file."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import write_jsonl
from mixbatch.config import config_from_dict
from mixbatch.errors import ConfigError
from mixbatch.io.fs import reset_filesystems
from mixbatch.prepare import prepare
from mixbatch.store import open_store

pytest.importorskip("aiohttp")


def _handler(root: Path, failed: set[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _body(self) -> bytes | None:
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_response(404)
                self.end_headers()
                return None
            if self.path not in failed:  # the first request of a file: 503, to be retried
                failed.add(self.path)
                self.send_response(503)
                self.end_headers()
                return None
            data = path.read_bytes()
            rng = self.headers.get("Range")
            if rng:
                a, b = rng.removeprefix("bytes=").split("-")
                start, end = int(a), min(int(b) + 1 if b else len(data), len(data))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                data = data[start:end]
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            return data

        def do_HEAD(self) -> None:
            self._body()

        def do_GET(self) -> None:
            data = self._body()
            if data is not None:
                self.wfile.write(data)

    return Handler


def test_http_source_prepares_the_local_store(tmp_path: Path, monkeypatch) -> None:
    from mixbatch.io.retry import RetryPolicy

    monkeypatch.setattr("mixbatch.io.retry.DEFAULT_RETRY", RetryPolicy(tries=4, base=0.001))
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(rng.integers(1, 200))) + f" {i}" for i in range(150)]
    write_jsonl(tmp_path / "www" / "web.jsonl", texts)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(tmp_path / "www", set()))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    reset_filesystems()
    try:
        url = f"http://127.0.0.1:{server.server_port}/web.jsonl"
        cfg = config_from_dict({"store": str(tmp_path / "from_http"),
                                "sources": {"web": {"path": url}}})
        prepare(cfg, workers=1)
        ref = config_from_dict({"store": str(tmp_path / "local"), "sources": {"web": {
            "path": str(tmp_path / "www" / "web.jsonl")}}})
        prepare(ref, workers=1)
        assert (tmp_path / "from_http" / "web" / "tokens.bin").read_bytes() == \
            (tmp_path / "local" / "web" / "tokens.bin").read_bytes()
        assert len(open_store(tmp_path / "from_http" / "web")) == 150
        bad = config_from_dict({"store": str(tmp_path / "x"), "sources": {"web": {
            "path": f"http://127.0.0.1:{server.server_port}/missing.jsonl"}}})
        with pytest.raises(ConfigError, match=r"missing\.jsonl"):
            prepare(bad, workers=1)
    finally:
        server.shutdown()
        reset_filesystems()
