"""Source of notebooks/02_download.ipynb (regenerate with `python tools/nb.py`)."""

NOTEBOOKS = {"02_download": [
("md", """
# 02 · Which Qwen3.5-35B-A3B file fits your card, and a download you can trust

**What you learn:** how to read a GGUF repo (one *quant* can be several split files), how to tell
before downloading whether a 13-37 GB file fits your GPU, how to read a model's facts from its
header over the network (a few MB of a 20 GB file), and what makes a download safe: a pinned
version, a disk-space check, resuming after an interruption, and a SHA-256 check (huggingface_hub
itself only checks the size).

**Works without the network.** When the Hugging Face hub does not answer within 3 s (no network, a
firewall, a workshop room), the notebook starts the kit's **practice hub** on 127.0.0.1: a local
server that speaks the hub's protocol. Every step then runs against it: the quant table and fit
verdicts come from Qwen3.5-35B-A3B's real full-size headers, and the download is a real one (a 6 MB
model of the same architecture) that gets interrupted and resumed. Online, the same cells use the real hub.

**Time:** under 10 s with the practice hub (measured on a 2-core machine: about 4 s of cells); online a minute to look, plus the
download itself (21 GB for Q4_K_M: about 30 minutes at 100 Mbit/s). **Needs:** the kit installed
(`make setup`). Network and free disk space for the real download are optional.
"""),
("code", """
# Parameters (the test suite overrides these)
REPO = "unsloth/Qwen3.5-35B-A3B-GGUF"  # the Qwen3.5-35B-A3B GGUF repo the recipe uses; any GGUF repo works
QUANT = "Q4_K_M"         # the quant to look at and download (see the table in step 3)
VRAM_GB = 16             # your GPU's memory as sold (16 for a 16 GB card); None: no fit verdict
RAM_GB = None            # system RAM in GB; None: this machine's
REVISION = None          # branch, tag or commit; None: main, pinned to its current commit
HUB = "auto"             # "auto": the real hub if it answers within HUB_TIMEOUT s, else the practice hub;
                         # "real": the real hub only; "practice": the practice hub, no network asked
HUB_TIMEOUT = 3.0        # seconds to wait for the real hub
ENDPOINT = None          # hub URL; None: $HF_ENDPOINT or https://huggingface.co
MODELS_DIR = None        # where models go; None: $QWENKIT_MODELS or ~/.cache/qwenkit/models
                         # (practice downloads: a practice folder of their own)
DOWNLOAD = True          # False: only look (quants and header), download nothing
FORCE_DOWNLOAD = False   # True: download even when the verdict says it does not fit
"""),
("md", """
## 1. What is on disk already

No network needed: the kit's models folder (with each file's verification state) and the GGUFs in
huggingface_hub's cache. States: `verified` (SHA-256 checked and the file unchanged since),
`modified since verification`, `unverified` (a file the kit did not download), `incomplete` (a partial
download: run the download again to resume), or `hf cache` (huggingface_hub's cache, which only checks sizes).
"""),
("code", """
from qwenkit import hub, practice_hub

hub.models_table(hub.local_models(MODELS_DIR))
"""),
("md", """
## 2. Is the hub there?

One small request to the hub, given up after `HUB_TIMEOUT` seconds. If it does not answer (and `HUB` is
`"auto"`), the practice hub starts on 127.0.0.1 with two repos: `qwenkit-practice/Qwen3.5-35B-A3B-GGUF`
holds Qwen3.5-35B-A3B's full-size headers (Q4_K_M and Q8_0; the weights are a hole in a sparse file, so
only header reads are served), and `qwenkit-practice/Qwen3.5-tiny-GGUF` a 6 MB random-weight model of
the same architecture that really downloads. From a terminal: `python -m qwenkit practice-hub`.
"""),
("code", """
where = practice_hub.connect(HUB, endpoint=ENDPOINT, repo=REPO, quant=QUANT, revision=REVISION,
                             timeout=HUB_TIMEOUT, models_dir=MODELS_DIR)
print(where)
"""),
("md", """
## 3. The quants in the repo, and which fit

A GGUF repo holds one file per *quant* (Q4_K_M, Q8_0, UD-IQ3_S, ...): the same model with its weights
stored at a different number of bits. Big quants are split into parts named `...-00001-of-00003.gguf`;
they count as one quant. Vision projectors (`mmproj-*`) are left out.

For the quant you chose, the kit reads its header over the network (next step) and the verdict comes from
the memory plan (weights per layer, the KV cache only where the model has one, compute buffers, CUDA
context): "fits", or "fits with `--n-cpu-moe N`" (the expert weights of N layers stay in system RAM:
slower decode, notebook `03_fit`). The other rows are estimates from the file size.
"""),
("code", """
quants = hub.list_quants(where.repo, revision=where.revision, vram_gb=VRAM_GB, ram_gb=RAM_GB,
                         endpoint=where.endpoint, headers=[where.quant])
quants
"""),
("md", """
## 4. The model's facts, from its header, over the network

Everything the memory plan needs is in the GGUF header at the start of the file: the architecture, which
layers have attention (only those hold a KV cache), the KV heads and head sizes, the recurrent-state
sizes of the other (Gated-DeltaNet) layers, and every tensor's type and size. The kit reads just those
bytes with HTTP Range requests, so a 20 GB file is described from a few megabytes, before you download it.
"""),
("code", """
quant = quants.find(where.quant)
verdict = quant.verdict if quant is not None else None
if quant is None:
    print(f"{where.quant} is not in the table above:",
          "not on disk (offline)" if where.offline else "choose a listed quant")
else:
    info = quant.info or hub.read_remote_info(where.repo, quant, endpoint=where.endpoint)
    print(info.summary())
    if info.header_bytes_read:
        print(f"\\nread {info.header_bytes_read / 2**20:.1f} MiB of {info.file_size / 2**30:.2f} GiB "
              f"({100 * info.header_bytes_read / info.file_size:.3f} % of the file)")
    if verdict is not None:
        print(f"{where.quant} on a {VRAM_GB} GB card: {verdict}")
"""),
("md", """
## 5. Download: pinned, checked, resumable, verified

`hub.download` does what a plain `hf_hub_download` does not:

- **Pinned version.** `main` is resolved to a commit once, and every file (every split part) comes from
  that commit, so a repo updated mid-download cannot mix versions.
- **Disk space first.** It fails before the first byte when the disk is short, saying how much is needed.
- **Resume.** Bytes go to `<models>/<repo>/.incomplete/<file>.part`. Interrupted (network, laptop lid,
  kernel restart)? Run the download again: it continues from the last byte with an HTTP Range request.
- **Stall watchdog.** No data for `stall_timeout` seconds aborts the transfer and retries it (from where it
  stopped); after `retries` attempts without progress it stops with a clear message and keeps the bytes.
- **SHA-256.** The file is hashed while it downloads and compared with the hub's checksum; only a verified
  file gets its real name. A mismatch deletes the bad bytes and says so.

First, an interruption. The practice hub drops the connection at 40 % of the file and then stays away
for a few requests: the download retries, gives up, and keeps what it has.
"""),
("code", """
from qwenkit.errors import DownloadError

if where.is_practice and DOWNLOAD:
    cut_at = where.stage_interruption(at=0.4)
    try:
        hub.download(where.download_repo, where.download_quant, dest=where.models_dir,
                     endpoint=where.endpoint, retries=2, retry_wait=0.2, stall_timeout=5)
    except DownloadError as e:
        print(f"interrupted at byte {cut_at:,}:\\n  {e.problem}\\n  fix: {e.fix}")
    display(hub.models_table(hub.local_models(where.models_dir, include_hf_cache=False)))
else:
    print("the staged interruption runs on the practice hub (HUB = 'practice'); on the real hub, "
          "stop the next cell (the square button) and run it again: it resumes the same way")
"""),
("md", """
The network is back: the same call again. It sends one Range request from the byte where the first run
stopped, hashes the kept bytes and the new ones, and gives the file its real name only when the SHA-256
matches. On the real hub this cell downloads `QUANT` (unless the verdict says it does not fit).
"""),
("code", """
model = None
if not DOWNLOAD:
    print("DOWNLOAD = False: nothing downloaded")
elif where.offline:
    model = hub.find_local(where.download_repo, where.download_quant, dest=where.models_dir)
    print(f"offline: {model or f'{where.download_quant} is not on disk, and nothing can be downloaded offline'}")
elif not where.is_practice and verdict is not None and not verdict.fits and not FORCE_DOWNLOAD:
    print(f"not downloading {QUANT}: {verdict}\\n"
          "choose a smaller quant from the table, or set FORCE_DOWNLOAD = True")
else:
    where.network_back()   # practice hub: the staged fault is gone, the counters start at 0
    model = hub.download(where.download_repo, where.download_quant, revision=where.revision,
                         dest=where.models_dir, endpoint=where.endpoint)
    print(model.state, "-", model.path)
    if where.is_practice:
        f = practice_hub.GET_FILE
        print(f"byte requests since the cut: {where.practice.gets(f)}; "
              f"{where.practice.served(f):,} bytes sent of {model.size:,}")
"""),
("md", """
## 6. What is on disk now, and a check before llama.cpp sees it

The local models again, and a look at the downloaded file: a truncated or corrupted GGUF gets an error
that names the file and the expected and actual sizes (llama.cpp itself only says
"Failed to load model from file"). With `HF_HUB_OFFLINE=1` set, `hub.download` returns the local copy
without touching the network.
"""),
("code", """
from qwenkit.gguf_info import check_file

display(hub.models_table(hub.local_models(where.models_dir)))
if model is not None:
    print(check_file(model.path).summary())
    if not where.is_practice:
        print(f"\\nnext: notebook 03_fit with MODEL_PATH = {str(model.path)!r}")
where.close()   # stops the practice hub (nothing to do on the real hub)
"""),
("md", """
**The same from a terminal:** `python -m qwenkit quants --vram 16` lists and judges the quants,
`python -m qwenkit download Q4_K_M` downloads (run it again to resume), `python -m qwenkit models`
lists local models (`--verify NAME` re-hashes one, `--remove NAME` deletes one), and
`python -m qwenkit gguf PATH` shows a file's header facts. Offline, `python -m qwenkit practice-hub`
serves the practice repos; point `HF_ENDPOINT` at the address it prints.

**Next:** `03_fit` plans where every byte of the model goes on your card.
"""),
]}
