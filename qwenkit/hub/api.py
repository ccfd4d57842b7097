"""Questions to the hub over HTTP (huggingface_hub's session, URLs, headers and auth): is it
reachable, which files a repo has at which commit, and the kit's error for a failed call."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from qwenkit.errors import DownloadError, HubUnreachable, QwenkitError
from qwenkit.hub.quants import DEFAULT_REPO, RemoteFile

__all__ = ["Probe", "endpoint_url", "hf_headers", "http_module", "hub_error", "is_offline", "probe", "repo_files"]


def endpoint_url(endpoint: str | None) -> str:
    from huggingface_hub import constants
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """HF_HUB_OFFLINE=1 (read now, not only when huggingface_hub was imported)."""
    from huggingface_hub import constants
    v = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or v.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_headers(token) -> dict[str, str]:
    from huggingface_hub.utils import build_hf_headers

    import qwenkit
    h = build_hf_headers(token=token, library_name="qwenkit", library_version=qwenkit.__version__)
    h["Accept-Encoding"] = "identity"
    return h


def http_module():
    """The HTTP library under huggingface_hub's session: httpx2 (hub 2.x) or httpx (hub 1.x)."""
    try:
        import httpx2
        return httpx2
    except ImportError:  # pragma: no cover - huggingface_hub 1.x
        import httpx
        return httpx


def hub_error(e: Exception, repo: str, endpoint: str, what: str) -> QwenkitError:
    from huggingface_hub import errors as hfe
    httpx2 = http_module()
    if isinstance(e, hfe.RevisionNotFoundError):
        return DownloadError(f"{repo}: revision not found on {endpoint} while {what}",
                             "use a branch name, a tag or a full commit id that exists")
    if isinstance(e, (hfe.RepositoryNotFoundError, hfe.GatedRepoError)):
        return DownloadError(f"{repo}: repo not found on {endpoint} (or private/gated) while {what}",
                             "check the name; for a gated or private repo log in first: hf auth login")
    if isinstance(e, hfe.RemoteEntryNotFoundError):
        return DownloadError(f"{repo}: file not found on {endpoint} while {what}",
                             "list the quants: python -m qwenkit quants " + repo)
    if isinstance(e, hfe.OfflineModeIsEnabled):
        return DownloadError(f"HF_HUB_OFFLINE is set: no network while {what}",
                             "unset HF_HUB_OFFLINE, or use the models already downloaded (python -m qwenkit models)")
    if isinstance(e, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError)):
        return HubUnreachable(f"cannot reach {endpoint} while {what}: {e}",
                              "check the network (or HF_ENDPOINT); offline, set HF_HUB_OFFLINE=1 to use downloaded "
                              "models, or practise on the local practice hub: python -m qwenkit practice-hub")
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
    ep = endpoint_url(endpoint)
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
    ep = endpoint_url(endpoint)
    if is_offline():
        raise DownloadError(f"HF_HUB_OFFLINE is set: cannot list {repo} on the hub",
                            "unset HF_HUB_OFFLINE, or use local models: python -m qwenkit models")
    api = HfApi(endpoint=ep, token=token, library_name="qwenkit")
    try:
        mi = api.model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:
        raise hub_error(e, repo, ep, "listing the repo files") from e
    files = []
    for s in mi.siblings or []:
        lfs = s.lfs
        size = lfs.size if lfs is not None else (s.size or 0)
        files.append(RemoteFile(s.rfilename, int(size), lfs.sha256 if lfs is not None else None, s.blob_id))
    if not mi.sha:
        raise DownloadError(f"{ep} returned no commit id for {repo}", "is HF_ENDPOINT a hub?")
    return mi.sha, files
