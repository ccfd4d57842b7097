"""benchmarks/RESULTS.md is generated from the committed JSON: the two must agree, and every
JSON must say where it came from (machine, date, commit, model) and keep its ratios honest."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _gen():
    return load_script("benchmarks/results_md.py")


def test_results_md_matches_the_json():
    md = ROOT / "benchmarks" / "RESULTS.md"
    assert md.is_file(), "benchmarks/RESULTS.md is missing: run python benchmarks/results_md.py"
    assert md.read_text() == _gen().render(), \
        "benchmarks/RESULTS.md disagrees with benchmarks/results/*.json: run python benchmarks/results_md.py"


JSONS = sorted(RESULTS.glob("*.json"))


def test_there_are_results():
    assert JSONS, "no committed benchmark results"
    assert (RESULTS / "cpu_compare.json").is_file()


@pytest.mark.parametrize("path", JSONS, ids=lambda p: p.name)
def test_result_file_says_where_it_came_from(path):
    doc = json.loads(path.read_text())
    meta = doc["meta"]
    for k in ("date", "commit", "model", "cpu"):
        assert meta.get(k), f"{path.name}: meta.{k} missing"
    assert "gpu" in meta
    for r in doc.get("results", []):
        rates = r["rates"]
        if rates:
            assert r["mean"] == pytest.approx(sum(rates) / len(rates))
    for c in doc.get("comparisons", []):
        assert c["ratio"] == pytest.approx(c["value"] / c["baseline"])
    for c in doc.get("concurrency", []):  # benchmarks/concurrency.py: kit / llama-server, same run
        k, n = c["kit"], c["llama_server"]
        for ratio, key in (("aggregate_ratio", "aggregate_tps"), ("ttft_p50_ratio", "ttft_p50_s"),
                           ("ttft_p90_ratio", "ttft_p90_s")):
            if c.get(ratio) is not None:
                assert c[ratio] == pytest.approx(k[key] / n[key])
        assert k["aggregate_tps"] == pytest.approx(sum(k["aggregate_tps_rounds"]) / len(k["aggregate_tps_rounds"]))


def test_render_is_deterministic():
    g = _gen()
    assert g.render() == g.render()


@pytest.mark.parametrize("name", ["multiturn_cpu_shared", "multiturn_cpu_qwen35moe_shared"])
def test_shared_prompt_figures_follow_from_their_requests(name):
    """The shared-system-prompt tables are benchmarks/multiturn.py's summary of the recorded
    requests (recomputed here), and the kit reused the system prompt on every later chat."""
    mt = load_script("benchmarks/multiturn.py")
    doc = json.loads((RESULTS / f"{name}.json").read_text())
    for scen, sm in zip(doc["scenarios"], doc["multiturn"], strict=True):
        assert mt.summarize_shared(scen, sm["system_tokens"]) == sm
        n = len(sm["per_chat"])
        assert sm["overall"]["kit_reused_system"] == f"{n - 1}/{n - 1}" and sm["overall"]["errors"] == 0
