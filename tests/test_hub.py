"""hub: the real huggingface_hub client against the kit's practice hub (qwenkit.practice_hub) serving real GGUF files.

Listing and grouping, remote header reads (bytes counted on the server), download + SHA-256,
resume within and across runs, corruption, stalls, low disk, offline use, local models, CLI."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from qwenkit import hub
from qwenkit.errors import DownloadError, QwenkitError
from qwenkit.gguf_info import read_model_info

from fixtures_hub import BIG_FILE, REPO_BIG, REPO_SMOL, REPO_TINY, SMOL_FILE, TINY_FILE

GiB = 1 << 30
FAST: dict[str, Any] = dict(progress=False, stall_timeout=5.0, retry_wait=0.01)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _no_partials(models: Path) -> list[Path]:
    return [p for p in models.rglob("*") if p.suffix in (".part",) or "incomplete" in p.name]


# ------------------------------------------------------------------------------ protocol
def test_fake_hub_speaks_the_real_clients_protocol(fake_hub, hub_files):
    """huggingface_hub's own calls work against it, and it never offers Xet."""
    from huggingface_hub import HfApi, RepoFile, get_hf_file_metadata, hf_hub_url
    api = HfApi(endpoint=fake_hub.endpoint)
    tree = {f.path: f for f in api.list_repo_tree(REPO_TINY, recursive=True, expand=True) if isinstance(f, RepoFile)}
    tiny = tree[TINY_FILE]
    assert tiny.lfs is not None and tiny.lfs.sha256 == _sha(hub_files["tiny"]) and tiny.xet_hash is None
    meta = get_hf_file_metadata(hf_hub_url(REPO_TINY, TINY_FILE, endpoint=fake_hub.endpoint))
    assert meta.xet_file_data is None and meta.size == hub_files["tiny"].stat().st_size
    assert meta.etag == _sha(hub_files["tiny"]) and meta.commit_hash == fake_hub.repos[REPO_TINY].commit


# ------------------------------------------------------------------------------ listing
@pytest.mark.parametrize("name,quant", [
    ("Qwen3.5-35B-A3B-Q4_K_M.gguf", "Q4_K_M"),
    ("Qwen3.5-35B-A3B-UD-Q4_K_XL.gguf", "UD-Q4_K_XL"),
    ("Qwen3.5-35B-A3B-UD-IQ3_S.gguf", "UD-IQ3_S"),
    ("Q8_0/Qwen3.5-35B-A3B-Q8_0-00001-of-00002.gguf", "Q8_0"),
    ("BF16/Qwen3.5-35B-A3B-BF16-00003-of-00004.gguf", "BF16"),
    ("Qwen3.5-35B-A3B-MXFP4_MOE.gguf", "MXFP4_MOE"),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
    ("model.gguf", None),
])
def test_quant_names(name, quant):
    assert hub.quant_name(name) == quant


def test_list_quants_groups_splits_and_gives_verdicts(fake_hub, hub_files):
    ql = hub.list_quants(REPO_BIG, vram_gb=16, ram_gb=64)
    assert [q.name for q in ql] == ["Q4_K_M", "Q8_0"]  # smallest first; no mmproj, no README
    q4, q8 = ql
    assert q4.size == hub_files["full"].stat().st_size and q4.n_parts == 1
    assert q8.n_parts == 2 and q8.first.endswith("00001-of-00002.gguf") and q8.size == 2 * 18_450_000_000
    assert q4.files[0].sha256 == "5" * 64 and q4.revision == fake_hub.repos[REPO_BIG].commit
    # Q4_K_M (19.7 GiB) does not fit 16 GB whole: experts go to RAM; Q8_0 needs more than 16 + 64
    assert q4.verdict.kind == "offload" and "system RAM" in q4.verdict.text
    assert q8.verdict.kind == "offload"
    assert hub.list_quants(REPO_BIG, vram_gb=16, ram_gb=16)[1].verdict.kind == "no"
    assert hub.list_quants(REPO_BIG, vram_gb=48, ram_gb=16)[0].verdict.kind == "gpu"
    assert "Q8_0" in ql.table() and "| Q4_K_M |" in ql._repr_markdown_()
    assert fake_hub.served(BIG_FILE) == 0  # listing reads no file bytes


