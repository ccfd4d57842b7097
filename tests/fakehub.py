"""A local HTTP server that speaks the Hugging Face hub protocol for the calls the kit makes.

Enough of the hub for the real `huggingface_hub` client (HF_ENDPOINT or endpoint= pointing
here): model info with file metadata (`/api/models/{repo}[/revision/{rev}]?blobs=true`,
siblings with LFS size and sha256), the tree listing (`/api/models/{repo}/tree/{rev}`), and
`/{repo}/resolve/{rev}/{path}` with HEAD and GET, Range requests (206 + Content-Range),
ETag / X-Repo-Commit / X-Linked-Size headers. Plain HTTP only: no `X-Xet-Hash` header and no
`xetHash` in listings, which is how huggingface_hub 2.x decides not to use Xet.

Served files are real files on disk (the default model, synthetic GGUFs; a sparse 20 GiB
file is fine: only the ranges asked for are read). Faults for tests, per file:
`drop_at` (absolute offsets where the connection is cut, each once), `stall_at` (stop
sending at this offset and hold the connection), `corrupt_at` (flip a byte as it is served).
Counters: `bytes_served[path]` and `requests` (method, path, Range header).

    hub = FakeHub(); hub.add_file("org/repo", "model-Q4_K_M.gguf", source=path); hub.start()
    ... HfApi(endpoint=hub.endpoint).model_info("org/repo", files_metadata=True) ...
    hub.stop()
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(8 << 20), b""):
                h.update(b)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


@dataclass
class FakeFile:
    path: str
    source: Path | None = None
    data: bytes | None = None
    sha256_override: str | None = None
    lfs: bool = True
    drop_at: list[int] = field(default_factory=list)
    stall_at: int | None = None
    corrupt_at: set[int] = field(default_factory=set)
    fail_next: int = 0            # answer the next N GETs with fail_status
    fail_status: int = 503
    fail_after_cut: int = 0       # after a drop_at cut, answer the next N GETs with fail_status

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.source.stat().st_size

    @property
    def sha256(self) -> str:
        if self.sha256_override:
            return self.sha256_override
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        return file_sha256(self.source)

    @property
    def blob_id(self) -> str:
        if self.lfs:
            return hashlib.sha1(self.path.encode()).hexdigest()
        content = self.data if self.data is not None else self.source.read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()

    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def read(self, offset: int, n: int) -> bytes:
        if self.data is not None:
            return self.data[offset:offset + n]
        with open(self.source, "rb") as f:
            f.seek(offset)
            return f.read(n)


@dataclass
class FakeRepo:
    repo_id: str
    commit: str
    files: dict[str, FakeFile] = field(default_factory=dict)
    revisions: tuple[str, ...] = ("main",)


class FakeHub:
    def __init__(self, stall_seconds: float = 30.0, redirect_lfs: bool = True):
        self.redirect_lfs = redirect_lfs
        self.repos: dict[str, FakeRepo] = {}
        self.bytes_served: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.stall_seconds = stall_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- content
    def add_file(self, repo_id: str, path: str, source: str | Path | None = None, data: bytes | None = None,
                 sha256: str | None = None, lfs: bool | None = None) -> FakeFile:
        repo = self.repos.get(repo_id)
        if repo is None:
            repo = self.repos[repo_id] = FakeRepo(repo_id, hashlib.sha1(repo_id.encode()).hexdigest())
        f = FakeFile(path, Path(source) if source is not None else None, data, sha256,
                     lfs if lfs is not None else path.endswith(".gguf"))
        repo.files[path] = f
        return f

    def file(self, repo_id: str, path: str) -> FakeFile:
        return self.repos[repo_id].files[path]

    def served(self, path: str) -> int:
        return self.bytes_served.get(path, 0)

    def gets(self, path: str) -> list[str | None]:
        """Range headers of the GET requests that fetched a file's bytes (None: no Range); with
        redirect_lfs an LFS file's bytes come from the /cdn/ URL the resolve URL redirects to."""
        lfs = any(r.files[path].lfs for r in self.repos.values() if path in r.files)
        via_cdn = self.redirect_lfs and lfs
        return [rng for m, p, rng in self.requests
                if m == "GET" and p.endswith("/" + path) and p.startswith("/cdn/") == via_cdn]

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_served.clear()
            self.requests.clear()

    # ---- server
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fakehub",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open (keep-alive) connection: the hub is gone."""
        import socket
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_MODEL = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/([^/]+/[^/]+)/([0-9a-f]{40})/(.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._conns.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):  # the client gave up (a watchdog): fine
            pass

    # ---- helpers
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status=200, headers=None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str, msg: str, headers=None) -> None:
        self._json({"error": msg}, status, {"X-Error-Code": code, "X-Error-Message": msg, **(headers or {})})

    def _repo(self, repo_id: str, rev: str | None):
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        if rev is not None and unquote(rev) not in repo.revisions + (repo.commit,):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", {"X-Repo-Commit": repo.commit})
            return None
        return repo

    # ---- routes
    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        with self.hub._lock:
            self.hub.requests.append((self.command, path, self.headers.get("Range")))
        try:
            if m := _TREE.match(path):
                return self._tree(m.group(1), m.group(2), m.group(3) or "", parse_qs(url.query))
            if m := _MODEL.match(path):
                return self._model_info(m.group(1), m.group(2), parse_qs(url.query))
            if m := _RESOLVE.match(path):
                return self._resolve(m.group(1), m.group(2), m.group(3))
            if m := _CDN.match(path):
                return self._resolve(m.group(1), m.group(2), m.group(3), cdn=True)
            self._error(404, "NotFound", f"no route {path}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _model_info(self, repo_id: str, rev: str | None, q: dict) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        blobs = q.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.files.values():
            s = {"rfilename": f.path}
            if blobs:
                s.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": 134}
            siblings.append(s)
        self._json({"_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
                    "sha": repo.commit, "private": False, "gated": False, "disabled": False, "tags": ["gguf"],
                    "library_name": "gguf", "lastModified": "2026-11-01T00:00:00.000Z",
                    "createdAt": "2026-10-01T00:00:00.000Z", "siblings": siblings})

    def _tree(self, repo_id: str, rev: str, sub: str, q: dict) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        recursive = q.get("recursive", ["false"])[0].lower() == "true"
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        entries, dirs = [], set()
        for f in repo.files.values():
            if not f.path.startswith(prefix):
                continue
            rest = f.path[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            e = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
            if f.lfs:
                e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(e)
        if recursive:
            for f in repo.files.values():
                parts = f.path[len(prefix):].split("/")[:-1] if f.path.startswith(prefix) else []
                for i in range(1, len(parts) + 1):
                    dirs.add(prefix + "/".join(parts[:i]))
        entries += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                    for d in sorted(dirs)]
        self._json(entries)

    def _resolve(self, repo_id: str, rev: str, fpath: str, cdn: bool = False) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        f = repo.files.get(fpath)
        if f is None:
            return self._error(404, "EntryNotFound", f"{fpath} does not exist", {"X-Repo-Commit": repo.commit})
        if f.lfs and not cdn and self.hub.redirect_lfs:
            # like huggingface.co: an LFS file resolves to a 302 towards the storage CDN, with the
            # file's size and sha256 in X-Linked-* headers
            return self._send(302, b"", {
                "Location": f"{self.hub.endpoint}/cdn/{repo.repo_id}/{repo.commit}/{f.path}",
                "X-Repo-Commit": repo.commit, "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(f.size), "ETag": f'"{f.blob_id}"'}, ctype="text/plain")
        if cdn and self.headers.get("Authorization"):
            return self._error(400, "BadRequest", "the CDN does not take hub tokens")
        if self.command == "GET" and f.fail_next > 0:
            with self.hub._lock:
                f.fail_next -= 1
            return self._error(f.fail_status, "ServiceUnavailable", "try again later")
        size = f.size
        base = {"X-Repo-Commit": repo.commit, "ETag": f'"{f.etag()}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            base.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(size)})
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._send(416, b"", {**base, "Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range
                start = max(size - int(m.group(2)), 0)
            if start >= size or start > end:
                return self._send(416, b"", {**base, "Content-Range": f"bytes */{size}"})
            status = 206
            base["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        for k, v in base.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        self._body(f, start, end + 1)

    def _body(self, f: FakeFile, start: int, stop: int) -> None:
        hub = self.hub
        pos = start
        cut = None
        with hub._lock:
            drops = [d for d in f.drop_at if start <= d < stop]
            if drops:
                cut = min(drops)
                f.drop_at.remove(cut)
                f.fail_next += f.fail_after_cut
        stall = f.stall_at if f.stall_at is not None and start <= f.stall_at < stop else None
        limit = min(x for x in (cut, stall, stop) if x is not None)
        while pos < limit:
            n = min(256 << 10, limit - pos)
            data = f.read(pos, n)
            if f.corrupt_at:
                b = bytearray(data)
                for c in f.corrupt_at:
                    if pos <= c < pos + len(b):
                        b[c - pos] ^= 0xFF
                data = bytes(b)
            self.wfile.write(data)
            with hub._lock:
                hub.bytes_served[f.path] = hub.bytes_served.get(f.path, 0) + len(data)
            pos += len(data)
        if pos < stop:
            self.wfile.flush()
            if stall is not None and pos == stall and cut is None:
                hub._stop.wait(hub.stall_seconds)
            self.close_connection = True
            try:
                import socket
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
