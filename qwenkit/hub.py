"""Model files from the Hugging Face hub: which quants exist and fit, a safe download, local models.

* `list_quants(repo)` lists a repo's GGUF quants (split files `-0000N-of-0000M` grouped as
  one quant) with sizes and, for a VRAM/RAM budget, a fit verdict (`fit_verdict`, the one
  function the memory planner replaces).
* `read_remote_info(repo, quant)` reads a quant's GGUF header(s) through HTTP Range requests
  (a few MB of a 20 GB file) and returns `gguf_info.ModelInfo`.
* `download(repo, quant)` fetches a quant at a pinned commit: free disk space checked first,
  a progress bar, a partial file kept under `<repo>/.incomplete/` that later runs resume
  (HTTP Range from the cut), a stall watchdog (no byte for `stall_timeout` s) with retries,
  and SHA-256 verification against the hub's LFS checksum before the file gets its real
  name. huggingface_hub's own `hf_hub_download` deletes a failed partial file and only
  checks the size, so the transfer itself is ours; listing, URLs, headers, auth and errors
  are huggingface_hub's.
* `local_models()` / `remove_model()` / `verify_model()`: what is on disk, its quant, size
  and verification state. With `HF_HUB_OFFLINE=1`, `download` and `list_quants` answer from
  the local files (the kit's folder, then huggingface_hub's cache) without any network call.

Files live in `models_dir()` (`$QWENKIT_MODELS`, default `<qwenkit cache>/models`), one
folder per repo (`owner--name/`, the repo's own paths inside), with a manifest
`.qwenkit-manifest.json` recording each verified file's SHA-256, size, commit and mtime.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qwenkit.errors import DownloadError, GGUFError, QwenkitError
from qwenkit.gguf_info import (
    ModelInfo,
    check_split_set,
    model_info,
    parse_gguf,
    read_gguf,
    read_model_info,
    split_parts,
)

DEFAULT_REPO = "unsloth/Qwen3.5-35B-A3B-GGUF"   # the Qwen3.5-35B-A3B GGUF repo the recipe uses
DEFAULT_QUANT = "Q4_K_M"
GiB = 1 << 30
GB = 1_000_000_000

# fit_verdict from file size: what a GPU needs beyond the weights (CUDA context, compute
# buffers, an 8K KV cache) and what the OS and a notebook keep of system RAM.
GPU_RESERVE = int(1.5 * GiB)
RAM_RESERVE = 4 * GiB
DISK_MARGIN = 256 << 20          # free space kept beyond the download

MANIFEST = ".qwenkit-manifest.json"
INCOMPLETE = ".incomplete"

STATE_VERIFIED = "verified"
STATE_MODIFIED = "modified since verification"
STATE_UNVERIFIED = "unverified"
STATE_INCOMPLETE = "incomplete"
STATE_HF_CACHE = "hf cache (size-checked only)"


# ------------------------------------------------------------------------------ names
_QUANT_RE = re.compile(
    r"(?:^|[-_.])((?:UD-)?(?:I?Q\d(?:_[0-9A-Z]+)*|TQ\d_\d|BF16|F16|F32|FP16|FP32|MXFP4(?:_MOE)?|NVFP4))$",
    re.IGNORECASE)


def quant_name(filename: str) -> str | None:
    """Quant of a GGUF file name: `Qwen3.5-35B-A3B-UD-Q4_K_XL.gguf` -> `UD-Q4_K_XL`,
    `Q8_0/Qwen3.5-35B-A3B-Q8_0-00001-of-00002.gguf` -> `Q8_0`; None if the name shows none."""
    name = Path(filename).name
    sp = split_parts(name)
    stem = sp[0] if sp else (name[:-5] if name.lower().endswith(".gguf") else name)
    m = _QUANT_RE.search(stem)
    if m:
        return m.group(1).upper().replace("UD-", "UD-")
    parent = Path(filename).parent.name
    if parent and _QUANT_RE.search("-" + parent):
        return parent.upper()
    return None


def is_model_gguf(filename: str) -> bool:
    """A language-model GGUF (not a vision projector `mmproj-*` or an imatrix)."""
    n = Path(filename).name.lower()
    return n.endswith(".gguf") and not n.startswith(("mmproj", "imatrix"))


def _repo_dirname(repo: str) -> str:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise DownloadError(f"{repo!r} is not a hub repo id", "use owner/name, e.g. " + DEFAULT_REPO)
    return repo.replace("/", "--")


def _human(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / (1 << 20):.1f} MiB"


# ------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class RemoteFile:
    path: str                     # path in the repo
    size: int
    sha256: str | None            # LFS SHA-256 (None for files not in LFS)
    blob_id: str | None = None    # git blob id (sha1 of "blob <size>\0" + content)


@dataclass(frozen=True)
class Verdict:
    """Does a model fit a VRAM + RAM budget? `kind` is "gpu", "offload" or "no"."""
    kind: str
    text: str
    need_bytes: int
    vram_bytes: int
    ram_bytes: int | None
    n_cpu_moe: int | None = None  # expert layers to keep in RAM (an estimate until the planner)
    source: str = "file size"

    def __str__(self) -> str:
        return self.text

    @property
    def fits(self) -> bool:
        return self.kind != "no"


@dataclass
class Quant:
    name: str
    files: tuple[RemoteFile, ...]
    repo: str
    revision: str | None = None   # the commit the listing came from
    verdict: Verdict | None = None
    info: ModelInfo | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def n_parts(self) -> int:
        return len(self.files)

    @property
    def first(self) -> str:
        return self.files[0].path


class QuantList(list):
    """A list of Quant that shows itself as a table in a notebook."""

    def table(self) -> str:
        rows = [("quant", "size", "files", "fit")]
        for q in self:
            rows.append((q.name, _human(q.size), str(q.n_parts), q.verdict.text if q.verdict else ""))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]}".rstrip() for r in rows)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:  # the text a console (or a notebook's text/plain) shows: the table
        return self.table()

    def _repr_markdown_(self) -> str:
        lines = ["| quant | size | files | fit |", "| --- | ---: | ---: | --- |"]
        for q in self:
            lines.append(f"| {q.name} | {_human(q.size)} | {q.n_parts} | {q.verdict.text if q.verdict else ''} |")
        return "\n".join(lines)

    def find(self, name: str) -> Quant | None:
        """The quant called `name` (any case), or None."""
        return next((q for q in self if q.name.lower() == name.lower()), None)

    def get(self, name: str) -> Quant:
        for q in self:
            if q.name.lower() == name.lower():
                return q
        raise DownloadError(f"no quant {name!r}", "choose one of: " + ", ".join(q.name for q in self))


@dataclass
class LocalModel:
    """A model on disk: one GGUF or all parts of a split one."""
    name: str                     # quant name (or file stem when the name shows none)
    path: Path                    # the file llama.cpp loads (the first part)
    files: list[Path]
    size: int
    state: str                    # verified / modified since verification / unverified / incomplete / hf cache
    repo: str | None = None
    revision: str | None = None
    sha256: list[str | None] = field(default_factory=list)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return f"{self.name}  {_human(self.size)}  {self.state}  {self.path}"


# ------------------------------------------------------------------------------ fit
def fit_verdict(info_or_size: ModelInfo | int, vram_bytes: int, ram_bytes: int | None = None,
                n_ctx: int = 8192, type_k: str = "f16", type_v: str = "f16") -> Verdict:
    """Does a model fit `vram_bytes` of GPU memory, with `ram_bytes` of system RAM for the
    MoE experts llama.cpp can keep there (--n-cpu-moe)?

    Given a ModelInfo (a local or remote header), the memory planner decides
    (`qwenkit.plan.fit_report`: weights per layer, KV only where the model has it, recurrent
    state, compute buffers, CUDA context) at `n_ctx` with the given KV types. Given only a
    file size, an estimate: the size plus GPU_RESERVE."""
    vram_txt = f"{vram_bytes / GiB:.0f} GB VRAM" if vram_bytes % GiB == 0 else f"{vram_bytes / GiB:.1f} GiB VRAM"
    if isinstance(info_or_size, ModelInfo):
        return _planned_verdict(info_or_size, vram_bytes, ram_bytes, n_ctx, type_k, type_v, vram_txt)
    need = int(info_or_size) + GPU_RESERVE
    if need <= vram_bytes:
        return Verdict("gpu", f"fits in {vram_txt} ({_human(vram_bytes - need)} to spare; estimate from "
                       "the file size)", need, vram_bytes, ram_bytes, 0, "file size")
    ram_free = max((ram_bytes or 0) - RAM_RESERVE, 0)
    if need - vram_bytes <= ram_free:
        return Verdict("offload", f"needs about {_human(need)}: may fit {vram_txt} with "
                       f"{_human(need - vram_bytes)} of MoE experts in system RAM (estimate from the "
                       "file size; read the header for a plan)", need, vram_bytes, ram_bytes, None, "file size")
    ram_txt = f" + {ram_bytes / GiB:.0f} GB RAM" if ram_bytes else ""
    return Verdict("no", f"does not fit: needs about {_human(need)}, have {vram_txt}{ram_txt}", need,
                   vram_bytes, ram_bytes, None, "file size")


def _planned_verdict(info: ModelInfo, vram_bytes: int, ram_bytes: int | None, n_ctx: int,
                     type_k: str, type_v: str, vram_txt: str) -> Verdict:
    from qwenkit import plan as planner

    n_ctx = min(n_ctx, info.context_length or n_ctx)
    ram_budget = max(ram_bytes - RAM_RESERVE, 0) if ram_bytes else None
    r = planner.fit_report(info, vram_bytes, n_ctx, type_k, type_v, ram_budget=ram_budget)
    p, cfg = r.plan, r.cfg
    src = "memory plan"
    ctx = f"at n_ctx {n_ctx} KV {type_k}/{type_v}"
    if not r.fits:
        return Verdict("no", f"does not fit {ctx}: {r.reason}", p.gpu_total, vram_bytes, ram_bytes, None, src)
    if cfg.n_cpu_moe == 0 and cfg.n_gpu_layers < 0:
        return Verdict("gpu", f"fits in {vram_txt} {ctx}: {_human(p.gpu_total)} planned, "
                       f"{_human(vram_bytes - p.gpu_total)} to spare", p.gpu_total, vram_bytes, ram_bytes, 0, src)
    where = (f"--n-cpu-moe {cfg.n_cpu_moe}" if cfg.n_gpu_layers < 0
             else f"--n-cpu-moe {cfg.n_cpu_moe}, {cfg.n_gpu_layers} layers on the GPU")
    return Verdict("offload", f"fits {vram_txt} {ctx} with {where}: {_human(p.gpu_total)} on the GPU, "
                   f"{_human(p.cpu_total)} in system RAM (slower decode)", p.gpu_total, vram_bytes,
                   ram_bytes, cfg.n_cpu_moe, src)


def system_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


# ------------------------------------------------------------------------------ hub access
def _endpoint(endpoint: str | None) -> str:
    from huggingface_hub import constants
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """HF_HUB_OFFLINE=1 (read now, not only when huggingface_hub was imported)."""
    from huggingface_hub import constants
    v = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or v.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hf_headers(token) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    import qwenkit
    h = build_hf_headers(token=token, library_name="qwenkit", library_version=qwenkit.__version__)
    h["Accept-Encoding"] = "identity"
    return h


def _http():
    """The HTTP library under huggingface_hub's session: httpx2 (hub 2.x) or httpx (hub 1.x)."""
    try:
        import httpx2
        return httpx2
    except ImportError:  # pragma: no cover - huggingface_hub 1.x
        import httpx
        return httpx


