"""`list_quants(repo)`: a repo's quants with fit verdicts, from the hub or, offline, from disk."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

from qwenkit.errors import GGUFError
from qwenkit.gguf_info import read_model_info
from qwenkit.hub.api import is_offline, repo_files
from qwenkit.hub.fit import add_verdicts
from qwenkit.hub.local import local_models
from qwenkit.hub.manifest import STATE_HF_CACHE, STATE_VERIFIED
from qwenkit.hub.quants import DEFAULT_REPO, Quant, QuantList, RemoteFile, group_quants
from qwenkit.hub.remote_header import read_remote_info

__all__ = ["list_quants", "local_quant_list"]


def list_quants(repo: str = DEFAULT_REPO, *, revision: str | None = None, vram_gb: float | None = None,
                ram_gb: float | None = None, headers: bool | Sequence[str] = False,
                endpoint: str | None = None, token: str | bool | None = None) -> QuantList:
    """The repo's GGUF quants, smallest first, each with a fit verdict when `vram_gb` is given
    (GB as a card is sold: 16 means 16 GiB). `ram_gb` None = this machine's RAM.
    `headers=True` (or a list of quant names) also reads those quants' headers over the network
    (a few MB each) so the verdict counts their expert bytes. Offline: the local quants."""
    if is_offline():
        return local_quant_list(repo, vram_gb, ram_gb)
    commit, files = repo_files(repo, revision=revision, endpoint=endpoint, token=token)
    quants = group_quants(files, repo, commit)
    want = {q.name.lower() for q in quants} if headers is True else {h.lower() for h in (headers or [])}
    for q in quants:
        if q.name.lower() in want:
            q.info = read_remote_info(repo, q, revision=commit, endpoint=endpoint, token=token)
    add_verdicts(quants, vram_gb, ram_gb)
    return quants


def local_quant_list(repo: str, vram_gb, ram_gb) -> QuantList:
    ql = QuantList()
    for m in local_models(include_incomplete=False):
        if m.repo == repo and m.state in (STATE_VERIFIED, STATE_HF_CACHE):
            files = tuple(RemoteFile(p.name, p.stat().st_size, s) for p, s in zip(m.files, m.sha256, strict=True))
            q = Quant(m.name, files, repo, m.revision)
            with contextlib.suppress(GGUFError, OSError):   # the local header: the verdict can use the plan
                q.info = read_model_info(m.path)
            ql.append(q)
    add_verdicts(ql, vram_gb, ram_gb)
    return ql
