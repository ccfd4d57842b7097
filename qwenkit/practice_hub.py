"""The practice hub: a local server on 127.0.0.1 that speaks the Hugging Face hub's protocol,
so the whole download flow can be learned (and tested) without the network.

It serves small synthetic GGUF repos to the real `huggingface_hub` client and to `qwenkit.hub`
(HF_ENDPOINT or `endpoint=` pointing here):

* `qwenkit-practice/Qwen3.5-35B-A3B-GGUF`: Qwen3.5-35B-A3B's exact full-size headers as Q4_K_M
  (19.70 GiB) and Q8_0, so the quant table, the fit verdicts and the header read over HTTP Range
  show the real model's figures. The weights are a hole in a sparse file (a few MB on disk):
  only header reads are served; a full download is refused with a message.
* `qwenkit-practice/Qwen3.5-tiny-GGUF`: a 6 MB random-weight model of the same architecture
  (Q4_K_M), which really downloads: resumable, SHA-256 verified, and loadable by llama.cpp.

Faults on demand, per file: `cut(repo, path, at, outage)` drops the connection at a byte offset
and then answers `outage` requests with HTTP 503 (a network that goes away for a while);
`drop_at`, `stall_at`, `corrupt_at`, `fail_next` for finer tests. Counters: `served(path)`,
`gets(path)` (Range headers of the byte requests), `requests`.

    from qwenkit import practice_hub
    ph = practice_hub.start()                      # the practice repos, on a free port
    hub.list_quants(practice_hub.LOOK_REPO, endpoint=ph.endpoint, vram_gb=16)
    ph.stop()

    python -m qwenkit practice-hub                 # serve until Ctrl-C (prints the endpoint)

Protocol covered: model info with file metadata (`/api/models/{repo}[/revision/{rev}]?blobs=true`:
siblings with LFS size and sha256), the tree listing (`/api/models/{repo}/tree/{rev}`),
`/{repo}/resolve/{rev}/{path}` with HEAD and GET, Range requests (206 + Content-Range), and
ETag / X-Repo-Commit / X-Linked-Size headers; LFS files redirect (302) to a `/cdn/` URL as
huggingface.co does. Plain HTTP only: no `X-Xet-Hash` header and no `xetHash` in listings,
which is how huggingface_hub 2.x decides not to use Xet.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from qwenkit.units import MiB, format_bytes

__all__ = ["GET_FILE", "GET_QUANT", "GET_REPO", "HEADER_READ_LIMIT", "LOOK_FILES", "LOOK_REPO", "PRACTICE_RATE",
           "HubChoice", "HubFile", "HubRepo", "PracticeHub", "add_cli", "connect", "file_sha256", "populate",
           "practice_dir", "practice_files", "start"]

LOOK_REPO = "qwenkit-practice/Qwen3.5-35B-A3B-GGUF"   # full-size headers: look, do not download
GET_REPO = "qwenkit-practice/Qwen3.5-tiny-GGUF"       # a 6 MB model that really downloads
GET_QUANT = "Q4_K_M"
LOOK_FILES = {"Q4_K_M": "Qwen3.5-35B-A3B-Q4_K_M.gguf", "Q8_0": "Qwen3.5-35B-A3B-Q8_0.gguf"}
GET_FILE = "Qwen3.5-tiny-Q4_K_M.gguf"
# Range reads of a listed-only file are served up to this many bytes in one request: enough
# for a GGUF header (Qwen3.5's is about 10 MB with its 248K-token vocabulary), not a download.
HEADER_READ_LIMIT = 64 * MiB
PRACTICE_RATE = 16 * MiB         # bytes/s for practice downloads: a progress bar you can watch

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
class HubFile:
    """One file of a repo: bytes from `source` (a file on disk) or `data`, plus injected faults."""
    path: str
    source: Path | None = None
    data: bytes | None = None
    sha256_override: str | None = None   # what the listing claims (a listed-only file, a bad hub)
    lfs: bool = True
    listed_only: bool = False     # serve header reads (Range, <= HEADER_READ_LIMIT), refuse downloads
    drop_at: list[int] = field(default_factory=list)   # offsets where the connection is cut, each once
    stall_at: int | None = None   # stop sending at this offset and hold the connection
    corrupt_at: set[int] = field(default_factory=set)  # flip these bytes as they are served
    fail_next: int = 0            # answer the next N GETs with fail_status
    fail_status: int = 503
    fail_after_cut: int = 0       # after a drop_at cut, answer the next N GETs with fail_status

    def _source(self) -> Path:
        """The file on disk behind a HubFile without `data` (add_file gives one or the other)."""
        if self.source is None:
            raise ValueError(f"practice hub file {self.path}: neither data nor a source file")
        return self.source

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self._source().stat().st_size

    @property
    def sha256(self) -> str:
        if self.sha256_override:
            return self.sha256_override
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        return file_sha256(self._source())

    @property
    def blob_id(self) -> str:
        # git ids (SHA-1) name content, as on the hub; nothing here is a security check
        if self.lfs:
            return hashlib.sha1(self.path.encode(), usedforsecurity=False).hexdigest()
        content = self.data if self.data is not None else self._source().read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()

    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def read(self, offset: int, n: int) -> bytes:
        if self.data is not None:
            return self.data[offset:offset + n]
        with open(self._source(), "rb") as f:
            f.seek(offset)
            return f.read(n)


@dataclass
class HubRepo:
    repo_id: str
    commit: str
    files: dict[str, HubFile] = field(default_factory=dict)
    revisions: tuple[str, ...] = ("main",)


class PracticeHub:
    """A hub-protocol HTTP server on 127.0.0.1 (a free port unless `port` is given).

    stall_seconds: how long a `stall_at` fault holds the connection.
    redirect_lfs: LFS files resolve to a 302 towards /cdn/ (as huggingface.co does).
    rate: bytes per second for file bodies (None: as fast as the machine goes)."""

    def __init__(self, stall_seconds: float = 30.0, redirect_lfs: bool = True, rate: float | None = None):
        self.redirect_lfs = redirect_lfs
        self.rate = rate
        self.repos: dict[str, HubRepo] = {}
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
                 sha256: str | None = None, lfs: bool | None = None, listed_only: bool = False) -> HubFile:
        repo = self.repos.get(repo_id)
        if repo is None:
            commit = hashlib.sha1(repo_id.encode(), usedforsecurity=False).hexdigest()   # a stable fake commit id
            repo = self.repos[repo_id] = HubRepo(repo_id, commit)
        f = HubFile(path, Path(source) if source is not None else None, data, sha256,
                    lfs if lfs is not None else path.endswith(".gguf"), listed_only)
        repo.files[path] = f
        return f

    def file(self, repo_id: str, path: str) -> HubFile:
        return self.repos[repo_id].files[path]

    def cut(self, repo_id: str, path: str, at: int, outage: int = 0) -> HubFile:
        """Drop the connection once when a transfer of `path` reaches byte `at`, then answer the
        next `outage` byte requests with HTTP 503 (the network is gone for that long)."""
        f = self.file(repo_id, path)
        with self._lock:
            f.drop_at = [at]
            f.fail_after_cut = outage
        return f

    def heal(self) -> None:
        """Remove every pending fault: the network is back."""
        with self._lock:
            for r in self.repos.values():
                for f in r.files.values():
                    f.drop_at, f.stall_at, f.corrupt_at = [], None, set()
                    f.fail_next = f.fail_after_cut = 0

    def served(self, path: str) -> int:
        """File bytes sent for `path` so far."""
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
        if self._server is None:
            raise RuntimeError("the practice hub is not running: call start() first")
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, port: int = 0) -> PracticeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._stop.clear()
        try:
            self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as e:
            from qwenkit.errors import QwenkitError
            raise QwenkitError(f"the practice hub cannot listen on 127.0.0.1:{port}: {e.strerror}",
                               "choose another port (--port), or 0 for any free one") from e
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="practice-hub",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open (keep-alive) connection: the hub is gone."""
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

    def __enter__(self) -> PracticeHub:
        return self if self.running else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.endpoint if self.running else "stopped"
        return f"<PracticeHub {where}: {', '.join(self.repos) or 'no repos'}>"