def _hub_error(e: Exception, repo: str, endpoint: str, what: str) -> QwenkitError:
    from huggingface_hub import errors as hfe
    httpx2 = _http()
    if isinstance(e, hfe.RevisionNotFoundError):
        return DownloadError(f"{repo}: revision not found on {endpoint} while {what}",
                             "use a branch name, a tag or a full commit id that exists")
    if isinstance(e, (hfe.RepositoryNotFoundError, hfe.GatedRepoError)):
        return DownloadError(f"{repo}: repo not found on {endpoint} (or private/gated) while {what}",
                             "check the name; for a gated or private repo log in first: hf auth login")
    if isinstance(e, hfe.RemoteEntryNotFoundError):
        return DownloadError(f"{repo}: file not found on {endpoint} while {what}", "list the quants: python -m qwenkit quants " + repo)
    if isinstance(e, hfe.OfflineModeIsEnabled):
        return DownloadError(f"HF_HUB_OFFLINE is set: no network while {what}",
                             "unset HF_HUB_OFFLINE, or use the models already downloaded (python -m qwenkit models)")
    if isinstance(e, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError)):
        return HubUnreachable(f"cannot reach {endpoint} while {what}: {e}",
                             "check the network (or HF_ENDPOINT); offline, set HF_HUB_OFFLINE=1 to use downloaded models, "
                             "or practise on the local practice hub: python -m qwenkit practice-hub")
    if isinstance(e, hfe.HfHubHTTPError):
        return DownloadError(f"{repo}: the hub answered an error while {what}: {e}".splitlines()[0],
                             "retry later; if it persists check the repo page on the hub")
    return DownloadError(f"{repo}: {what} failed: {e!r}", "retry; if it persists report it with this message")


