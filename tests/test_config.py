"""RunConfig: validation, notes, renderings, and the recipe's flags turned into a server that starts."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from qwenkit.config import KV_TYPES, RunConfig, from_recipe_flags, kv_type_id
from qwenkit.errors import ConfigError

RECIPE = "--cache_type_k q8_0 --n_gpu_layers -1 --flash_attn True --n_ctx 8192"


def test_kv_types_by_name_and_id():
    cfg = RunConfig(model="m.gguf", type_k="Q8_0", type_v="q4_0")
    assert (cfg.type_k, cfg.type_v) == ("q8_0", "q4_0")
    assert kv_type_id("q8_0") == 8 and kv_type_id(8) == 8 and kv_type_id("iq4_nl") == 20
    kw = cfg.llama_kwargs()
    assert (kw["type_k"], kw["type_v"]) == (8, 2)


def test_unknown_type_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        RunConfig(model="m.gguf", type_k="q9_9")
    assert "q9_9" in str(e.value) and all(n in (e.value.fix or "") for n in KV_TYPES)


def test_quantized_v_needs_flash_attention():
    with pytest.raises(ConfigError, match="flash attention"):
        RunConfig(model="m.gguf", type_v="q8_0", flash_attn=False)
    # quantized K alone is allowed without flash attention, as in llama.cpp
    RunConfig(model="m.gguf", type_k="q8_0", flash_attn=False)


def test_unmatched_pair_is_allowed_with_measured_note():
    cfg = RunConfig(model="m.gguf", type_k="q8_0", type_v="f16")
    notes = " ".join(cfg.notes(gpu=True))              # a CUDA build (tests/test_kvnotes.py: the rest)
    assert "no matched flash-attention kernel" in notes and "Measured" in notes
    assert "buys memory, not speed" in notes
    assert RunConfig(model="m.gguf").notes(gpu=True) == []
    assert not any("matched" in n for n in RunConfig(model="m.gguf", type_k="q8_0", type_v="q8_0").notes(gpu=True))


def test_bad_values_are_errors_with_fixes():
    bad: list[dict[str, Any]] = [{"n_ctx": -1}, {"n_cpu_moe": -2}, {"n_threads": 0}, {"n_batch": 256, "n_ubatch": 512}]
    for kw in bad:
        with pytest.raises(ConfigError) as e:
            RunConfig(model="m.gguf", **kw)
        assert e.value.fix
    with pytest.raises(ConfigError, match="beyond the model's context length 8192"):
        RunConfig(model="m.gguf", n_ctx=16384).check_context(8192)


def test_frozen_and_replace():
    cfg = RunConfig(model="m.gguf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_ctx = 1  # type: ignore[misc]
    assert cfg.replace(n_ctx=1024).n_ctx == 1024 and cfg.n_ctx == 8192


def test_server_args_fix_the_servers_defaults():
    args = RunConfig(model="m.gguf", type_k="q8_0", type_v="q8_0").server_args()
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--type_k"] == "8" and pairs["--type_v"] == "8"
    assert pairs["--logits_all"] == "false" and pairs["--interrupt_requests"] == "false"
    assert pairs["--flash_attn"] == "true" and pairs["--n_gpu_layers"] == "-1"
    assert pairs["--model_alias"] == "qwen3.5-35b"
    assert "--cache_type_k" not in args and "--cache_type" not in args


# What qwenkit/bench.py rendered for these configs before RunConfig took the job (a6d1c3a:
# NativeServer's argv after `-m MODEL --host H --port P`, and bench.llama_bench_args).
_LLAMA_CPP_CASES = [
    (dict(model="m.gguf", n_threads=4),
     ["-c", "8192", "-t", "4", "-tb", "4", "-ngl", "999", "-fa", "on", "-ctk", "f16", "-ctv", "f16",
      "-b", "512", "-ub", "512", "-np", "1", "--no-webui", "-a", "qwen3.5-35b"],
     ["-t", "4", "-ngl", "999", "-fa", "1", "-ctk", "f16", "-ctv", "f16", "-b", "512", "-ub", "512",
      "-ncmoe", "0"]),
    (dict(model="/x/q.gguf", n_ctx=65536, type_k="q8_0", type_v="q4_0", n_gpu_layers=20, n_cpu_moe=8,
          n_threads=8, n_threads_batch=16, n_batch=2048, n_ubatch=1024, alias="a"),
     ["-c", "65536", "-t", "8", "-tb", "16", "-ngl", "20", "-fa", "on", "-ctk", "q8_0", "-ctv", "q4_0",
      "-b", "2048", "-ub", "1024", "-np", "1", "--no-webui", "-a", "a", "--n-cpu-moe", "8"],
     ["-t", "8", "-ngl", "20", "-fa", "1", "-ctk", "q8_0", "-ctv", "q4_0", "-b", "2048", "-ub", "1024",
      "-ncmoe", "8"]),
    (dict(model="m.gguf", flash_attn=False, type_k="q8_0", n_threads=2, n_gpu_layers=0, parallel=4),
     ["-c", "8192", "-t", "2", "-tb", "2", "-ngl", "0", "-fa", "off", "-ctk", "q8_0", "-ctv", "f16",
      "-b", "512", "-ub", "512", "-np", "1", "--no-webui", "-a", "qwen3.5-35b"],
     ["-t", "2", "-ngl", "0", "-fa", "0", "-ctk", "q8_0", "-ctv", "f16", "-b", "512", "-ub", "512",
      "-ncmoe", "0"]),
]


@pytest.mark.parametrize("settings,server,bench", _LLAMA_CPP_CASES)
def test_llama_cpp_tool_flags_are_the_benchmarks_own(settings, server, bench):
    cfg = RunConfig(**settings)
    assert cfg.llama_server_args() == server
    assert cfg.llama_bench_args() == bench


def test_save_and_load_round_trip(tmp_path):
    cfg = RunConfig(model="m.gguf", n_ctx=2048, type_k="q8_0")
    path = cfg.save(tmp_path / "tuned.json")
    assert RunConfig.load(path) == cfg
    (tmp_path / "bad.json").write_text(json.dumps({"model": "m", "cache_type_k": "q8_0"}))
    with pytest.raises(ConfigError, match="cache_type_k"):
        RunConfig.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "missing.json")


def test_recipe_flags_translate():
    cfg, server_only, notes = from_recipe_flags(RECIPE + " --model m.gguf --host 0.0.0.0 --port 8000")
    assert (cfg.type_k, cfg.type_v, cfg.n_gpu_layers, cfg.flash_attn, cfg.n_ctx) == ("q8_0", "f16", -1, True, 8192)
    assert server_only == {"host": "0.0.0.0", "port": "8000"}
    assert any("--type_k 8" in n for n in notes)
    with pytest.raises(ConfigError, match="unrecognised flag"):
        from_recipe_flags("--model m.gguf --bogus 1")


# every flag from_recipe_flags read before it was generated from RunConfig's fields (a6d1c3a)
_RECIPE_SPELLINGS = {
    "--model": "model", "-m": "model", "--n_ctx": "n_ctx", "-c": "n_ctx",
    "--n_gpu_layers": "n_gpu_layers", "-ngl": "n_gpu_layers", "--flash_attn": "flash_attn",
    "--cache_type_k": "type_k", "--cache-type-k": "type_k", "-ctk": "type_k", "--type_k": "type_k",
    "--cache_type_v": "type_v", "--cache-type-v": "type_v", "-ctv": "type_v", "--type_v": "type_v",
    "--n_threads": "n_threads", "-t": "n_threads", "--n_batch": "n_batch", "-b": "n_batch",
    "--n_ubatch": "n_ubatch", "-ub": "n_ubatch", "--model_alias": "alias", "--chat_format": "chat_format",
    "--n_cpu_moe": "n_cpu_moe", "--n-cpu-moe": "n_cpu_moe", "-ncmoe": "n_cpu_moe",
    "--parallel": "parallel", "-np": "parallel",
}


def test_recipe_flags_keep_every_old_spelling():
    from qwenkit.config import setting
    for flag, name in _RECIPE_SPELLINGS.items():
        assert flag in setting(name).flags, flag
        value = {"flash_attn": "false", "type_k": "q8_0", "type_v": "f16", "model": "m.gguf",
                 "alias": "a", "chat_format": "chatml", "n_batch": "1024"}.get(name, "3")
        cfg, _, _ = from_recipe_flags([flag, value] + (["--model", "m.gguf"] if name != "model" else []))
        assert getattr(cfg, name) == setting(name).parse(value), flag
    cfg, _, _ = from_recipe_flags("--model=m.gguf --n_ctx=1024 --type_v=8")       # inline values
    assert (cfg.n_ctx, cfg.type_v) == (1024, "q8_0")
    with pytest.raises(ConfigError, match="--n_ctx expects an integer"):
        from_recipe_flags("--model m.gguf --n_ctx big")
    with pytest.raises(ConfigError, match="no --model"):
        from_recipe_flags("--n_ctx 1024")


def test_settings_cover_every_field_once():
    import dataclasses

    from qwenkit.config import settings
    ss = settings()
    assert [s.name for s in ss] == [f.name for f in dataclasses.fields(RunConfig)]
    spellings = [flag for s in ss for flag in s.flags + ((s.negation,) if s.negation else ())]
    assert len(spellings) == len(set(spellings))                    # no flag names two fields
    assert all(s.help for s in ss)
    kinds = {s.name: (s.kind, s.optional) for s in ss}
    assert kinds["n_ctx"] == (int, False) and kinds["prompt_cache_mib"] == (int, True)
    assert kinds["kv_unified"] == (bool, True) and kinds["chat_format"] == (str, True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env() -> dict:
    # llama_cpp.server reads HOST/PORT/... from the environment and the environment wins
    return {k: v for k, v in os.environ.items() if k.upper() not in {"HOST", "PORT", "API_KEY", "MODEL"}}


@pytest.mark.slow
def test_recipe_flags_as_written_do_not_exist(default_model):
    """The blog's `--cache_type_k q8_0` is refused by llama_cpp.server's own parser."""
    proc = subprocess.run([sys.executable, "-m", "llama_cpp.server", "--model", str(default_model),
                           "--cache_type_k", "q8_0"], capture_output=True, text=True, timeout=120, check=False,
                          env=_server_env())
    assert proc.returncode != 0
    assert "cache_type_k" in proc.stderr


@pytest.mark.slow
def test_translated_recipe_command_really_starts(default_model):
    cfg, _, _ = from_recipe_flags(RECIPE, model=str(default_model))
    cfg = cfg.replace(n_ctx=1024)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", *cfg.server_args(),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_server_env())
    assert proc.stderr is not None
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    models = json.load(r)
                break
            except OSError:
                assert time.time() < deadline, "server never answered /v1/models"
                time.sleep(0.5)
        assert models["data"][0]["id"] == "qwen3.5-35b"
        body = json.dumps({"model": "qwen3.5-35b", "max_tokens": 8, "temperature": 0,
                           "messages": [{"role": "user", "content": "Say hello."}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            reply = json.load(r)
        assert reply["choices"][0]["message"]["content"].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
