"""The one path to the real model: `serve --model REPO:QUANT --fit`, against the local fake hub
(the real hub cannot be reached from CI; the fake speaks its protocol to the real client)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from qwenkit import plan, realmodel
from qwenkit.config import RunConfig
from qwenkit.errors import ConfigError, GGUFError
from qwenkit.gguf_info import read_model_info
from qwenkit.units import GiB

from fixtures_hub import REPO_TINY


def test_specs():
    assert realmodel.is_hub_spec("unsloth/Qwen3.5-35B-A3B-GGUF:Q4_K_M")
    assert not realmodel.is_hub_spec("model.gguf") and not realmodel.is_hub_spec("C:/models/x.gguf".replace("C:", ""))
    with pytest.raises(GGUFError, match="does not exist"):
        realmodel.resolve_model("/nonexistent/model.gguf")


def test_resolve_downloads_once_then_uses_the_verified_copy(fake_hub):
    path = realmodel.resolve_model(f"{REPO_TINY}:Q4_K_M", progress=False)
    assert path.is_file() and read_model_info(path).arch == "qwen35moe"
    served = fake_hub.served(path.name) if hasattr(fake_hub, "served") else None
    again = realmodel.resolve_model(f"{REPO_TINY}:Q4_K_M", progress=False)
    assert again == path
    if served is not None:
        assert fake_hub.served(path.name) == served  # no second download


def test_fit_config_matches_the_planner_for_the_full_size_model(hub_files):
    full = hub_files["full"]  # full-size sparse Qwen3.5-35B-A3B Q4_K_M (header only)
    cfg = RunConfig(model=str(full), n_ctx=8192)
    r = realmodel.fit_config(cfg, 16 * GiB)
    assert r.fits and r.cfg.n_gpu_layers == -1 and 5 <= r.cfg.n_cpu_moe <= 20
    assert r.cfg.n_cpu_moe == plan.fit(read_model_info(full), 16 * GiB, cfg).n_cpu_moe
    assert r.plan.gpu_total <= 16 * GiB
    with pytest.raises(ConfigError, match="does not fit"):
        realmodel.fit_config(cfg, GiB // 4)


def test_fit_without_a_gpu_says_how_to_plan_for_one(default_model):
    with pytest.raises(ConfigError, match="--fit needs a GPU") as e:
        realmodel.fit_config(RunConfig(model=str(default_model)))
    assert "--vram 16GiB" in (e.value.fix or "")


@pytest.mark.slow
def test_serve_repo_quant_fit_downloads_plans_and_serves(fake_hub, hub_files, tmp_path):
    # a budget 1 byte short of everything on the GPU: the fit must keep some experts in RAM
    cfg = RunConfig(model=str(hub_files["tiny"]), n_ctx=512)
    budget = plan.plan(read_model_info(hub_files["tiny"]), cfg, gpu=True).gpu_total - 1
    env = {**os.environ, "QWENKIT_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "qwenkit", "serve", "--model", f"{REPO_TINY}:Q4_K_M", "--fit",
                        "--vram", str(budget), "--n_ctx", "512", "--n_threads", "1", "--port", "any", "--background"],
                       capture_output=True, text=True, timeout=300, env=env, check=False)
    try:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        out = p.stdout
        assert "experts of the first" in out and "n_cpu_moe=" in out  # the fit's reason and plan
        assert "total" in out and "GPU MiB" in out
        assert "http://127.0.0.1:" in out
    finally:
        subprocess.run([sys.executable, "-m", "qwenkit", "serve", "--stop"], env=env, timeout=60, check=False)