_MODEL = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/([^/]+/[^/]+)/([0-9a-f]{40})/(.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    hub: PracticeHub
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
        self._json({"_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                    "author": repo.repo_id.split("/")[0], "sha": repo.commit, "private": False, "gated": False,
                    "disabled": False, "tags": ["gguf"], "library_name": "gguf",
                    "lastModified": "2026-11-01T00:00:00.000Z", "createdAt": "2026-10-01T00:00:00.000Z",
                    "siblings": siblings})

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
        entries += [{"type": "directory", "oid": hashlib.sha1(d.encode(), usedforsecurity=False).hexdigest(),
                     "size": 0, "path": d} for d in sorted(dirs)]
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
        if self.command == "GET" and f.listed_only and end - start + 1 > HEADER_READ_LIMIT:
            return self._error(403, "PracticeListedOnly",
                               f"practice hub: {f.path} is a sparse stand-in (its weights are a hole): only its "
                               f"header is served. Download {GET_REPO} {GET_QUANT} to practise a download")
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        for k, v in base.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        self._body(f, start, end + 1)

    def _body(self, f: HubFile, start: int, stop: int) -> None:
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
        t0 = time.monotonic()
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
            if hub.rate:  # pace the body: sleep until the bytes sent match the rate
                ahead = (pos - start) / hub.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        if pos < stop:
            self.wfile.flush()
            if stall is not None and pos == stall and cut is None:
                hub._stop.wait(hub.stall_seconds)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ------------------------------------------------------------------------------ practice repos
def practice_dir() -> Path:
    """Where the practice repos' files are written once: <qwenkit cache>/practice-hub/."""
    from qwenkit.models import cache_dir
    d = cache_dir() / "practice-hub"
    d.mkdir(parents=True, exist_ok=True)
    return d


def practice_files(folder: str | Path | None = None) -> dict[str, Path]:
    """The practice repos' files, written on first use (a few seconds; sparse files, about 25 MB
    on disk in all): {'Q4_K_M', 'Q8_0'} full-size synthetic Qwen3.5-35B-A3B headers and
    {'tiny'} the 6 MB random-weight model."""
    from qwenkit import synthetic
    d = Path(folder) if folder is not None else practice_dir()
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    v = synthetic.GENERATOR_VERSION
    for quant, mix in (("Q4_K_M", "q4_k_m"), ("Q8_0", "q8_0")):
        p = d / f"qwen35moe-full-{mix}-sparse-v{v}.gguf"
        if not p.is_file():
            synthetic.write_model(p, arch="qwen35moe", size="full", weights="sparse", mix=mix, progress=False)
        out[quant] = p
    out["tiny"] = synthetic.tiny_model("qwen35moe")
    return out


def populate(hub: PracticeHub, files: dict[str, Path] | None = None) -> PracticeHub:
    """Add the practice repos (LOOK_REPO, GET_REPO) to `hub`."""
    files = files or practice_files()
    hub.add_file(LOOK_REPO, "README.md", data=(
        b"# Qwen3.5-35B-A3B GGUF (qwenkit practice copy)\n\nFull-size synthetic headers with the real "
        b"model's shapes; the weights are a hole. Only header reads are served.\n"))
    for quant, name in LOOK_FILES.items():
        # a placeholder checksum: hashing a 20-37 GB sparse file would take minutes, and these
        # files are never downloaded (listed_only refuses it)
        hub.add_file(LOOK_REPO, name, source=files[quant], listed_only=True,
                     sha256=hashlib.sha256(f"practice {name}".encode()).hexdigest())
    hub.add_file(LOOK_REPO, "mmproj-F16.gguf", data=b"GGUF" + bytes(60))   # left out of the quant table
    hub.add_file(GET_REPO, "README.md", data=b"# Qwen3.5 tiny (qwenkit practice copy): random weights, 6 MB\n")
    hub.add_file(GET_REPO, GET_FILE, source=files["tiny"])
    return hub


def start(port: int = 0, *, rate: float | None = PRACTICE_RATE, folder: str | Path | None = None) -> PracticeHub:
    """A started practice hub with the practice repos on 127.0.0.1 (`port` 0: a free one).
    `rate`: bytes/s for downloads (default 16 MiB/s, so a progress bar is seen moving)."""
    return populate(PracticeHub(stall_seconds=10, rate=rate), practice_files(folder)).start(port)


# ------------------------------------------------------------------------------ real or practice
@dataclass
class HubChoice:
    """Which hub the download steps use, and why. `repo`/`quant` are what to look at,
    `download_repo`/`download_quant` what to download (the practice hub's tiny model there)."""
    endpoint: str
    repo: str
    quant: str
    download_repo: str
    download_quant: str
    practice: PracticeHub | None
    reason: str
    probe_seconds: float
    models_dir: str | None
    revision: str | None = None
    offline: bool = False         # HF_HUB_OFFLINE is set: only what is on disk is used

    @property
    def is_practice(self) -> bool:
        return self.practice is not None

    def stage_interruption(self, at: float = 0.4, outage: int = 5) -> int:
        """Practice hub only: remove an earlier practice copy of the download, then make the hub
        drop the connection when the transfer reaches `at` of the file and answer the next
        `outage` requests with HTTP 503 (the network is away for a while). Returns the byte
        offset of the cut."""
        import contextlib

        from qwenkit import hub
        from qwenkit.errors import QwenkitError
        if self.practice is None:
            raise QwenkitError("an interruption can only be staged on the practice hub",
                               "set HUB = 'practice' (on the real hub, stop the download cell and run it again)")
        with contextlib.suppress(QwenkitError):   # nothing to remove on a first run
            hub.remove_model(f"{self.download_repo}/{self.download_quant}", self.models_dir)
        size = self.practice.file(GET_REPO, GET_FILE).size
        cut = int(size * at)
        self.practice.cut(GET_REPO, GET_FILE, cut, outage)
        self.practice.reset_counters()
        return cut

    def network_back(self) -> None:
        """Practice hub only: remove every staged fault and zero the counters, so what follows
        shows only the requests of the next transfer."""
        if self.practice is not None:
            self.practice.heal()
            self.practice.reset_counters()

    def close(self) -> None:
        """Stop the practice hub (nothing to do for the real hub)."""
        if self.practice is not None:
            self.practice.stop()

    def __str__(self) -> str:
        if self.offline:
            return self.reason
        if self.practice is None:
            return f"using {self.endpoint} ({self.reason}); looking at {self.repo}"
        return (f"{self.reason}\nusing the practice hub at {self.endpoint}: {self.repo} (full-size headers, "
                f"look only) and {self.download_repo} (a 6 MB model that really downloads)")


def connect(mode: str = "auto", *, endpoint: str | None = None, repo: str | None = None,
            quant: str | None = None, revision: str | None = None, timeout: float = 3.0,
            models_dir: str | None = None) -> HubChoice:
    """The hub for the download steps. mode "auto": the real hub when it answers within
    `timeout` s, else the practice hub; "real": the real hub only (a clear error when it does
    not answer); "practice": the practice hub without asking the network. In practice mode,
    downloads go to <practice folder>/models unless `models_dir` is given, so practice files
    never mix with real models."""
    from qwenkit import hub
    from qwenkit.errors import QwenkitError
    mode = (mode or "auto").lower()
    if mode not in ("auto", "real", "practice"):
        raise QwenkitError(f"hub mode {mode!r} is not one of auto, real, practice",
                           "HUB = 'auto' (the real hub when reachable), 'real' or 'practice'")
    repo, quant = repo or hub.DEFAULT_REPO, quant or hub.DEFAULT_QUANT
    seconds = 0.0
    if hub.is_offline() and mode != "real":
        # huggingface_hub refuses every request in offline mode, to 127.0.0.1 as well: the
        # practice hub cannot help, so say so and let the steps answer from the disk
        return HubChoice(hub.api.endpoint_url(endpoint), repo, quant, repo, quant, None,
                         "HF_HUB_OFFLINE is set: huggingface_hub sends no request at all, not even to the "
                         "practice hub on 127.0.0.1, so the steps below use only what is on disk. To practise "
                         "the download, unset HF_HUB_OFFLINE and restart the kernel", 0.0, models_dir, revision,
                         offline=True)
    if mode != "practice":
        probe = hub.probe(endpoint, timeout=timeout)
        seconds = probe.seconds
        if probe.ok:
            return HubChoice(probe.endpoint, repo, quant, repo, quant, None,
                             f"answered in {probe.seconds:.2f} s", probe.seconds, models_dir, revision)
        if mode == "real":
            raise hub.HubUnreachable(probe.problem or f"cannot reach {probe.endpoint}", probe.fix)
        reason = f"{probe.problem} (asked for {probe.seconds:.2f} s)"
    else:
        reason = "HUB = 'practice': the real hub was not asked"
    ph = start()
    md = models_dir or str(practice_dir() / "models")
    # the practice repos have one revision (main): a REVISION meant for the real hub is not used
    return HubChoice(ph.endpoint, LOOK_REPO, quant if quant in LOOK_FILES else GET_QUANT, GET_REPO,
                     GET_QUANT, ph, reason, seconds, md, None)


# ------------------------------------------------------------------------------ CLI
def _serve(args) -> int:
    ph = start(args.port, rate=None if args.rate <= 0 else args.rate * MiB)
    print(f"practice hub on {ph.endpoint}")
    for r in ph.repos.values():
        for f in r.files.values():
            note = " (header reads only)" if f.listed_only else ""
            print(f"  {r.repo_id}/{f.path}  {format_bytes(f.size, 'GiB')}{note}")
    print(f"\ntry:  HF_ENDPOINT={ph.endpoint} python -m qwenkit quants {LOOK_REPO} --vram 16 --header Q4_K_M")
    print(f"      HF_ENDPOINT={ph.endpoint} QWENKIT_MODELS={practice_dir() / 'models'} "
          f"python -m qwenkit download {GET_REPO} {GET_QUANT}")
    print("Ctrl-C stops it.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ph.stop()
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("practice-hub", help="serve practice GGUF repos on 127.0.0.1 (no network needed)",
                       description="A local server that speaks the Hugging Face hub's protocol with "
                                   f"synthetic repos: {LOOK_REPO} (full-size headers) and {GET_REPO} "
                                   "(a 6 MB model). Point HF_ENDPOINT (or --endpoint) at it.")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--rate", type=float, default=PRACTICE_RATE / MiB,
                   help="download speed in MiB/s (0: unlimited; default %(default).0f)")
    p.set_defaults(func=_serve)
