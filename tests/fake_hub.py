"""A local HTTP server speaking the subset of the Hugging Face Hub API that ``HfFileSystem``
reads a dataset repository with: repository info, tree listings, paths-info, and file
downloads with byte ranges. It serves the folders under ``root/<namespace>/<name>/`` as dataset
repositories at revision ``main``; with ``token`` set, a request without that bearer token is
answered 401 (as the Hub answers for a private repository)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SHA = "0" * 40
_API = re.compile(r"^/api/datasets/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)(?:/(.*))?)?$")
_RESOLVE = re.compile(r"^/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def _oid(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=20).hexdigest()


def _entry(repo: Path, path: Path) -> dict[str, Any]:
    rel = path.relative_to(repo).as_posix()
    if path.is_dir():
        return {"type": "directory", "oid": SHA, "path": rel}
    return {"type": "file", "oid": _oid(path), "size": path.stat().st_size, "path": rel}


class FakeHub:
    def __init__(self, root: Path, token: str | None = None) -> None:
        self.root = root
        self.token = token
        self.requests: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
                      head: bool = False) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, data: Any) -> None:
                self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def _error(self, status: int, code: str, head: bool = False) -> None:
                self._send(status, json.dumps({"error": code}).encode(),
                           {"X-Error-Code": code, "Content-Type": "application/json"}, head)

            def _authorised(self, head: bool = False) -> bool:
                if hub.token is None or self.headers.get("authorization") == f"Bearer {hub.token}":
                    return True
                self._send(401, b'{"error": "Invalid username or password."}',
                           {"Content-Type": "application/json"}, head)
                return False

            def _repo(self, repo_id: str, revision: str, head: bool = False) -> Path | None:
                repo = hub.root / repo_id
                if not repo.is_dir():
                    self._error(404, "RepoNotFound", head)
                    return None
                if unquote(revision) not in ("main", SHA):
                    self._error(404, "RevisionNotFound", head)
                    return None
                return repo

            def _dispatch(self, head: bool = False) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(size) if size else b""  # before any answer
                url = urlsplit(self.path)
                hub.requests.append(f"{self.command} {url.path}")
                if not self._authorised(head):
                    return
                m = _API.match(url.path)
                if m is not None:
                    self._api(m, url.query)
                    return
                m = _RESOLVE.match(url.path)
                if m is None:
                    self._send(404, head=head)
                    return
                repo = self._repo(m.group(1), m.group(2), head)
                if repo is None:
                    return
                path = repo / unquote(m.group(3))
                if not path.is_file():
                    self._error(404, "EntryNotFound", head)
                    return
                data = path.read_bytes()
                headers = {"ETag": f'"{_oid(path)}"', "X-Repo-Commit": SHA,
                           "Accept-Ranges": "bytes"}
                rng = self.headers.get("Range")
                if rng:
                    a, b = rng.removeprefix("bytes=").split("-")
                    start, end = int(a), min(int(b) + 1 if b else len(data), len(data))
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
                    self._send(206, data[start:end], headers, head)
                else:
                    self._send(200, data, headers, head)

            def _api(self, m: re.Match, query: str) -> None:
                repo = self._repo(m.group(1), m.group(3) or "main")
                if repo is None:
                    return
                kind, rest = m.group(2) or "revision", unquote(m.group(4) or "")
                if kind == "revision":
                    files = sorted(p for p in repo.rglob("*") if p.is_file())
                    self._json({"id": m.group(1), "sha": SHA, "private": hub.token is not None,
                                "siblings": [{"rfilename": p.relative_to(repo).as_posix()}
                                             for p in files]})
                elif kind == "tree":
                    base = repo / rest
                    if not base.is_dir():
                        self._error(404, "EntryNotFound")
                        return
                    recursive = parse_qs(query).get("recursive", ["False"])[0].lower() == "true"
                    found = base.rglob("*") if recursive else base.iterdir()
                    self._json([_entry(repo, p) for p in sorted(found)])
                else:  # paths-info
                    form = parse_qs(self.body.decode())
                    paths = [repo / p for p in form.get("paths", [])]
                    self._json([_entry(repo, p) for p in paths if p.exists()])

            def do_GET(self) -> None:
                self._dispatch()

            def do_HEAD(self) -> None:
                self._dispatch(head=True)

            def do_POST(self) -> None:
                self._dispatch()

        return Handler
