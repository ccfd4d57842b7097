"""kvnotes: notes apply to the build and model at hand; each KV pair quotes its own measurement
(checked against the recorded benchmark files) or says it was not measured."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenkit import kvnotes
from qwenkit.config import RunConfig
from qwenkit.gguf_info import read_model_info

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _joined(cfg, **kw) -> str:
    return " ".join(kvnotes.notes(cfg, **kw))


def test_cpu_build_gets_no_cuda_note():
    for k, v in (("q8_0", "f16"), ("q4_0", "f16"), ("q8_0", "q8_0")):
        text = _joined(RunConfig(model="m.gguf", type_k=k, type_v=v), gpu=False)
        assert "CUDA" not in text and "flash-attention kernel" not in text and "H200" not in text


def test_gpu_build_unmatched_pair_note_quotes_its_own_pair():
    text = _joined(RunConfig(model="m.gguf", type_k="q8_0", type_v="f16"), gpu=True)
    assert "no matched flash-attention kernel" in text
    assert "241.7 tok/s vs 247.5 for f16/f16 (-2 %)" in text       # q8_0/f16's own figure
    text = _joined(RunConfig(model="m.gguf", type_k="q4_0", type_v="f16"), gpu=True)
    assert "This pair was not measured on the Qwen3.5-35B-A3B shape" in text
    assert "q8_0/f16" not in text.split("measured:")[0]             # no other pair's figure as its own


@pytest.mark.parametrize("k,v,gpu,want", [
    ("q8_0", "q8_0", True, "237.4 tok/s vs 247.5 for f16/f16 at depth 0 (-4 %), "
                           "215.0 vs 238.9 at depth 16,384 (-10 %)"),
    ("q4_0", "q4_0", True, "236.7 tok/s vs 247.5 for f16/f16 at depth 0 (-4 %), "
                           "213.3 vs 238.9 at depth 16,384 (-11 %)"),
    ("q4_0", "q8_0", True, "K q4_0/V q8_0 was not measured on the Qwen3.5-35B-A3B shape"),
    ("q8_0", "q8_0", False, "0.78x the f16/f16 decode speed"),
    ("q5_1", "f16", False, "nor on the default model"),
])
def test_each_pair_quotes_its_measurement_or_says_not_measured(k, v, gpu, want):
    text = _joined(RunConfig(model="m.gguf", type_k=k, type_v=v), gpu=gpu)
    assert want in text, text


def test_figures_match_the_recorded_benchmarks():
    suite = json.loads((RESULTS / "gpu_suite.json").read_text())
    rows = {(r["config"]["type_k"], r["config"]["type_v"], r["n_depth"]): r["mean"] for r in suite["results"]
            if r["path"] == "llama-bench" and r["test"].startswith("tg128") and r["config"].get("type_k")}
    base = [c for c in suite["comparisons"] if c["figure"].startswith("KV q8_0/q8_0 vs f16 (llama-bench tg128")]
    assert round(base[0]["baseline"], 1) == kvnotes.QWEN35_GPU[("f16", "f16")][0]
    for (k, v), (d0, d16k) in kvnotes.QWEN35_GPU.items():
        if (k, v) != ("f16", "f16"):
            assert round(rows[(k, v, 0)], 1) == d0 and round(rows[(k, v, 16384)], 1) == d16k
    speed = json.loads((RESULTS / "kv_quality.json").read_text())["speed"]
    for (k, v), r in kvnotes.DEFAULT_MODEL_CPU_D4096.items():
        assert round(speed[f"{k}/{v}"]["llama-bench tg64 @ d4096 vs f16"], 2) == r


def test_layer_counts_and_savings_come_from_the_header(default_model, engine_models):
    smol = _joined(RunConfig(model=str(default_model), n_ctx=8192, type_k="q8_0", type_v="q8_0"), gpu=False)
    info = read_model_info(default_model)
    assert f"KV cache in {len(info.kv_layers)} of its {info.n_layer} layers" in smol   # 30 of 30
    assert "180.0 MiB in f16/f16 and 95.6 MiB" in smol                                 # kv_quality.json's figures
    tiny = engine_models["qwen35moe"]
    ti = read_model_info(tiny)
    text = _joined(RunConfig(model=str(tiny), n_ctx=512, type_k="q8_0", type_v="q8_0"), gpu=False)
    assert f"KV cache in {len(ti.kv_layers)} of its {ti.n_layer} layers" in text and "of 40" not in text
    assert kvnotes.notes(RunConfig(model=str(tiny)), gpu=False) == []              # f16: nothing to say
