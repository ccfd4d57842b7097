"""`download(repo, quant)`: a quant's files from the hub at one pinned commit, as a few named
steps (after huggingface_hub's `file_download`):

  resolve the quant at one commit -> plan which files are missing (verified ones are kept)
  -> check free disk space -> per file: open or resume its partial file -> transfer the rest
  with progress and retries -> verify SHA-256 (and the GGUF header) -> place it atomically
  -> record it in the manifest.

Offline, or when the hub cannot be reached, a verified local copy answers instead."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from qwenkit.errors import DownloadError, HubUnreachable
from qwenkit.hub.api import endpoint_url, hf_headers, is_offline, repo_files
from qwenkit.hub.local import LocalModel, find_local, model_on_disk
from qwenkit.hub.manifest import STATE_VERIFIED, Manifest
from qwenkit.hub.partial import open_partial, place, resumable_bytes
from qwenkit.hub.quants import DEFAULT_QUANT, DEFAULT_REPO, Quant, RemoteFile, find_quant, group_quants
from qwenkit.hub.sizes import human_size
from qwenkit.hub.store import free_bytes, models_dir, repo_dirname, repo_lock
from qwenkit.hub.transfer import RetryPolicy, Source, progress_bar, transfer
from qwenkit.hub.verify import verify_download

__all__ = ["DISK_MARGIN", "download"]

DISK_MARGIN = 256 << 20          # free space kept beyond the download


@dataclass(frozen=True)
class _Request:
    """A download resolved: the quant's files at one commit, where from and where to."""
    repo: str
    quant: Quant
    commit: str
    repo_dir: Path
    endpoint: str
    token: str | bool | None


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
        return _offline_copy(repo, quant, root=root, revision=revision)
    try:
        req = _resolve(repo, quant, revision=revision, root=root, endpoint=endpoint_url(endpoint), token=token)
    except HubUnreachable as e:  # like hf_hub_download: a verified local copy still answers
        found = find_local(repo, quant, dest=root, revision=revision)
        if found is None:
            raise
        warnings.warn(f"{e.problem}; using the local copy {found.path} ({found.state})", stacklevel=2)
        return found
    policy = RetryPolicy(stall_timeout=stall_timeout, retries=retries, retry_wait=retry_wait)
    req.repo_dir.mkdir(parents=True, exist_ok=True)
    with repo_lock(req.repo_dir / ".qwenkit.lock"):
        manifest = Manifest(req.repo_dir)
        todo = _plan(req, manifest=manifest)
        have = {f.path: resumable_bytes(f, repo_dir=req.repo_dir) for f in todo}
        if todo:
            _check_disk_space(req, need=sum(f.size - have[f.path] for f in todo))
        bar = progress_bar(sum(f.size for f in todo), sum(have.values()), f"{req.quant.name}", progress and bool(todo))
        try:
            for f in todo:
                _fetch_file(req, f, policy=policy, bar=bar, manifest=manifest)
        finally:
            bar.close()
        return model_on_disk(req.repo_dir, req.quant.name, [req.repo_dir / f.path for f in req.quant.files],
                             manifest, req.repo)


def _offline_copy(repo: str, quant: str, *, root: Path, revision: str | None) -> LocalModel:
    found = find_local(repo, quant, dest=root, revision=revision)
    if found is None:
        raise DownloadError(f"HF_HUB_OFFLINE is set and {repo} {quant} is not downloaded "
                            f"(looked in {root} and the huggingface_hub cache)",
                            "download it once with the network on (unset HF_HUB_OFFLINE)")
    return found


def _resolve(repo: str, quant: str, *, revision: str | None, root: Path, endpoint: str,
             token: str | bool | None) -> _Request:
    """Step 1: the revision resolved to one commit (one API call) and the quant's files there."""
    commit, files = repo_files(repo, revision=revision, endpoint=endpoint, token=token)
    q = find_quant(group_quants(files, repo, commit), quant, repo)
    return _Request(repo, q, commit, root / repo_dirname(repo), endpoint, token)


def _plan(req: _Request, *, manifest: Manifest) -> list[RemoteFile]:
    """Step 2: the files to fetch. A verified copy of this version is kept; any other file
    already at a final path is never overwritten (the error says how to proceed)."""
    repo, commit = req.repo, req.commit
    todo: list[RemoteFile] = []
    for f in req.quant.files:
        final = req.repo_dir / f.path
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
    return todo


def _check_disk_space(req: _Request, *, need: int) -> None:
    """Step 3: fail before the first byte when the rest of the download does not fit."""
    free = free_bytes(req.repo_dir)
    if free < need + DISK_MARGIN:
        raise DownloadError(
            f"not enough disk space for {req.repo} {req.quant.name}: it needs {human_size(need)} more "
            f"(+{human_size(DISK_MARGIN)} margin) at {req.repo_dir}, {human_size(free)} is free",
            "free some space (python -m qwenkit models --remove NAME), or download elsewhere "
            "with --dir PATH / QWENKIT_MODELS=PATH")


def _fetch_file(req: _Request, f: RemoteFile, *, policy: RetryPolicy, bar, manifest: Manifest) -> None:
    """Step 4, per file: open or resume -> transfer -> verify -> place -> record."""
    from huggingface_hub import hf_hub_url
    partial = open_partial(f, repo_dir=req.repo_dir, repo=req.repo, commit=req.commit, bar=bar)
    source = Source(url=hf_hub_url(req.repo, f.path, revision=req.commit, endpoint=req.endpoint),
                    headers=hf_headers(req.token), repo=req.repo, endpoint=req.endpoint)
    transfer(partial, source=source, policy=policy, bar=bar)
    verify_download(partial)
    final = place(partial)
    manifest.record(f.path, final, f.sha256 or "", req.commit, req.repo)
