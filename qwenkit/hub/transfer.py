"""Moving one file's bytes from the hub into its partial file and, once verified, into place:
resume from what a partial file holds, retry stalls and cuts, hash while receiving."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from qwenkit.errors import DownloadError, GGUFError, QwenkitError
from qwenkit.gguf_info import read_gguf
from qwenkit.hub.api import hf_headers, http_module, hub_error
from qwenkit.hub.manifest import Manifest
from qwenkit.hub.quants import RemoteFile
from qwenkit.hub.sizes import GiB
from qwenkit.hub.store import part_paths
from qwenkit.hub.verify import sha256_file

__all__ = ["fetch_file", "progress_bar", "usable_part"]


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, dynamic_ncols=True)


class _RetryableStatus(Exception):
    """A 408/429/5xx answer: retried like a dropped connection."""


def usable_part(part: Path, meta: Path, f: RemoteFile) -> int:
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


def fetch_file(repo, f: RemoteFile, commit, repo_dir: Path, ep, token, bar, stall_timeout, retries, retry_wait,
               manifest: Manifest) -> None:
    from huggingface_hub import get_session, hf_hub_url
    from huggingface_hub.utils import hf_raise_for_status
    httpx2 = http_module()

    part, meta = part_paths(repo_dir, f.path)
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = usable_part(part, meta, f)
    meta.write_text(json.dumps({"repo": repo, "path": f.path, "revision": commit, "sha256": f.sha256,
                                "size": f.size}))
    h = hashlib.sha256()
    g = hashlib.sha1(f"blob {f.size}\0".encode()) if f.sha256 is None and f.blob_id else None
    if offset:
        bar.set_description(f"checking {offset / GiB:.2f} GiB already downloaded of {Path(f.path).name}")
        h = sha256_file(part, h=h)
        if g is not None:
            with open(part, "rb") as fh:
                for b in iter(lambda: fh.read(8 << 20), b""):
                    g.update(b)
    bar.set_description(Path(f.path).name)
    url = hf_hub_url(repo, f.path, revision=commit, endpoint=ep)
    headers = hf_headers(token)
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
                raise hub_error(e, repo, ep, f"downloading {f.path}") from e
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