@dataclass(frozen=True)
class Probe:
    """Did the hub answer? `seconds` is how long the question took (at most the timeout)."""
    ok: bool
    endpoint: str
    seconds: float
    problem: str | None = None
    fix: str | None = None


def probe(endpoint: str | None = None, timeout: float = 3.0, repo: str = DEFAULT_REPO) -> Probe:
    """Ask the hub one small question (the repo's model info) and give up after `timeout` s.

    Any HTTP answer counts as reachable (a 401 or 404 still comes from the hub). The request
    runs in a thread so that a name lookup that hangs (no network, a captive portal) cannot
    hold the caller longer than `timeout`; HF_HUB_OFFLINE=1 answers at once without a network call."""
    import threading
    ep = _endpoint(endpoint)
    fix = "check the network (or HF_ENDPOINT); offline, use the practice hub: python -m qwenkit practice-hub"
    if is_offline():
        return Probe(False, ep, 0.0, "HF_HUB_OFFLINE is set: the hub was not asked", fix)
    result: dict = {}

    def ask() -> None:
        from huggingface_hub import get_session
        try:
            r = get_session().get(f"{ep}/api/models/{repo}", timeout=timeout,
                                  headers={"Accept-Encoding": "identity"})
            result["status"] = r.status_code
        except Exception as e:  # noqa: BLE001 - every failure means "not reachable"; say which
            result["error"] = e

    t0 = time.monotonic()
    th = threading.Thread(target=ask, name="qwenkit-hub-probe", daemon=True)
    th.start()
    th.join(timeout)
    took = time.monotonic() - t0
    if "status" in result:
        return Probe(True, ep, took)
    if "error" in result:
        e = result["error"]
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return Probe(False, ep, took, f"cannot reach {ep}: {type(e).__name__}: {why}", fix)
    return Probe(False, ep, took, f"cannot reach {ep}: no answer within {timeout:g} s", fix)


def repo_files(repo: str = DEFAULT_REPO, *, revision: str | None = None, endpoint: str | None = None,
               token: str | bool | None = None) -> tuple[str, list[RemoteFile]]:
    """(commit, files) of a repo at a revision, with LFS sizes and SHA-256 (one API call)."""
    from huggingface_hub import HfApi
    ep = _endpoint(endpoint)
    if is_offline():
        raise DownloadError(f"HF_HUB_OFFLINE is set: cannot list {repo} on the hub",
                            "unset HF_HUB_OFFLINE, or use local models: python -m qwenkit models")
    api = HfApi(endpoint=ep, token=token, library_name="qwenkit")
    try:
        mi = api.model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:
        raise _hub_error(e, repo, ep, "listing the repo files") from e
    files = []
    for s in mi.siblings or []:
        lfs = s.lfs
        size = lfs.size if lfs is not None else (s.size or 0)
        files.append(RemoteFile(s.rfilename, int(size), lfs.sha256 if lfs is not None else None, s.blob_id))
    if not mi.sha:
        raise DownloadError(f"{ep} returned no commit id for {repo}", "is HF_ENDPOINT a hub?")
    return mi.sha, files


def group_quants(files: Iterable[RemoteFile], repo: str, revision: str | None = None) -> QuantList:
    """Group GGUF files into quants: split parts of one model become one quant."""
    groups: dict[tuple[str, str], list[RemoteFile]] = {}
    for f in files:
        if not is_model_gguf(f.path):
            continue
        sp = split_parts(f.path)
        key = (str(Path(f.path).parent), sp[0] if sp else Path(f.path).name[:-5])
        groups.setdefault(key, []).append(f)
    out = QuantList()
    names: dict[str, int] = {}
    for (folder, stem), fs in groups.items():
        fs.sort(key=lambda f: (split_parts(f.path) or ("", 0, 0))[1])
        name = quant_name(fs[0].path) or stem
        names[name] = names.get(name, 0) + 1
        out.append(Quant(name, tuple(fs), repo, revision))
    for q in out:  # two models in one repo with the same quant: tell them apart by file name
        if names[q.name] > 1:
            sp = split_parts(q.first)
            q.name = sp[0].rsplit("/", 1)[-1] if sp else Path(q.first).name[:-5]
    out.sort(key=lambda q: q.size)
    return out


