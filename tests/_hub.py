"""Test helpers: a Hugging Face hub cache laid out on disk, and a hub-shaped HTTP server on 127.0.0.1.

The cache layout is huggingface_hub's own (``models--org--name/{blobs,refs/main,snapshots/<commit>}``
with snapshot files as relative symlinks to blobs). The server implements the endpoints
``snapshot_download`` calls: ``/api/models/{repo}[/revision/{rev}]``, ``/api/models/{repo}/tree/{rev}``
and ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag``, ``Content-Length``
and ``Range``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def commit_of(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


def add_to_cache(cache: Path, repo_id: str, files: dict[str, Path | bytes], *, commit: str | None = None,
                 ref: str = "main") -> Path:
    """Put ``files`` (repo path -> source file or bytes) into the cache as huggingface_hub does.

    Returns:
        The snapshot folder.
    """
    commit = commit or commit_of(repo_id)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snap = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    for name, src in files.items():
        blob_id = hashlib.sha256(f"{repo_id}/{commit}/{name}".encode()).hexdigest()  # stands in for the etag
        blob = blobs / blob_id
        if isinstance(src, bytes):
            blob.write_bytes(src)
        else:
            shutil.copyfile(src, blob)  # sparse source files stay cheap: the tests only read headers
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


class HubServer:
    """A threading HTTP server that serves ``repos``: {repo_id: {"sha": commit, "files": {name: bytes}}},
    where a repo may add older commits or tags as ``"revisions": {name: {"sha": ..., "files": ...}}``.

    ``cut`` maps a file name to a byte count: the first full GET of that file sends only that many
    bytes and drops the connection. ``log`` records (method, path, Range header).
    """

    def __init__(self, repos: dict[str, dict]):
        self.repos = repos
        self.cut: dict[str, int] = {}
        self.log: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _json(self, obj, status=200):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _not_found(self, code="RepoNotFound"):
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = unquote(urlsplit(self.path).path)
                server.log.append((self.command, path, self.headers.get("Range")))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    repo_id = "/".join(parts[2:4])
                    repo = server.repos.get(repo_id)
                    if repo is None:
                        return self._not_found()
                    rest = parts[4:]
                    if rest[:1] in (["revision"], ["tree"]) and len(rest) > 1:
                        repo = server.at(repo, rest[1])
                        if repo is None:
                            return self._not_found("RevisionNotFound")
                    if not rest or rest[0] == "revision":
                        return self._json({"id": repo_id, "modelId": repo_id, "sha": repo["sha"], "private": False,
                                           "siblings": [{"rfilename": f} for f in sorted(repo["files"])]})
                    if rest[0] == "tree":
                        return self._json([{"type": "file", "path": f, "size": len(b),
                                            "oid": hashlib.sha1(b).hexdigest()}
                                           for f, b in sorted(repo["files"].items())])
                    return self._not_found()
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = server.repos.get("/".join(parts[:2]))
                    name = "/".join(parts[4:])
                    if repo is None:
                        return self._not_found()
                    repo = server.at(repo, parts[3])
                    if repo is None:
                        return self._not_found("RevisionNotFound")
                    if name not in repo["files"]:
                        return self._not_found("EntryNotFound")
                    return self._file(repo, name)
                return self._not_found()

            def _file(self, repo, name):
                data = repo["files"][name]
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and self.command == "GET":
                    start = int(rng[6:].split("-")[0])
                    status = 206
                self.send_response(status)
                self.send_header("X-Repo-Commit", repo["sha"])
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                cut = server.cut.pop(name, None) if start == 0 else None
                if cut is not None:
                    # a dropped connection mid-body, as a flaky network would do
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def at(repo: dict, revision: str) -> dict | None:
        """The repo as of ``revision``: ``main`` or its own sha, or a key of ``repo["revisions"]``
        ({name or sha: {"sha": ..., "files": {...}}}) or the sha of one of those."""
        if revision in ("main", repo["sha"]):
            return repo
        others = repo.get("revisions", {})
        return others.get(revision) or next((r for r in others.values() if r["sha"] == revision), None)

    def downloads(self) -> list[str]:
        """File names fetched with GET (not HEAD) from /resolve/."""
        return [p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p, _ in self.log if m == "GET" and "/resolve/" in p]
