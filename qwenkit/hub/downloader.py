"""`download(repo, quant)`: a quant's files from the hub at one pinned commit, checked for
disk space first, resumed where an earlier run stopped, verified before they get their names."""
from __future__ import annotations

import os
from pathlib import Path

from qwenkit.errors import DownloadError, HubUnreachable
from qwenkit.hub.api import endpoint_url, is_offline, repo_files
from qwenkit.hub.local import LocalModel, find_local, model_on_disk
from qwenkit.hub.manifest import STATE_VERIFIED, Manifest
from qwenkit.hub.quants import DEFAULT_QUANT, DEFAULT_REPO, Quant, RemoteFile, find_quant, group_quants
from qwenkit.hub.sizes import human_size
from qwenkit.hub.store import free_bytes, models_dir, part_paths, repo_dirname, repo_lock
from qwenkit.hub.transfer import fetch_file, progress_bar, usable_part

__all__ = ["DISK_MARGIN", "download"]


DISK_MARGIN = 256 << 20          # free space kept beyond the download


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
    ep = endpoint_url(endpoint)
    try:
        commit, files = repo_files(repo, revision=revision, endpoint=ep, token=token)
    except HubUnreachable as e:  # like hf_hub_download: a verified local copy still answers
        found = find_local(repo, quant, dest=root, revision=revision)
        if found is None:
            raise
        import warnings
        warnings.warn(f"{e.problem}; using the local copy {found.path} ({found.state})", stacklevel=2)
        return found
    q = find_quant(group_quants(files, repo, commit), quant, repo)
    repo_dir = root / repo_dirname(repo)
    repo_dir.mkdir(parents=True, exist_ok=True)
    with repo_lock(repo_dir / ".qwenkit.lock"):
        return _download_locked(repo, q, commit, repo_dir, ep, token, progress, stall_timeout, retries,
                                retry_wait)


def _download_locked(repo, q: Quant, commit, repo_dir: Path, ep, token, progress, stall_timeout, retries,
                     retry_wait) -> LocalModel:
    manifest = Manifest(repo_dir)
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
        part, meta = part_paths(repo_dir, f.path)
        have[f.path] = usable_part(part, meta, f)
    need = sum(f.size - have[f.path] for f in todo)
    if todo:
        free = free_bytes(repo_dir)
        if free < need + DISK_MARGIN:
            raise DownloadError(
                f"not enough disk space for {repo} {q.name}: it needs {human_size(need)} more "
                f"(+{human_size(DISK_MARGIN)} margin) at {repo_dir}, {human_size(free)} is free",
                "free some space (python -m qwenkit models --remove NAME), or download elsewhere "
                "with --dir PATH / QWENKIT_MODELS=PATH")
    total = sum(f.size for f in todo)
    bar = progress_bar(total, sum(have.values()), f"{q.name}", progress and bool(todo))
    try:
        for f in todo:
            fetch_file(repo, f, commit, repo_dir, ep, token, bar, stall_timeout, retries, retry_wait, manifest)
    finally:
        bar.close()
    return model_on_disk(repo_dir, q.name, [repo_dir / f.path for f in q.files], manifest, repo)