def _find_quant(quants: Sequence[Quant], quant: str, repo: str) -> Quant:
    want = quant.strip().lower()
    for q in quants:
        if q.name.lower() == want or q.first.lower() == want or Path(q.first).name.lower() == want:
            return q
    raise DownloadError(f"{repo} has no quant {quant!r}",
                        "choose one of: " + (", ".join(q.name for q in quants) or "(no GGUF files in this repo)"))


def list_quants(repo: str = DEFAULT_REPO, *, revision: str | None = None, vram_gb: float | None = None,
                ram_gb: float | None = None, headers: bool | Sequence[str] = False,
                endpoint: str | None = None, token: str | bool | None = None) -> QuantList:
    """The repo's GGUF quants, smallest first, each with a fit verdict when `vram_gb` is given
    (GB as a card is sold: 16 means 16 GiB). `ram_gb` None = this machine's RAM.
    `headers=True` (or a list of quant names) also reads those quants' headers over the network
    (a few MB each) so the verdict counts their expert bytes. Offline: the local quants."""
    if is_offline():
        return _local_quant_list(repo, vram_gb, ram_gb)
    commit, files = repo_files(repo, revision=revision, endpoint=endpoint, token=token)
    quants = group_quants(files, repo, commit)
    want = {q.name.lower() for q in quants} if headers is True else {h.lower() for h in (headers or [])}
    for q in quants:
        if q.name.lower() in want:
            q.info = read_remote_info(repo, q, revision=commit, endpoint=endpoint, token=token)
    _add_verdicts(quants, vram_gb, ram_gb)
    return quants


def _add_verdicts(quants, vram_gb, ram_gb) -> None:
    if vram_gb is None:
        return
    ram = int(ram_gb * GiB) if ram_gb is not None else system_ram_bytes()
    for q in quants:
        q.verdict = fit_verdict(q.info if q.info is not None else q.size, int(vram_gb * GiB), ram)


