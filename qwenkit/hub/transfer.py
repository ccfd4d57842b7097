"""Moving one file's bytes from the hub into its partial file: HTTP Range from where the
file stops, a stall watchdog, retries with backoff while they make progress, a progress bar."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import BinaryIO

from qwenkit.errors import DownloadError, QwenkitError
from qwenkit.hub.api import http_module, hub_error
from qwenkit.hub.partial import PartialFile

__all__ = ["RetryPolicy", "Source", "progress_bar", "transfer"]


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, dynamic_ncols=True)


@dataclass(frozen=True)
class RetryPolicy:
    """stall_timeout: seconds without a byte before the watchdog aborts the request.
    retries: failed attempts in a row without progress before giving up (the partial file is kept).
    retry_wait: the first pause between attempts; it doubles per failure, up to 8 times."""
    stall_timeout: float = 60.0
    retries: int = 5
    retry_wait: float = 2.0

    def backoff(self, failures: int) -> float:
        return self.retry_wait * min(2 ** max(failures - 1, 0), 8)


@dataclass(frozen=True)
class Source:
    """Where a file's bytes come from: its URL at the pinned commit and the request headers;
    repo and endpoint for the messages."""
    url: str
    headers: dict[str, str]
    repo: str
    endpoint: str


class _RetryableStatus(Exception):
    """A 408/429/5xx answer: retried like a dropped connection."""


def transfer(partial: PartialFile, *, source: Source, policy: RetryPolicy, bar) -> None:
    """Fetch the bytes `partial` still lacks, retrying stalls, cuts and 408/429/5xx answers
    while attempts make progress; the bytes are on disk (fsync) when it returns."""
    httpx = http_module()
    timeout = httpx.Timeout(policy.stall_timeout, connect=min(policy.stall_timeout, 30.0))
    retryable = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, _RetryableStatus)
    f = partial.file
    failures = 0
    with open(partial.path, "ab") as out:
        while partial.offset < f.size:
            received = partial.received
            try:
                _receive(out, partial, source=source, timeout=timeout, bar=bar)
            except retryable as e:
                out.flush()
                failures = 0 if partial.received > received else failures + 1
                if failures > policy.retries:
                    raise _gave_up(e, partial, retries=policy.retries) from e
                time.sleep(policy.backoff(failures))
            except QwenkitError:
                raise
            except Exception as e:
                out.flush()
                raise hub_error(e, source.repo, source.endpoint, f"downloading {f.path}") from e
        out.flush()
        os.fsync(out.fileno())


def _receive(out: BinaryIO, partial: PartialFile, *, source: Source, timeout, bar) -> None:
    """One attempt: a GET from `partial.offset` (a Range request when resuming), the bytes
    written as they arrive so that a cut loses nothing already sent."""
    from huggingface_hub import get_session
    from huggingface_hub.utils import hf_raise_for_status
    f, offset = partial.file, partial.offset
    headers = dict(source.headers, Range=f"bytes={offset}-") if offset else source.headers
    with get_session().stream("GET", source.url, headers=headers, timeout=timeout) as r:
        if r.status_code in (408, 429) or r.status_code >= 500:
            raise _RetryableStatus(f"HTTP {r.status_code}")
        hf_raise_for_status(r)
        if offset and r.status_code == 200:  # Range ignored: start over
            partial.restart(out)
            bar.update(-offset)
        elif offset:
            cr = r.headers.get("Content-Range", "")
            if not cr.startswith(f"bytes {offset}-"):
                raise DownloadError(f"{source.url}: asked for bytes from {offset}, got {cr!r}",
                                    "retry; the server or a proxy mangles Range requests")
        for chunk in r.iter_bytes():
            if partial.offset + len(chunk) > f.size:
                raise DownloadError(f"{source.url}: the server sent more than the {f.size:,} bytes the hub "
                                    "lists for this file", "retry later; the repo may be changing")
            partial.append(out, chunk)
            bar.update(len(chunk))
    if partial.offset < f.size:
        raise http_module().RemoteProtocolError("the server closed the transfer early")


def _gave_up(e: Exception, partial: PartialFile, *, retries: int) -> DownloadError:
    f = partial.file
    if isinstance(e, _RetryableStatus):
        what = f"failed ({e})"
    else:
        kind = "stalled" if isinstance(e, http_module().TimeoutException) else "was cut"
        what = f"{kind} ({type(e).__name__}: {e})"
    return DownloadError(
        f"download of {f.path} {what}; {retries} retries without progress. "
        f"{partial.offset:,} of {f.size:,} bytes are kept in {partial.path}",
        "run the same download again to resume from there; if it keeps stalling, check "
        "the network (or raise --stall-timeout)")
