"""Fixtures for the hub area: the kit's practice hub (qwenkit.practice_hub) serving real GGUF
files for the tests, and notebook 02 run with the network cut off.

Repos the tests put on it (plain HTTP, no Xet):
  REPO_BIG   the full-size sparse synthetic Qwen3.5-35B-A3B Q4_K_M (19.7 GiB apparent, a few MB
             on disk), a 2-part Q8_0 listed only, an mmproj file and a README
  REPO_TINY  the tiny synthetic qwen35moe (10 MB) as Q4_K_M, and a 3-part split model (UD-Q2_K_XL)
  REPO_SMOL  the default model, SmolLM2-135M-Instruct Q4_1 (98 MB)
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from qwenkit.practice_hub import PracticeHub

REPO_BIG = "qwenkit-test/Qwen3.5-35B-A3B-GGUF"
REPO_TINY = "qwenkit-test/Qwen3.5-tiny-GGUF"
REPO_SMOL = "qwenkit-test/SmolLM2-135M-Instruct-GGUF"
BIG_FILE = "Qwen3.5-35B-A3B-Q4_K_M.gguf"
TINY_FILE = "Qwen3.5-tiny-Q4_K_M.gguf"
SMOL_FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"


def hub_write_gguf(path: Path, arch: str = "qwen35moe", kv: dict | None = None, n_layer: int = 8,
               split_max_tensors: int = 0, recurrent_layers: list[bool] | None = None,
               nextn: int = 0) -> list[Path]:
    """A small GGUF of `arch` (F32 tensors with the layer/expert names the kit looks at),
    optionally split into parts of `split_max_tensors` tensors. Returns the written files."""
    import gguf

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    w.add_name("qwenkit test model")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_block_count(n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_key_length(16)
    w.add_value_length(16)
    w.add_expert_count(4)
    w.add_expert_used_count(2)
    w.add_ssm_conv_kernel(4)
    w.add_ssm_state_size(16)
    w.add_ssm_group_count(2)
    w.add_ssm_time_step_rank(4)
    w.add_ssm_inner_size(64)
    if nextn:
        w.add_uint32(f"{arch}.nextn_predict_layers", nextn)
    if recurrent_layers is not None:
        w.add_array(f"{arch}.attention.recurrent_layers", recurrent_layers)
    else:
        w.add_full_attention_interval(4)
    for k, v in (kv or {}).items():
        if isinstance(v, int):
            w.add_uint32(k, v)
        else:
            w.add_string(k, str(v))
    w.add_tensor("token_embd.weight", np.zeros((32, 64), np.float32))
    for il in range(n_layer):
        w.add_tensor(f"blk.{il}.attn_norm.weight", np.ones(64, np.float32))
        w.add_tensor(f"blk.{il}.ffn_up_exps.weight", np.zeros((4, 32, 64), np.float32))
        w.add_tensor(f"blk.{il}.ffn_down_exps.weight", np.zeros((4, 64, 32), np.float32))
        w.add_tensor(f"blk.{il}.ffn_up_shexp.weight", np.zeros((32, 64), np.float32))
    w.add_tensor("output_norm.weight", np.ones(64, np.float32))
    names = w.format_shard_names(Path(path)) if split_max_tensors else [Path(path)]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sorted(Path(path).parent.glob(Path(path).stem + "*.gguf")) if split_max_tensors else names


def _found(pattern: str, text: str) -> re.Match[str]:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} is not in the output:\n{text[:3000]}"
    return m


@pytest.fixture(scope="session")
def hub_files(tmp_path_factory) -> dict[str, Path | list[Path]]:
    """The GGUF files the fake hub serves (written once per test session)."""
    from qwenkit.models import default_model_path
    from qwenkit.synthetic import tiny_model, write_model

    d = tmp_path_factory.mktemp("hubfiles")
    full = write_model(d / BIG_FILE, arch="qwen35moe", size="full", weights="sparse", progress=False)
    split = hub_write_gguf(d / "split" / "Qwen3.5-test-UD-Q2_K_XL.gguf", split_max_tensors=13, nextn=1,
                       recurrent_layers=[True, True, True, False] * 2 + [False], n_layer=9)
    q8 = []
    for i in (1, 2):  # listed with their size only; never downloaded
        p = d / f"Qwen3.5-35B-A3B-Q8_0-{i:05d}-of-00002.gguf"
        with open(p, "wb") as f:
            f.truncate(18_450_000_000)
        q8.append(p)
    return {"full": full, "tiny": tiny_model("qwen35moe"), "split": split, "q8": q8,
            "smol": default_model_path()}


def hub_populate(hub: PracticeHub, files: dict) -> PracticeHub:
    hub.add_file(REPO_BIG, "README.md", data=b"# Qwen3.5-35B-A3B GGUF (qwenkit test copy)\n")
    hub.add_file(REPO_BIG, BIG_FILE, source=files["full"], sha256="5" * 64)  # never downloaded
    for i, p in enumerate(files["q8"], 1):
        hub.add_file(REPO_BIG, f"Q8_0/Qwen3.5-35B-A3B-Q8_0-{i:05d}-of-00002.gguf", source=p, sha256=f"{i}" * 64)
    hub.add_file(REPO_BIG, "mmproj-F16.gguf", data=b"GGUF" + bytes(60))
    hub.add_file(REPO_TINY, "README.md", data=b"# tiny\n")
    hub.add_file(REPO_TINY, TINY_FILE, source=files["tiny"])
    for p in files["split"]:
        hub.add_file(REPO_TINY, f"UD-Q2_K_XL/{p.name}", source=p)
    hub.add_file(REPO_SMOL, SMOL_FILE, source=files["smol"])
    return hub


@pytest.fixture
def fake_hub(hub_files, monkeypatch, tmp_path):
    """A started practice hub with the tests' repos REPO_BIG, REPO_TINY, REPO_SMOL; HF_ENDPOINT
    points at it, Xet is off, models go to tmp_path/models and huggingface_hub's cache to tmp_path/hf."""
    hub = hub_populate(PracticeHub(stall_seconds=20), hub_files).start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("QWENKIT_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def notebook02_params(tmp_path, monkeypatch) -> dict:
    """Notebook 02 as a learner without network meets it: the kernel can reach loopback only
    (tests/netguard.py, installed as an IPython startup file, refuses every other connect and
    name lookup and logs it), no HF_ENDPOINT, HUB "auto". Models and huggingface_hub's cache
    live under tmp_path; the practice hub's files come from the kit's cache (written once)."""
    import netguard
    monkeypatch.setenv("IPYTHONDIR", str(netguard.install(tmp_path / "ipython")))
    monkeypatch.setenv("QWENKIT_NETGUARD_LOG", str(tmp_path / "netguard.log"))
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("QWENKIT_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return {"HUB": "auto", "MODELS_DIR": str(tmp_path / "nb-models")}


@pytest.fixture
def notebook02_check(tmp_path):
    """check(nb, text) after notebook 02 ran under notebook02_params: the real hub was asked and
    refused within 3 s, the practice hub answered on 127.0.0.1, the download was cut, kept and
    resumed with one Range request from the cut, and verified."""

    def check(nb, text: str) -> None:
        from qwenkit import practice_hub
        log = (tmp_path / "netguard.log").read_text()
        assert log.startswith("netguard on"), "the network guard did not run in the kernel"
        assert "huggingface.co" in log, f"the notebook never tried the real hub:\n{log}"
        m = re.search(r"cannot reach https://huggingface.co: .* \(asked for ([0-9.]+) s\)", text)
        assert m and float(m.group(1)) < 3.0, text[:3000]
        assert re.search(r"using the practice hub at http://127\.0\.0\.1:\d+", text)
        assert re.search(r"\| Q4_K_M \| 19\.7\d GiB \|", text) and "--n-cpu-moe" in text   # table, verdict
        cut = int(_found(r"interrupted at byte ([0-9,]+)", text).group(1).replace(",", ""))
        assert re.search(rf"{cut:,} of [0-9,]+ bytes are kept", text), text
        assert "incomplete" in text                                         # the kept part, listed
        assert f"byte requests since the cut: ['bytes={cut}-']" in text      # one Range request
        sent, total = (int(x.replace(",", "")) for x in _found(r"([0-9,]+) bytes sent of ([0-9,]+)", text).groups())
        assert sent == total - cut                                          # only the missing bytes
        assert "verified - " in text and practice_hub.GET_FILE in text
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors

    return check
