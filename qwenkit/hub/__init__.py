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

Modules, by job: `quants` (names, grouping, picking a quant), `fit` (verdicts), `api` (HTTP
questions to the hub), `remote_header` (headers over Range requests), `listing`
(`list_quants`), `local` (models on disk), `store` (folders, free space, lock), `manifest`;
and the download's steps: `downloader` (`download`: resolve, plan, disk check, then per file)
-> `partial` (open or resume; place) -> `transfer` (bytes, retries) -> `verify` (checksum).
"""
from qwenkit.errors import DownloadError, HubUnreachable
from qwenkit.hub.api import Probe, is_offline, probe, repo_files
from qwenkit.hub.downloader import DISK_MARGIN, download
from qwenkit.hub.fit import GPU_RESERVE, RAM_RESERVE, Verdict, fit_verdict, system_ram_bytes
from qwenkit.hub.listing import list_quants
from qwenkit.hub.local import LocalModel, find_local, local_models, models_table, remove_model, verify_model
from qwenkit.hub.manifest import (
    MANIFEST,
    STATE_HF_CACHE,
    STATE_INCOMPLETE,
    STATE_MODIFIED,
    STATE_UNVERIFIED,
    STATE_VERIFIED,
)
from qwenkit.hub.quants import (
    DEFAULT_QUANT,
    DEFAULT_REPO,
    Quant,
    QuantList,
    RemoteFile,
    group_quants,
    is_model_gguf,
    quant_name,
)
from qwenkit.hub.remote_header import RangeReader, read_remote_info
from qwenkit.hub.sizes import GB, GiB
from qwenkit.hub.store import INCOMPLETE, free_bytes, models_dir

__all__ = [
    "DEFAULT_QUANT", "DEFAULT_REPO", "DISK_MARGIN", "GB", "GPU_RESERVE", "INCOMPLETE", "MANIFEST", "RAM_RESERVE",
    "STATE_HF_CACHE", "STATE_INCOMPLETE", "STATE_MODIFIED", "STATE_UNVERIFIED", "STATE_VERIFIED",
    "DownloadError", "GiB", "HubUnreachable", "LocalModel", "Probe", "Quant", "QuantList", "RangeReader",
    "RemoteFile", "Verdict", "download", "find_local", "fit_verdict", "free_bytes", "group_quants",
    "is_model_gguf", "is_offline", "list_quants", "local_models", "models_dir", "models_table", "probe",
    "quant_name", "read_remote_info", "remove_model", "repo_files", "system_ram_bytes", "verify_model",
]