def test_fit_verdict_from_header_comes_from_the_memory_planner(fake_hub):
    from qwenkit import plan
    from qwenkit.config import RunConfig

    info = hub.read_remote_info(REPO_BIG, "Q4_K_M")
    v = hub.fit_verdict(info, 16 * GiB, 64 * GiB)
    assert v.kind == "offload" and v.source == "memory plan" and v.n_cpu_moe is not None and 5 <= v.n_cpu_moe <= 40
    assert v.n_cpu_moe == plan.fit(info, 16 * GiB, RunConfig(model=str(info.source), n_ctx=8192)).n_cpu_moe
    assert f"--n-cpu-moe {v.n_cpu_moe}" in v.text
    assert hub.fit_verdict(info, 24 * GiB, 64 * GiB).kind == "gpu"
    # a bigger context or a wider KV type never needs fewer expert layers in RAM
    wider = hub.fit_verdict(info, 16 * GiB, 64 * GiB, n_ctx=65536).n_cpu_moe
    assert wider is not None and wider >= v.n_cpu_moe
    # too little RAM for the experts that must leave the GPU
    assert hub.fit_verdict(info, 16 * GiB, 6 * GiB).kind == "no"
    # less than the CUDA context and compute buffers: nothing helps
    assert hub.fit_verdict(info, GiB // 4, 512 * GiB).kind == "no"
    assert hub.fit_verdict(10 * GiB, 16 * GiB).kind == "gpu"
    assert hub.fit_verdict(20 * GiB, 8 * GiB, None).kind == "no"


def test_remote_header_of_full_size_model_reads_under_one_percent(fake_hub, hub_files):
    info = hub.read_remote_info(REPO_BIG, "Q4_K_M")
    size = hub_files["full"].stat().st_size
    served = fake_hub.served(BIG_FILE)
    assert info.arch == "qwen35moe" and info.kv_layers == tuple(range(3, 40, 4))
    assert info.kv_bytes_per_token() == 20_480 and info.file_size == size
    assert served == info.header_bytes_read and served < size / 100
    assert served < 16 << 20, f"{served:,} bytes for a {info.parts[0].header_size:,}-byte header"
    assert all(r and r.startswith("bytes=") for r in fake_hub.gets(BIG_FILE))  # only Range GETs
    print(f"remote header read: {served:,} bytes of {size:,} ({100 * served / size:.3f} %)")


def test_remote_header_of_split_model_and_quants_with_headers(fake_hub):
    ql = hub.list_quants(REPO_TINY, vram_gb=8, ram_gb=16, headers=True)
    split, q4 = ql.get("UD-Q2_K_XL"), ql.get("Q4_K_M")
    assert split.info is not None and split.verdict is not None and q4.info is not None  # headers=True reads them
    assert split.n_parts == 3 and split.info.n_parts == 3 and split.info.kv_layers == (3, 7)
    assert split.verdict.source == "memory plan"
    assert q4.info.arch == "qwen35moe"


def test_unknown_repo_quant_and_revision(fake_hub):
    with pytest.raises(DownloadError, match="has no quant 'Q5_K_M'") as e:
        hub.download(REPO_TINY, "Q5_K_M", **FAST)
    assert "Q4_K_M" in (e.value.fix or "")
    with pytest.raises(DownloadError, match="repo not found"):
        hub.list_quants("nobody/nothing")
    with pytest.raises(DownloadError, match="revision not found"):
        hub.list_quants(REPO_TINY, revision="v9")


def test_unreachable_hub_is_a_clear_error(fake_hub, monkeypatch):
    m = hub.download(REPO_TINY, "Q4_K_M", **FAST)
    fake_hub.stop()
    with pytest.raises(DownloadError, match="cannot reach") as e:
        hub.list_quants(REPO_TINY)
    assert "HF_HUB_OFFLINE" in (e.value.fix or "")
    with pytest.warns(UserWarning, match="using the local copy"):  # a verified copy still answers
        assert hub.download(REPO_TINY, "Q4_K_M", **FAST).path == m.path
    with pytest.raises(DownloadError, match="cannot reach"):
        hub.download(REPO_TINY, "UD-Q2_K_XL", **FAST)


# ------------------------------------------------------------------------------ download
def test_download_default_model_verifies_and_is_idempotent(fake_hub, hub_files, tmp_path):
    m = hub.download(REPO_SMOL, "Q4_1", progress=True)
    assert m.state == hub.STATE_VERIFIED and m.path.name == SMOL_FILE
    assert m.revision == fake_hub.repos[REPO_SMOL].commit
    assert _sha(m.path) == _sha(hub_files["smol"]) and m.sha256 == [_sha(m.path)]
    assert read_model_info(m.path).arch == "llama"
    assert fake_hub.served(SMOL_FILE) == m.size  # once, no more
    assert not _no_partials(tmp_path / "models")
    again = hub.download(REPO_SMOL, "Q4_1", progress=False)
    assert again.path == m.path and fake_hub.served(SMOL_FILE) == m.size  # nothing fetched again
    listed = [x for x in hub.local_models() if x.repo == REPO_SMOL]
    assert [(x.name, x.state) for x in listed] == [("Q4_1", hub.STATE_VERIFIED)]


def test_download_pinned_revision(fake_hub):
    commit = fake_hub.repos[REPO_TINY].commit
    m = hub.download(REPO_TINY, "Q4_K_M", revision=commit, **FAST)
    assert m.revision == commit
    assert all(commit in p for meth, p, _ in fake_hub.requests if "/resolve/" in p)


def test_split_quant_downloads_every_part(fake_hub, hub_files):
    m = hub.download(REPO_TINY, "UD-Q2_K_XL", **FAST)
    assert len(m.files) == 3 and m.path.name.endswith("00001-of-00003.gguf")
    assert m.state == hub.STATE_VERIFIED and read_model_info(m.path).n_parts == 3


def test_dropped_connection_resumes_with_range_in_the_same_run(fake_hub, hub_files):
    size = hub_files["tiny"].stat().st_size
    f = fake_hub.file(REPO_TINY, TINY_FILE)
    f.drop_at = [size // 3, 2 * size // 3]
    m = hub.download(REPO_TINY, "Q4_K_M", **FAST)
    assert _sha(m.path) == _sha(hub_files["tiny"])
    assert fake_hub.gets(TINY_FILE) == [None, f"bytes={size // 3}-", f"bytes={2 * size // 3}-"]
    assert fake_hub.served(TINY_FILE) == size


def test_interrupted_download_resumes_across_runs(fake_hub, hub_files, tmp_path):
    size = hub_files["tiny"].stat().st_size
    cut = size // 2
    f = fake_hub.file(REPO_TINY, TINY_FILE)
    f.drop_at = [cut]
    f.fail_after_cut = 10
    # first run: cut at half, then the server keeps failing: the run gives up, keeping the part
    with pytest.raises(DownloadError) as e:
        hub.download(REPO_TINY, "Q4_K_M", retries=1, **FAST)
    assert f"{cut:,} of {size:,} bytes are kept" in str(e.value) and "again to resume" in (e.value.fix or "")
    part = tmp_path / "models" / REPO_TINY.replace("/", "--") / ".incomplete" / (TINY_FILE + ".part")
    assert part.stat().st_size == cut
    assert not (part.parent.parent / TINY_FILE).exists()  # nothing that looks complete
    states = {m.state.split(" (")[0] for m in hub.local_models() if m.repo == REPO_TINY}
    assert states == {hub.STATE_INCOMPLETE}
    # second run (a new call, as after a restart): one Range request from the cut
    f.fail_next = 0  # the server is well again
    first = fake_hub.served(TINY_FILE)
    fake_hub.reset_counters()
    m = hub.download(REPO_TINY, "Q4_K_M", **FAST)
    assert fake_hub.gets(TINY_FILE) == [f"bytes={cut}-"]
    assert fake_hub.served(TINY_FILE) == size - cut
    assert first + fake_hub.served(TINY_FILE) <= 1.1 * size
    assert _sha(m.path) == _sha(hub_files["tiny"]) and m.state == hub.STATE_VERIFIED
    assert not part.exists()


def test_total_bytes_served_stay_under_1_1x_with_cuts(fake_hub, hub_files):
    size = hub_files["tiny"].stat().st_size
    f = fake_hub.file(REPO_TINY, TINY_FILE)
    f.drop_at = [size // 5 * k for k in range(1, 5)]
    hub.download(REPO_TINY, "Q4_K_M", **FAST)
    assert fake_hub.served(TINY_FILE) <= 1.1 * size
    assert len(fake_hub.gets(TINY_FILE)) == 5


def test_flipped_byte_is_caught_and_not_left_in_place(fake_hub, hub_files, tmp_path):
    f = fake_hub.file(REPO_TINY, TINY_FILE)
    f.corrupt_at = {123_457}
    with pytest.raises(DownloadError, match="checksum mismatch") as e:
        hub.download(REPO_TINY, "Q4_K_M", **FAST)
    assert "deleted" in str(e.value)
    models = tmp_path / "models"
    assert not list(models.rglob("*.gguf")) and not list(models.rglob("*.part"))
    assert not [m for m in hub.local_models() if m.repo == REPO_TINY]
    f.corrupt_at = set()  # the next run downloads afresh and succeeds
    assert hub.download(REPO_TINY, "Q4_K_M", **FAST).state == hub.STATE_VERIFIED


def test_wrong_hub_checksum_is_caught(fake_hub):
    fake_hub.file(REPO_TINY, TINY_FILE).sha256_override = "0" * 64
    with pytest.raises(DownloadError, match="lists SHA-256 0000"):
        hub.download(REPO_TINY, "Q4_K_M", **FAST)


def test_stalled_server_is_retried_then_fails_clearly(fake_hub, hub_files, tmp_path):
    size = hub_files["tiny"].stat().st_size
    f = fake_hub.file(REPO_TINY, TINY_FILE)
    f.stall_at = size // 4
    t = time.monotonic()
    with pytest.raises(DownloadError, match="stalled") as e:
        hub.download(REPO_TINY, "Q4_K_M", progress=False, stall_timeout=0.5, retries=2, retry_wait=0.01)
    took = time.monotonic() - t
    assert took < 8, took
    assert "2 retries without progress" in str(e.value) and f"{size // 4:,} of {size:,}" in str(e.value)
    assert fake_hub.gets(TINY_FILE) == [None] + [f"bytes={size // 4}-"] * 3
    f.stall_at = None  # the network is back: the next run resumes
    fake_hub.reset_counters()
    m = hub.download(REPO_TINY, "Q4_K_M", **FAST)
    assert fake_hub.served(TINY_FILE) == size - size // 4 and m.state == hub.STATE_VERIFIED


def test_server_errors_are_retried(fake_hub, hub_files):
    f = fake_hub.file(REPO_TINY, TINY_FILE)
    f.fail_next = 2
    m = hub.download(REPO_TINY, "Q4_K_M", retries=3, **FAST)
    assert m.state == hub.STATE_VERIFIED
    hub.remove_model("Q4_K_M")
    f.fail_next = 10
    with pytest.raises(DownloadError, match="HTTP 503"):
        hub.download(REPO_TINY, "Q4_K_M", retries=1, **FAST)
    assert f.fail_next == 8


def test_low_disk_fails_before_downloading(fake_hub, monkeypatch):
    monkeypatch.setattr(hub.downloader, "free_bytes", lambda path: 5 << 20)
    with pytest.raises(DownloadError, match="not enough disk space") as e:
        hub.download(REPO_TINY, "Q4_K_M", **FAST)
    size = fake_hub.file(REPO_TINY, TINY_FILE).size
    assert f"{size / 2**20:.1f} MiB more" in str(e.value) and "5.0 MiB is free" in str(e.value)
    assert fake_hub.gets(TINY_FILE) == []  # not one byte requested


def test_existing_unverified_file_is_not_overwritten(fake_hub, tmp_path):
    d = tmp_path / "models" / REPO_TINY.replace("/", "--")
    d.mkdir(parents=True)
    (d / TINY_FILE).write_bytes(b"mine")
    with pytest.raises(DownloadError, match="exists but is not a verified copy"):
        hub.download(REPO_TINY, "Q4_K_M", **FAST)
    assert (d / TINY_FILE).read_bytes() == b"mine"
    (d / TINY_FILE).unlink()
    hub.download(REPO_TINY, "Q4_K_M", **FAST)
    # the repo moves on: the verified old version is kept, and the message says how to update
    fake_hub.file(REPO_TINY, TINY_FILE).sha256_override = "7" * 64
    with pytest.raises(DownloadError, match="verified copy of another version") as e:
        hub.download(REPO_TINY, "Q4_K_M", **FAST)
    assert "--revision" in (e.value.fix or "")


# ------------------------------------------------------------------------------ offline
def test_offline_uses_the_local_copy_without_network(fake_hub, monkeypatch):
    m = hub.download(REPO_TINY, "Q4_K_M", **FAST)
    fake_hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = hub.download(REPO_TINY, "Q4_K_M", **FAST)
    assert again.path == m.path and again.state == hub.STATE_VERIFIED
    assert [q.name for q in hub.list_quants(REPO_TINY, vram_gb=16)] == ["Q4_K_M"]
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set and .* is not downloaded"):
        hub.download(REPO_TINY, "UD-Q2_K_XL", **FAST)


def test_offline_finds_huggingface_hub_cache(fake_hub, hub_files, monkeypatch, tmp_path):
    from huggingface_hub import hf_hub_download
    p = hf_hub_download(REPO_TINY, TINY_FILE, endpoint=fake_hub.endpoint, cache_dir=str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = hub.download(REPO_TINY, "Q4_K_M", **FAST)
    assert m.state == hub.STATE_HF_CACHE and Path(m.path).resolve() == Path(p).resolve()
    assert any(x.state == hub.STATE_HF_CACHE for x in hub.local_models())


# ------------------------------------------------------------------------------ local models
def test_models_list_verify_remove(fake_hub, hub_files, tmp_path):
    m = hub.download(REPO_TINY, "Q4_K_M", **FAST)
    # a partial download of another quant shows as incomplete
    f = fake_hub.file(REPO_TINY, "UD-Q2_K_XL/" + hub_files["split"][0].name)
    f.stall_at = 1000
    with pytest.raises(DownloadError):
        hub.download(REPO_TINY, "UD-Q2_K_XL", progress=False, stall_timeout=0.3, retries=0, retry_wait=0.01)
    states = sorted((x.name, x.state.split(" (")[0]) for x in hub.local_models() if x.repo == REPO_TINY)
    assert states == [("Q4_K_M", hub.STATE_VERIFIED), ("UD-Q2_K_XL", hub.STATE_INCOMPLETE)]
    assert "verified" in hub.models_table(hub.local_models())
    assert hub.verify_model("Q4_K_M", progress=False).state == hub.STATE_VERIFIED
    # a modified file is no longer "verified", and verify says it is corrupted
    data = bytearray(m.path.read_bytes())
    data[-10] ^= 1
    m.path.write_bytes(bytes(data))
    assert [x.state for x in hub.local_models() if x.name == "Q4_K_M"] == [hub.STATE_MODIFIED]
    with pytest.raises(DownloadError, match="does not match"):
        hub.verify_model(TINY_FILE, progress=False)
    removed = hub.remove_model("Q4_K_M")
    assert m.path in removed and not m.path.exists()
    hub.remove_model("UD-Q2_K_XL")
    assert not [x for x in hub.local_models() if x.repo == REPO_TINY]
    manifest = json.loads((m.path.parent / hub.MANIFEST).read_text())
    assert manifest["files"] == {}
    with pytest.raises(QwenkitError, match="no local model"):
        hub.remove_model("Q4_K_M")


# ------------------------------------------------------------------------------ CLI
def _cli(argv, capsys) -> tuple[int, str]:
    from qwenkit.cli import main
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_cli_quants_download_models(fake_hub, capsys, default_model):
    rc, out = _cli(["quants", REPO_BIG, "--vram", "16", "--ram", "64"], capsys)
    assert rc == 0 and "Q4_K_M" in out and "Q8_0" in out and "system RAM" in out
    rc, out = _cli(["quants", REPO_TINY, "--json", "--header", "Q4_K_M"], capsys)
    rows = {r["quant"]: r for r in json.loads(out)}
    assert rc == 0 and rows["Q4_K_M"]["info"]["arch"] == "qwen35moe" and rows["UD-Q2_K_XL"]["info"] is None
    rc, out = _cli(["download", REPO_TINY, "Q4_K_M", "--no-progress"], capsys)
    assert rc == 0 and "verified" in out and TINY_FILE in out
    rc, out = _cli(["download", REPO_TINY, "Q9_9", "--no-progress"], capsys)
    assert rc == 1 and "error:" in out and "fix:" in out and "Traceback" not in out
    rc, out = _cli(["models", "--no-hf-cache"], capsys)
    assert rc == 0 and "Q4_K_M" in out and "verified" in out
    rc, out = _cli(["gguf", str(default_model)], capsys)
    assert rc == 0 and "llama" in out and "integrity: ok" in out
    rc, out = _cli(["models", "--remove", "Q4_K_M"], capsys)
    assert rc == 0 and "removed" in out


# ------------------------------------------------------------------------------ practice hub
def test_practice_hub_teaches_the_whole_flow(tmp_path, monkeypatch):
    """The kit's practice hub: full-size Qwen3.5 headers to look at (verdict from the memory
    plan), a small model that downloads verified, a staged cut that resumes, and a clear refusal
    to download a listed-only file."""
    from qwenkit import practice_hub as ph_mod
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    where = ph_mod.connect("practice", models_dir=str(tmp_path / "m"))
    try:
        ph = where.practice
        assert ph is not None and where.is_practice and ph.endpoint.startswith("http://127.0.0.1:")
        assert "was not asked" in where.reason
        ql = hub.list_quants(where.repo, vram_gb=16, ram_gb=64, endpoint=where.endpoint, headers=[where.quant])
        q4 = ql.get("Q4_K_M")
        assert q4.info is not None and q4.verdict is not None
        assert q4.info.arch == "qwen35moe" and q4.info.n_layer == 40 and q4.verdict.source == "memory plan"
        assert q4.verdict.kind == "offload" and "--n-cpu-moe" in q4.verdict.text
        assert q4.info.header_bytes_read < 16 << 20
        cut = where.stage_interruption(at=0.5, outage=3)
        with pytest.raises(DownloadError, match="bytes are kept"):
            hub.download(where.download_repo, where.download_quant, dest=where.models_dir, endpoint=where.endpoint,
                         retries=1, **{k: v for k, v in FAST.items() if k != "retries"})
        where.network_back()
        m = hub.download(where.download_repo, where.download_quant, dest=where.models_dir,
                         endpoint=where.endpoint, **FAST)
        assert m.state == hub.STATE_VERIFIED and ph.gets(ph_mod.GET_FILE) == [f"bytes={cut}-"]
        assert ph.served(ph_mod.GET_FILE) == m.size - cut
        monkeypatch.setattr(hub.downloader, "free_bytes", lambda path: 1 << 50)   # past the disk check
        with pytest.raises(DownloadError, match="only its header is served"):
            hub.download(where.repo, "Q4_K_M", dest=where.models_dir, endpoint=where.endpoint, **FAST)
    finally:
        where.close()
    assert not ph.running


def test_connect_uses_the_real_hub_when_it_answers(fake_hub, tmp_path):
    from qwenkit import practice_hub as ph_mod
    where = ph_mod.connect("auto", endpoint=fake_hub.endpoint, repo=REPO_TINY, quant="Q4_K_M")
    assert not where.is_practice and where.endpoint == fake_hub.endpoint and where.repo == REPO_TINY
    gone = fake_hub.endpoint
    fake_hub.stop()                                          # the hub goes away: auto falls back
    where = ph_mod.connect("auto", endpoint=gone, repo=REPO_TINY, timeout=3)
    try:
        assert where.is_practice and where.repo == ph_mod.LOOK_REPO and where.probe_seconds < 3
        assert "cannot reach" in where.reason
    finally:
        where.close()
    with pytest.raises(hub.HubUnreachable, match="cannot reach") as e:   # "real" never falls back
        ph_mod.connect("real", endpoint=gone, timeout=3)
    assert "practice-hub" in (e.value.fix or "")


def test_probe_gives_up_on_a_silent_hub():
    """A server that accepts the connection and never answers: the probe returns at its timeout."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        t = time.monotonic()
        p = hub.probe(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.5)
        took = time.monotonic() - t
    assert not p.ok and took < 1.5 and p.seconds < 1.5, (p, took)


def test_cli_practice_hub_serves_until_stopped(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from qwenkit import practice_hub as ph_mod
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "qwenkit", "practice-hub", "--rate", "0"], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("practice hub on http://127.0.0.1:"), line
        url = line.split(" on ")[1].strip()
        with urllib.request.urlopen(f"{url}/api/models/{ph_mod.GET_REPO}?blobs=true", timeout=10) as r:
            info = json.loads(r.read())
        assert [s["rfilename"] for s in info["siblings"] if s["rfilename"].endswith(".gguf")] == [ph_mod.GET_FILE]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    assert proc.returncode == 0


@pytest.mark.slow
def test_notebook02_with_hf_hub_offline_set(notebook02_params, monkeypatch, tmp_path):
    """A learner who set HF_HUB_OFFLINE=1 (the old advice): no traceback, no request anywhere,
    the notebook says why nothing is downloaded and shows what is on disk."""
    from nbrun import NOTEBOOKS, cell_text, run_notebook
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = run_notebook(NOTEBOOKS / "02_download.ipynb", **notebook02_params)
    text = cell_text(nb)
    assert "Traceback" not in text and "HF_HUB_OFFLINE is set" in text
    assert "nothing can be downloaded offline" in text and "no local models" in text
    log = (tmp_path / "netguard.log").read_text()
    assert log.startswith("netguard on") and "huggingface.co" not in log      # not even asked