# ------------------------------------------------------------------------------ remote header
class RangeReader:
    """`read(offset, n)` over HTTP Range requests on huggingface_hub's session; counts bytes."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float = 30.0):
        self.url, self.headers, self.timeout = url, headers, timeout
        self.bytes_fetched = 0
        self.requests = 0

    def read(self, offset: int, n: int) -> bytes:
        from huggingface_hub import get_session
        from huggingface_hub.utils import hf_raise_for_status
        if n <= 0:
            return b""
        self.requests += 1
        h = dict(self.headers, Range=f"bytes={offset}-{offset + n - 1}")
        with get_session().stream("GET", self.url, headers=h, timeout=self.timeout) as r:
            if r.status_code == 416:
                return b""
            hf_raise_for_status(r)
            if r.status_code != 206 and offset > 0:
                raise DownloadError(f"{self.url}: the server ignored an HTTP Range request (status {r.status_code})",
                                    "use a hub or mirror that supports Range requests (huggingface.co does)")
            chunks, got = [], 0
            for chunk in r.iter_bytes(1 << 20):
                chunks.append(chunk)
                got += len(chunk)
                if got >= n:  # a server that ignored Range at offset 0: stop after n bytes
                    break
        data = b"".join(chunks)[:n]
        self.bytes_fetched += len(data)
        return data


def read_remote_info(repo: str = DEFAULT_REPO, quant: str | Quant = DEFAULT_QUANT, *,
                     revision: str | None = None, endpoint: str | None = None,
                     token: str | bool | None = None) -> ModelInfo:
    """ModelInfo of a quant on the hub from its header bytes only (every part of a split quant).
    `info.header_bytes_read` says how many bytes it fetched."""
    from huggingface_hub import hf_hub_url
    ep = _endpoint(endpoint)
    if isinstance(quant, Quant):
        q = quant
        commit = revision or q.revision
    else:
        commit, files = repo_files(repo, revision=revision, endpoint=ep, token=token)
        q = _find_quant(group_quants(files, repo, commit), quant, repo)
    headers = _hf_headers(token)
    parts = []
    for i, f in enumerate(q.files):
        url = hf_hub_url(repo, f.path, revision=commit, endpoint=ep)
        reader = RangeReader(url, headers)
        try:
            parts.append(parse_gguf(reader.read, f.size, f"{repo}/{f.path}", part=i))
        except GGUFError:
            raise
        except QwenkitError:
            raise
        except Exception as e:
            raise _hub_error(e, repo, ep, f"reading the header of {f.path}") from e
    check_split_set(parts)
    return model_info(parts)


# ------------------------------------------------------------------------------ local files
def models_dir(path: str | os.PathLike | None = None) -> Path:
    """Where downloaded models live: `path`, else $QWENKIT_MODELS, else <qwenkit cache>/models."""
    if path is None:
        env = os.environ.get("QWENKIT_MODELS")
        if env:
            path = Path(env).expanduser()
        else:
            from qwenkit.models import cache_dir
            path = cache_dir() / "models"
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def free_bytes(path: Path) -> int:
    """Free disk space at `path` (its nearest existing parent)."""
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


class _Manifest:
    def __init__(self, repo_dir: Path):
        self.path = repo_dir / MANIFEST
        try:
            self.data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self.data = {}
        self.data.setdefault("files", {})

    @property
    def files(self) -> dict[str, dict]:
        return self.data["files"]

    def save(self) -> None:
        tmp = self.path.with_name(f"{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def state(self, rel: str, path: Path) -> str:
        e = self.files.get(rel)
        if e is None:
            return STATE_UNVERIFIED
        try:
            st = path.stat()
        except FileNotFoundError:
            return STATE_INCOMPLETE
        if st.st_size != e.get("size") or st.st_mtime_ns != e.get("mtime_ns"):
            return STATE_MODIFIED
        return STATE_VERIFIED

    def record(self, rel: str, path: Path, sha256: str, revision: str | None, repo: str | None) -> None:
        st = path.stat()
        self.files[rel] = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "revision": revision, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if repo:
            self.data["repo"] = repo
        self.save()


def _sha256_file(path: Path, bar=None, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                return h
            h.update(b)
            if bar is not None:
                bar.update(len(b))


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, dynamic_ncols=True)


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError:
            raise DownloadError(f"another download into {path.parent} is running",
                                "wait for it to finish (or stop it); this one would write the same files") from None
        yield
    finally:
        f.close()


# ------------------------------------------------------------------------------ download
def download(repo: str = DEFAULT_REPO, quant: str = DEFAULT_QUANT, *, revision: str | None = None,
             dest: str | os.PathLike | None = None, endpoint: str | None = None,
             token: str | bool | None = None, progress: bool = True, stall_timeout: float = 60.0,
             retries: int = 5, retry_wait: float = 2.0) -> LocalModel:
    """Download every file of a quant, verified; returns the LocalModel (its `.path` is what
    llama.cpp loads). Safe to run again: verified files are kept, partial ones resume.

    revision: branch, tag or commit; it is resolved to a commit once and every file comes
      from that commit (a repo updated mid-download cannot mix versions).
    stall_timeout: seconds without a byte before the watchdog aborts and retries the transfer.
    retries: attempts in a row without progress before giving up (the partial file is kept).
    Offline (HF_HUB_OFFLINE=1): returns the local copy (the kit's folder or huggingface_hub's
    cache) without touching the network, or raises DownloadError."""
    root = models_dir(dest)
    if is_offline():
        found = find_local(repo, quant, dest=root, revision=revision)
        if found is None:
            raise DownloadError(f"HF_HUB_OFFLINE is set and {repo} {quant} is not downloaded "
                                f"(looked in {root} and the huggingface_hub cache)",
                                "download it once with the network on (unset HF_HUB_OFFLINE)")
        return found
    ep = _endpoint(endpoint)
    try:
        commit, files = repo_files(repo, revision=revision, endpoint=ep, token=token)
    except HubUnreachable as e:  # like hf_hub_download: a verified local copy still answers
        found = find_local(repo, quant, dest=root, revision=revision)
        if found is None:
            raise
        import warnings
        warnings.warn(f"{e.problem}; using the local copy {found.path} ({found.state})", stacklevel=2)
        return found
    q = _find_quant(group_quants(files, repo, commit), quant, repo)
    repo_dir = root / _repo_dirname(repo)
    repo_dir.mkdir(parents=True, exist_ok=True)
    with _lock(repo_dir / ".qwenkit.lock"):
        return _download_locked(repo, q, commit, repo_dir, ep, token, progress, stall_timeout, retries,
                                retry_wait)


class HubUnreachable(DownloadError):
    """The hub could not be reached at all (no network, wrong HF_ENDPOINT)."""


class _RetryableStatus(Exception):
    """A 408/429/5xx answer: retried like a dropped connection."""


def _part_paths(repo_dir: Path, rel: str) -> tuple[Path, Path]:
    part = repo_dir / INCOMPLETE / (rel + ".part")
    return part, part.with_name(part.name[:-5] + ".json")


def _download_locked(repo, q: Quant, commit, repo_dir: Path, ep, token, progress, stall_timeout, retries,
                     retry_wait) -> LocalModel:
    manifest = _Manifest(repo_dir)
    todo: list[RemoteFile] = []
    for f in q.files:
        final = repo_dir / f.path
        st = manifest.state(f.path, final)
        known = manifest.files.get(f.path, {})
        if st == STATE_VERIFIED and (f.sha256 is None or known.get("sha256") == f.sha256):
            continue
        if final.exists() and st == STATE_VERIFIED:
            raise DownloadError(
                f"{final} is a verified copy of another version ({known.get('revision', '?')[:10]}); "
                f"{repo}@{commit[:10]} has SHA-256 {f.sha256}",
                f"keep it with --revision {known.get('revision')}, or remove it "
                f"(python -m qwenkit models --remove {final.name}) and download the new version")
        if final.exists():
            raise DownloadError(
                f"{final} exists but is not a verified copy of {repo}@{commit[:10]} ({st})",
                f"check it: python -m qwenkit models --verify {final.name}; or remove it: "
                f"python -m qwenkit models --remove {final.name}; then download again")
        todo.append(f)
    have = {}
    for f in todo:
        part, meta = _part_paths(repo_dir, f.path)
        have[f.path] = _usable_part(part, meta, f)
    need = sum(f.size - have[f.path] for f in todo)
    if todo:
        free = free_bytes(repo_dir)
        if free < need + DISK_MARGIN:
            raise DownloadError(
                f"not enough disk space for {repo} {q.name}: it needs {_human(need)} more "
                f"(+{_human(DISK_MARGIN)} margin) at {repo_dir}, {_human(free)} is free",
                "free some space (python -m qwenkit models --remove NAME), or download elsewhere "
                "with --dir PATH / QWENKIT_MODELS=PATH")
    total = sum(f.size for f in todo)
    bar = _progress(total, sum(have.values()), f"{q.name}", progress and bool(todo))
    try:
        for f in todo:
            _fetch(repo, f, commit, repo_dir, ep, token, bar, stall_timeout, retries, retry_wait, manifest)
    finally:
        bar.close()
    return _local_model(repo_dir, q.name, [repo_dir / f.path for f in q.files], manifest, repo)


def _usable_part(part: Path, meta: Path, f: RemoteFile) -> int:
    """Bytes of a partial download that may be resumed (0 when it belongs to another version)."""
    try:
        m = json.loads(meta.read_text())
        size = part.stat().st_size
    except (FileNotFoundError, ValueError):
        part.unlink(missing_ok=True)
        return 0
    if m.get("sha256") != f.sha256 or m.get("size") != f.size or size > f.size:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return 0
    return size


def _fetch(repo, f: RemoteFile, commit, repo_dir: Path, ep, token, bar, stall_timeout, retries, retry_wait,
           manifest: _Manifest) -> None:
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import hf_raise_for_status
    httpx2 = _http()

    part, meta = _part_paths(repo_dir, f.path)
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = _usable_part(part, meta, f)
    meta.write_text(json.dumps({"repo": repo, "path": f.path, "revision": commit, "sha256": f.sha256,
                                "size": f.size}))
    h = hashlib.sha256()
    g = hashlib.sha1(f"blob {f.size}\0".encode()) if f.sha256 is None and f.blob_id else None
    if offset:
        bar.set_description(f"checking {offset / GiB:.2f} GiB already downloaded of {Path(f.path).name}")
        h = _sha256_file(part, h=h)
        if g is not None:
            with open(part, "rb") as fh:
                for b in iter(lambda: fh.read(8 << 20), b""):
                    g.update(b)
    bar.set_description(Path(f.path).name)
    url = hf_hub_url(repo, f.path, revision=commit, endpoint=ep)
    headers = _hf_headers(token)
    timeout = httpx2.Timeout(stall_timeout, connect=min(stall_timeout, 30.0))
    failures = 0
    last_error = ""
    with open(part, "ab") as out:
        while offset < f.size:
            start = offset
            try:
                hdrs = dict(headers, Range=f"bytes={offset}-") if offset else headers
                with get_session().stream("GET", url, headers=hdrs, timeout=timeout) as r:
                    if r.status_code in (408, 429) or r.status_code >= 500:
                        raise _RetryableStatus(f"HTTP {r.status_code}")
                    hf_raise_for_status(r)
                    if offset and r.status_code == 200:  # Range ignored: start over
                        out.truncate(0)
                        out.seek(0)
                        bar.update(-offset)
                        offset = start = 0
                        h = hashlib.sha256()
                        g = hashlib.sha1(f"blob {f.size}\0".encode()) if g is not None else None
                    elif offset:
                        cr = r.headers.get("Content-Range", "")
                        if not cr.startswith(f"bytes {offset}-"):
                            raise DownloadError(f"{url}: asked for bytes from {offset}, got {cr!r}",
                                                "retry; the server or a proxy mangles Range requests")
                    for chunk in r.iter_bytes():  # as received: a cut loses nothing already sent
                        if offset + len(chunk) > f.size:
                            raise DownloadError(f"{url}: the server sent more than the {f.size:,} bytes the hub "
                                                "lists for this file", "retry later; the repo may be changing")
                        out.write(chunk)
                        h.update(chunk)
                        if g is not None:
                            g.update(chunk)
                        offset += len(chunk)
                        bar.update(len(chunk))
                if offset < f.size:
                    raise httpx2.RemoteProtocolError("the server closed the transfer early")
            except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError,
                    _RetryableStatus) as e:
                out.flush()
                failures = 0 if offset > start else failures + 1
                kind = ("stalled" if isinstance(e, httpx2.TimeoutException)
                        else f"failed ({e})" if isinstance(e, _RetryableStatus) else "was cut")
                last_error = kind if isinstance(e, _RetryableStatus) else f"{kind} ({type(e).__name__}: {e})"
                if failures > retries:
                    raise DownloadError(
                        f"download of {f.path} {last_error}; {retries} retries without progress. "
                        f"{offset:,} of {f.size:,} bytes are kept in {part}",
                        "run the same download again to resume from there; if it keeps stalling, check "
                        "the network (or raise --stall-timeout)") from e
                time.sleep(retry_wait * min(2 ** max(failures - 1, 0), 8))
            except QwenkitError:
                raise
            except Exception as e:
                out.flush()
                raise _hub_error(e, repo, ep, f"downloading {f.path}") from e
        out.flush()
        os.fsync(out.fileno())
    digest = h.hexdigest()
    ok = digest == f.sha256 if f.sha256 else (g is not None and g.hexdigest() == f.blob_id)
    if not ok:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        expected = f"SHA-256 {f.sha256}" if f.sha256 else f"git blob id {f.blob_id}"
        raise DownloadError(
            f"{f.path}: checksum mismatch: the hub lists {expected}, the {f.size:,} bytes received hash to "
            f"{digest if f.sha256 else g.hexdigest() if g else '?'}. The bad download was deleted",
            "run the download again; if it fails the same way, a proxy or the disk is corrupting data")
    if f.path.lower().endswith(".gguf"):
        try:
            read_gguf(part)
        except GGUFError as e:
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            raise DownloadError(f"{f.path} matches the hub's checksum but is not a usable GGUF: {e.problem}",
                                "the file on the hub is broken: choose another quant or repo") from e
    final = repo_dir / f.path
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    meta.unlink(missing_ok=True)
    d = part.parent
    while d != repo_dir and d.is_dir() and not any(d.iterdir()):  # tidy empty .incomplete folders
        d.rmdir()
        d = d.parent
    manifest.record(f.path, final, f.sha256 or "", commit, repo)


# ------------------------------------------------------------------------------ local models
def _local_model(repo_dir: Path | None, name: str, files: list[Path], manifest: _Manifest | None,
                 repo: str | None) -> LocalModel:
    states, shas, revs, size = [], [], set(), 0
    for p in files:
        rel = p.relative_to(repo_dir).as_posix() if repo_dir is not None else p.name
        if p.exists():
            size += p.stat().st_size
            states.append(manifest.state(rel, p) if manifest is not None else STATE_UNVERIFIED)
        else:
            states.append(STATE_INCOMPLETE)
        e = manifest.files.get(rel, {}) if manifest is not None else {}
        shas.append(e.get("sha256"))
        if e.get("revision"):
            revs.add(e["revision"])
    for s in (STATE_INCOMPLETE, STATE_MODIFIED, STATE_UNVERIFIED, STATE_VERIFIED):
        if s in states:
            state = s
            break
    else:  # pragma: no cover
        state = STATE_UNVERIFIED
    return LocalModel(name, files[0], files, size, state, repo, revs.pop() if len(revs) == 1 else None, shas)


def _group_local(paths: list[Path]) -> list[tuple[str, list[Path]]]:
    groups: dict[tuple[Path, str], list[Path]] = {}
    for p in paths:
        sp = split_parts(p.name)
        if sp:
            stem, _, count = sp
            files = [p.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
            groups[(p.parent, stem)] = files
        else:
            groups[(p.parent, p.name)] = [p]
    return [(quant_name(str(fs[0])) or fs[0].name[:-5], fs) for fs in groups.values()]


def _hf_cache_root() -> Path:
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                     "huggingface")
    return Path(home).expanduser() / "hub"


def _hf_cache_models(repo: str | None = None, revision: str | None = None) -> list[LocalModel]:
    root = _hf_cache_root()
    out = []
    dirs = [root / f"models--{repo.replace('/', '--')}"] if repo else sorted(root.glob("models--*"))
    for d in dirs:
        rid = d.name[len("models--"):].replace("--", "/", 1)
        snaps = d / "snapshots"
        if not snaps.is_dir():
            continue
        commits = [p.name for p in snaps.iterdir() if p.is_dir()]
        if revision:
            ref = d / "refs" / revision
            commits = [ref.read_text().strip()] if ref.is_file() else [c for c in commits if c == revision]
        for c in commits:
            paths = [p for p in (snaps / c).rglob("*.gguf") if is_model_gguf(p.name)]
            for name, fs in _group_local(paths):
                size = sum(p.stat().st_size for p in fs if p.exists())
                state = STATE_HF_CACHE if all(p.exists() for p in fs) else STATE_INCOMPLETE
                out.append(LocalModel(name, fs[0], fs, size, state, rid, c, [None] * len(fs)))
    return out


def local_models(dest: str | os.PathLike | None = None, *, include_hf_cache: bool = True,
                 include_incomplete: bool = True) -> list[LocalModel]:
    """GGUF models on disk: the kit's models folder (with verification state), partial
    downloads, and (optionally) GGUFs in huggingface_hub's cache."""
    root = models_dir(dest)
    out: list[LocalModel] = []
    for repo_dir in sorted([root] + [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]):
        manifest = _Manifest(repo_dir)
        repo = manifest.data.get("repo") or (repo_dir.name.replace("--", "/", 1) if repo_dir != root else None)
        if repo_dir == root:
            paths = [p for p in root.glob("*.gguf") if is_model_gguf(p.name)]
        else:
            paths = [p for p in repo_dir.rglob("*.gguf")
                     if is_model_gguf(p.name) and INCOMPLETE not in p.relative_to(repo_dir).parts]
        for name, fs in _group_local(paths):
            out.append(_local_model(repo_dir, name, fs, manifest, repo))
        if include_incomplete and repo_dir != root and (repo_dir / INCOMPLETE).is_dir():
            for part in (repo_dir / INCOMPLETE).rglob("*.part"):
                rel = part.relative_to(repo_dir / INCOMPLETE).as_posix()[:-5]
                try:
                    m = json.loads(part.with_name(part.name[:-5] + ".json").read_text())
                    total = f" of {_human(m['size'])}"
                except (FileNotFoundError, ValueError, KeyError):
                    total = ""
                got = part.stat().st_size
                out.append(LocalModel(quant_name(rel) or Path(rel).name, part, [part], got,
                                      f"{STATE_INCOMPLETE} ({_human(got)}{total}; run download again to resume)",
                                      repo))
    if include_hf_cache:
        out.extend(_hf_cache_models())
    return out


