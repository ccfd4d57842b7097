"""A quant's GGUF header read from the hub through HTTP Range requests: a few MB of a
20 GB file give the `ModelInfo` the memory planner needs."""
from __future__ import annotations

from qwenkit.errors import DownloadError, GGUFError, QwenkitError
from qwenkit.gguf_info import ModelInfo, check_split_set, model_info, parse_gguf
from qwenkit.hub.api import endpoint_url, hf_headers, hub_error, repo_files
from qwenkit.hub.quants import DEFAULT_QUANT, DEFAULT_REPO, Quant, find_quant, group_quants

__all__ = ["RangeReader", "read_remote_info"]


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
    ep = endpoint_url(endpoint)
    if isinstance(quant, Quant):
        q = quant
        commit = revision or q.revision
    else:
        commit, files = repo_files(repo, revision=revision, endpoint=ep, token=token)
        q = find_quant(group_quants(files, repo, commit), quant, repo)
    headers = hf_headers(token)
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
            raise hub_error(e, repo, ep, f"reading the header of {f.path}") from e
    check_split_set(parts)
    return model_info(parts)