def find_local(repo: str, quant: str, *, dest: str | os.PathLike | None = None,
               revision: str | None = None) -> LocalModel | None:
    """A complete local copy of repo's quant: verified in the kit's folder, else in the HF cache."""
    root = models_dir(dest)
    repo_dir = root / _repo_dirname(repo)
    want = quant.lower()

    def match(m: LocalModel) -> bool:
        return want in _names(m)

    if repo_dir.is_dir():
        manifest = _Manifest(repo_dir)
        paths = [p for p in repo_dir.rglob("*.gguf")
                 if is_model_gguf(p.name) and INCOMPLETE not in p.relative_to(repo_dir).parts]
        for name, fs in _group_local(paths):
            m = _local_model(repo_dir, name, fs, manifest, repo)
            if match(m) and m.state == STATE_VERIFIED and (revision is None or m.revision == revision
                                                           or revision in ("main",)):
                return m
    for m in _hf_cache_models(repo, revision or "main"):
        if match(m) and m.state == STATE_HF_CACHE:
            return m
    return None


def _local_quant_list(repo: str, vram_gb, ram_gb) -> QuantList:
    ql = QuantList()
    for m in local_models(include_incomplete=False):
        if m.repo == repo and m.state in (STATE_VERIFIED, STATE_HF_CACHE):
            files = tuple(RemoteFile(p.name, p.stat().st_size, s) for p, s in zip(m.files, m.sha256))
            q = Quant(m.name, files, repo, m.revision)
            with contextlib.suppress(GGUFError, OSError):   # the local header: the verdict can use the plan
                q.info = read_model_info(m.path)
            ql.append(q)
    _add_verdicts(ql, vram_gb, ram_gb)
    return ql


def _match_local(name: str, dest) -> list[LocalModel]:
    p = Path(name).expanduser()
    ms = local_models(dest, include_hf_cache=False)
    want = name.lower()
    hits = [m for m in ms if want in _names(m)
            or (p.exists() and any(f.resolve() == p.resolve() for f in m.files))]
    return hits


def _names(m: LocalModel) -> set[str]:
    """Names a local model answers to: quant, file names, model stem, owner/repo/quant."""
    names = {m.name.lower()}
    for f in m.files:
        names.add(f.name.lower())
        sp = split_parts(f.name)
        names.add((sp[0] if sp else f.name.removesuffix(".part").removesuffix(".gguf")).lower())
    if m.repo:
        names.add(f"{m.repo}/{m.name}".lower())
    return names


def remove_model(name: str, dest: str | os.PathLike | None = None) -> list[Path]:
    """Delete a local model (all its parts, its partial downloads and manifest entries).
    `name`: quant name, file name, path, or `owner/repo/QUANT` when two repos share a quant."""
    hits = _match_local(name, dest)
    if not hits:
        raise QwenkitError(f"no local model {name!r}", "list them: python -m qwenkit models")
    complete = [m for m in hits if not m.state.startswith(STATE_INCOMPLETE)]
    repos = {(m.repo, m.name) for m in complete} or {(m.repo, m.name) for m in hits}
    if len(repos) > 1:
        raise QwenkitError(f"{name!r} matches several models: " + ", ".join(f"{r}/{n}" for r, n in sorted(repos, key=str)),
                           "name it as owner/repo/QUANT or give the file path")
    removed = []
    root = models_dir(dest)
    for m in hits:
        for f in m.files:
            if f.exists():
                f.unlink()
                removed.append(f)
            if f.suffix == ".part":
                f.with_name(f.name[:-5] + ".json").unlink(missing_ok=True)
        repo_dir = root / _repo_dirname(m.repo) if m.repo else root
        if repo_dir.is_dir():
            man = _Manifest(repo_dir)
            changed = False
            for f in m.files:
                try:
                    rel = f.relative_to(repo_dir).as_posix()
                except ValueError:
                    continue
                if man.files.pop(rel, None) is not None:
                    changed = True
            if changed:
                man.save()
        # partial downloads of the same quant
        if m.repo and (repo_dir / INCOMPLETE).is_dir():
            for part in (repo_dir / INCOMPLETE).rglob("*.part"):
                rel = part.relative_to(repo_dir / INCOMPLETE).as_posix()[:-5]
                if (quant_name(rel) or "").lower() == m.name.lower():
                    part.unlink()
                    part.with_name(part.name[:-5] + ".json").unlink(missing_ok=True)
                    removed.append(part)
    for d in sorted({f.parent for f in removed}, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            if d != root and not any(d.iterdir()):
                d.rmdir()
    return removed


def verify_model(name: str, dest: str | os.PathLike | None = None, progress: bool = True) -> LocalModel:
    """Hash a local model's files again and compare with the SHA-256 recorded at download;
    a file without a record is compared with the hub (needs the network)."""
    hits = [m for m in _match_local(name, dest) if not m.state.startswith(STATE_INCOMPLETE)]
    if len(hits) != 1:
        raise QwenkitError(f"{name!r} matches {len(hits)} local models", "list them: python -m qwenkit models")
    m = hits[0]
    root = models_dir(dest)
    repo_dir = root / _repo_dirname(m.repo) if m.repo else root
    man = _Manifest(repo_dir)
    remote: dict[str, RemoteFile] | None = None
    bar = _progress(m.size, 0, f"verify {m.name}", progress)
    try:
        for f in m.files:
            rel = f.relative_to(repo_dir).as_posix()
            want = man.files.get(rel, {}).get("sha256")
            if not want and m.repo:
                if remote is None:
                    _, rf = repo_files(m.repo)
                    remote = {x.path: x for x in rf}
                want = remote[rel].sha256 if rel in remote else None
            if not want:
                raise QwenkitError(f"{f}: no SHA-256 known for it", "download it with python -m qwenkit download")
            got = _sha256_file(f, bar).hexdigest()
            if got != want:
                man.files.pop(rel, None)
                man.save()
                raise DownloadError(f"{f}: SHA-256 {got} does not match {want}: the file is corrupted",
                                    f"remove it (python -m qwenkit models --remove {f.name}) and download again")
            man.record(rel, f, got, man.files.get(rel, {}).get("revision"), m.repo)
    finally:
        bar.close()
    return _local_model(repo_dir, m.name, m.files, man, m.repo)


def models_table(models: Sequence[LocalModel]) -> str:
    """Local models as a table: text when printed, an HTML table as a notebook cell's result."""
    from qwenkit.htmltable import Table
    if not models:
        return Table([], [], title="no local models (download one: python -m qwenkit download REPO QUANT)")
    rows = [[f"{m.repo + '/' if m.repo else ''}{m.name}", _human(m.size), m.state, str(m.path)] for m in models]
    return Table(["model", "size", "state", "path"], rows, align="lrll")
