"""qwenkit.widgets: the tuning panel, driven from code the way a person drives it in a browser
(set control values, click Relaunch), against the real llama.cpp on the small default model."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwenkit import widgets
from qwenkit.config import RunConfig
from qwenkit.engine import rss_bytes
from qwenkit.errors import ConfigError

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent


def _text(html_value: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html_value))


def test_ctx_options_are_powers_of_two_up_to_the_model():
    assert widgets.ctx_options(8192) == [256, 512, 1024, 2048, 4096, 8192]
    assert widgets.ctx_options(262_144)[-1] == 262_144
    assert widgets.ctx_options(40_960)[-2:] == [32_768, 40_960]   # the model's own limit is a stop


def test_controls_follow_the_model(widgets_panel, engine_models):
    dense = widgets_panel()
    assert [v for _, v in dense.n_ctx.options][-1] == dense.info.context_length == 8192
    assert dense.n_cpu_moe is None and "n_cpu_moe" not in dense.controls   # MoE only
    assert (dense.n_gpu_layers.min, dense.n_gpu_layers.max) == (-1, dense.info.n_layer_all + 1)
    assert set(dense.type_k.options) >= {"f16", "q8_0", "q4_0"}
    assert dense.n_ctx.continuous_update is False          # a drag is one change, not hundreds
    moe = widgets_panel(engine_models["qwen35moe"])
    assert (moe.n_cpu_moe.min, moe.n_cpu_moe.max) == (0, moe.info.n_layer_all)
    assert "widget-view" in "".join(moe._repr_mimebundle_())   # displays as a widget


def test_moving_controls_updates_the_plan_not_the_model(widgets_panel):
    p = widgets_panel(n_ctx=512)
    p.relaunch_button.click()
    llm = p.engine.llm
    assert "512 cells" in _text(p.plan_html.value)
    p.set(n_ctx=4096)
    p.n_ctx.value = 8192                                      # as a slider drag would
    assert "8192 cells" in _text(p.plan_html.value)             # the plan follows the controls
    assert "RAM: plan" in _text(p.plan_html.value) and "available" in _text(p.plan_html.value)
    assert p.engine.llm is llm and llm.n_ctx() == 512          # ... the model does not
    assert len(p.history) == 1


def test_relaunch_changes_the_live_model(widgets_panel):
    p = widgets_panel(n_ctx=512)
    assert "no model loaded" in _text(p.status_html.value)
    p.relaunch_button.click()
    first = p.engine.llm
    assert first.n_ctx() == 512
    assert p.engine.log.kv_cache()[0].type_k == "f16"

    p.set(n_ctx=1024, type_k="q8_0", type_v="q8_0")
    p.relaunch_button.click()
    rec = p.last
    assert rec.ok, rec.error
    assert p.engine.llm is not first and p.engine.llm.n_ctx() == 1024
    (kv,) = p.engine.log.kv_cache()                          # llama.cpp's log of the new context
    assert (kv.type_k, kv.type_v, kv.cells) == ("q8_0", "q8_0", 1024)
    assert rec.live_n_ctx == 1024 and rec.kv_types == ("q8_0", "q8_0")
    status = _text(p.status_html.value)
    assert "n_ctx 1024" in status and "K q8_0 / V q8_0" in status
    # load time, llama.cpp's allocation next to the estimate, a short measurement
    assert 0 < rec.load_seconds < 60
    assert rec.allocated_total == pytest.approx(rec.estimate_total, rel=0.10)
    assert rec.allocated["KV cache"][1] == pytest.approx(rec.estimate["KV cache"][1], rel=0.01)
    assert rec.bench["pp_tok_s"] > 0 and rec.bench["tg_tok_s"] > 0
    assert p.progress.value == 1.0 and "done" in p.progress_label.value   # the progress indicator ran
    result = _text(p.result_html.value)
    assert "load" in result and "pp" in result and "tg" in result and "llama.cpp" in result
    assert rec.freed > 0                                      # closing the old model gave memory back
    # history: a row and a plot point per relaunch
    assert [r["live n_ctx"] for r in p.history_rows()] == [512, 1024]
    assert p.history_table().count("\n") == 2
    assert p.plot.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "q8_0/q8_0" in _text(p.history_html.value)


def test_quick_bench_fits_the_context_and_leaves_the_model_as_it_was(default_model):
    """The panel's measurement is qwenkit.bench's (kit path): sizes cut to a small context, a
    result for each, and afterwards the model answers as a freshly loaded one does."""
    from qwenkit.engine import load
    llm = load(RunConfig(model=str(default_model), n_ctx=256))
    try:
        prompt = "The history of the city begins with"
        before = llm.create_completion(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
        q = widgets.quick_bench(llm, n_prompt=1000, n_gen=200)
        assert (q["n_prompt"], q["n_gen"]) == (256 - 64 - 2, 64)
        assert q["pp_tok_s"] > 0 and q["tg_tok_s"] > 0
        after = llm.create_completion(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
        assert after == before and before
    finally:
        llm.close()


def test_invalid_choice_is_refused_with_its_reason(widgets_panel):
    p = widgets_panel(n_ctx=512)
    p.relaunch_button.click()
    llm = p.engine.llm
    p.set(type_v="q8_0", flash_attn=False)
    check = _text(p.check_html.value)
    assert "refused" in check and "needs flash attention" in check and "flash_attn=True" in check
    assert p.relaunch_button.disabled
    assert p.relaunch() is None                               # a click from code is refused too
    p.relaunch_button.click()
    assert p.engine.llm is llm and len(p.history) == 1         # nothing closed, nothing loaded
    assert "not relaunched" in _text(p.status_html.value)
    with pytest.raises(ConfigError, match="flash attention"):
        p.save()                                               # nor saved
    p.set(flash_attn=True)
    assert not p.relaunch_button.disabled


def test_plan_for_a_gpu_build_splits_gpu_and_ram(widgets_panel):
    """Planning for a CUDA build (forced here; CI has no GPU): layers and KV on the GPU, the
    input layer in RAM, and an honest word where no GPU reports its free memory."""
    p = widgets_panel(gpu=True, n_ctx=2048)
    plan = p.plan()
    assert plan.gpu and plan.kv_k[0] > 0 and plan.weights_cpu > 0
    text = _text(p.plan_html.value)
    assert "GPU: plan" in text and "CUDA context" in text
    p.set(n_gpu_layers=0)
    assert p.plan().weights_gpu < plan.weights_gpu           # fewer layers on the card


def test_notes_apply_to_the_build_and_model(widgets_panel):
    """A CPU-only build (CI's) shows no CUDA kernel note; a GPU build (forced) shows the pair's
    own measured figure. The layer counts come from the live model's header."""
    cpu = widgets_panel(gpu=False)
    cpu.set(type_k="q8_0", type_v="f16")
    check = _text(cpu.check_html.value)
    assert "flash-attention kernel" not in check and "CUDA" not in check and "H200" not in check
    assert f"KV cache in {len(cpu.info.kv_layers)} of its {cpu.info.n_layer} layers" in check
    assert "K q8_0/V f16 was not measured on the Qwen3.5-35B-A3B shape with a CPU build" in check
    gpu = widgets_panel(gpu=True)
    gpu.set(type_k="q8_0", type_v="f16")
    check = _text(gpu.check_html.value)
    assert "K=q8_0/V=f16 has no matched flash-attention kernel" in check
    assert "241.7 tok/s vs 247.5 for f16/f16" in check


def test_n_cpu_moe_keeps_experts_in_ram(widgets_panel, engine_models):
    from qwenkit.engine import cpu_moe_patterns
    p = widgets_panel(engine_models["qwen35moe"], n_ctx=512)
    p.set(n_cpu_moe=2)
    p.relaunch_button.click()
    assert p.last.ok, p.last.error
    moved = p.engine.log.overrides()
    assert moved and all(re.match("|".join(cpu_moe_patterns(2)), name) for name in moved)
    assert {int(n.split(".")[1]) for n in moved} == {0, 1}
    assert "n_cpu_moe 2" in _text(p.status_html.value)
    assert "experts of blocks 0-1" in _text(p.plan_html.value)


def test_failed_load_shows_reason_and_fix_and_the_state(widgets_panel, default_model, tmp_path):
    """A GGUF that is cut short between two relaunches (an interrupted download replaced it):
    llama.cpp's reason and the fix are shown, the process lives on, nothing is loaded (the
    previous model was closed first and cannot come back from a broken file), and putting the
    good file back makes the next relaunch work."""
    model = tmp_path / "model.gguf"
    shutil.copy(default_model, model)
    p = widgets_panel(model, n_ctx=512)
    p.relaunch_button.click()
    assert p.last.ok
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(default_model.read_bytes()[:30_000_000])
    os.replace(cut, model)                      # a new file at the path; the loaded one stays intact
    p.set(n_ctx=1024)
    p.relaunch_button.click()
    rec = p.last
    assert not rec.ok and rec.restored is None
    assert "not within the file bounds" in rec.error and "download it again" in rec.fix
    status = _text(p.status_html.value)
    assert "no model loaded" in status and "failed" in status and "fix:" in status
    assert not p.engine.loaded
    assert "failed" in p.history_rows()[-1]["result"]
    shutil.copy(default_model, model)
    p.relaunch_button.click()
    assert p.last.ok and p.engine.llm.n_ctx() == 1024


OOM_SCRIPT = textwrap.dedent("""
    import json, resource
    from qwenkit import widgets
    from qwenkit.config import RunConfig
    p = widgets.tune_panel(base=RunConfig(model={model!r}, n_threads=1), n_ctx=512, measure=False)
    p.relaunch()
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    # the live setting fits under the limit; 8192 cells of f32 K and V (360 MiB) do not
    resource.setrlimit(resource.RLIMIT_AS, (vm + 200 * 2**20, resource.RLIM_INFINITY))
    p.set(n_ctx=8192, type_k="f32", type_v="f32")
    r = p.relaunch()
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    out = dict(ok=r.ok, error=r.error, fix=r.fix, restored=r.restored is not None,
               live_n_ctx=p.engine.llm.n_ctx() if p.engine.loaded else None,
               status=p.status_html.value)
    p.set(n_ctx=1024, type_k="f16", type_v="f16")
    out["after"] = p.relaunch().ok
    print("RESULT " + json.dumps(out))
""")


def test_out_of_memory_restores_the_previous_model(default_model, tmp_path):
    """A real out-of-memory load (a process memory limit stands in for a full card): the
    failure and the memory fix are shown, the previous setting is loaded again and stated,
    and the panel keeps working. In a child process, so the limit touches nothing else."""
    script = tmp_path / "oom.py"
    script.write_text(OOM_SCRIPT.format(model=str(default_model)))
    r = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=300,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and line, f"child failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    out = json.loads(line[0][7:])
    assert not out["ok"]
    assert re.search(r"allocate|memory", out["error"], re.IGNORECASE), out["error"]
    assert "smaller n_ctx" in out["fix"]
    assert out["restored"] and out["live_n_ctx"] == 512
    status = _text(out["status"])
    assert "live model" in status and "n_ctx 512" in status and "previous config was loaded again" in status
    assert out["after"]


def test_twenty_relaunches_keep_process_memory_bounded(widgets_panel):
    """Bound: RSS may grow by at most 64 MiB over 20 relaunches (after a warm-up relaunch).
    One SmolLM2 left open after its pp/tg run stays resident at about 116 MiB (weights touched
    by eval) plus its buffers, so a single leaked model breaks the bound."""
    p = widgets_panel(n_ctx=512, n_prompt=8, n_gen=2)
    p.relaunch_button.click()
    p.set(n_ctx=1024)
    p.relaunch_button.click()
    start = rss_bytes()
    for i in range(20):
        p.set(n_ctx=512 if i % 2 else 1024, type_k="q8_0" if i % 4 < 2 else "f16")
        p.relaunch_button.click()
        assert p.last.ok, p.last.error
    grown = rss_bytes() - start
    assert p.engine.llm.n_ctx() == 1024 - 512 * (19 % 2)
    assert len(p.history) == 22
    assert grown < 64 * MiB, f"RSS grew {grown / MiB:.1f} MiB over 20 relaunches"


def test_saved_config_starts_a_server(widgets_panel, tmp_path, monkeypatch):
    """Save writes what `python -m qwenkit serve --config FILE` serves (own cache folder, so the
    background-server record is this test's alone)."""
    from qwenkit import server
    p = widgets_panel(n_ctx=512)
    p.set(n_ctx=1024, type_k="q8_0")
    path = p.save(tmp_path / "tuned.json")
    assert "qwenkit serve --config" in _text(p.save_html.value)
    saved = RunConfig.load(path)
    assert (saved.n_ctx, saved.type_k, saved.type_v) == (1024, "q8_0", "f16")
    assert Path(saved.model).is_absolute()                     # serves from any folder
    cache = tmp_path / "cache"
    monkeypatch.setenv("QWENKIT_CACHE", str(cache))
    env = {**os.environ, "QWENKIT_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "qwenkit", "serve"]
    try:
        r = subprocess.run(cli + ["--config", str(path), "--port", "any", "--background", "--ready-timeout", "120"],
                           check=False, capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        srv = server.background()
        assert srv is not None and srv.ping(timeout=10)
        assert srv.n_ctx == 1024                               # the server's live context
    finally:
        subprocess.run(cli + ["--stop"], check=False, capture_output=True, text=True, timeout=60, env=env)
    assert server.background() is None


def test_cpu_only_build_shows_no_gpu_figures(widgets_panel):
    """On a CPU-only build the relaunch table has no GPU columns, the history no n_gpu_layers,
    and the n_gpu_layers control is disabled (it would change nothing)."""
    p = widgets_panel(gpu=False, n_ctx=512)
    p.relaunch_button.click()
    assert p.last.ok, p.last.error
    result = _text(p.result_html.value)
    assert "GPU estimate" not in result and "RAM estimate" in result and "RAM llama.cpp" in result
    assert "n_gpu_layers" not in _text(p.history_html.value) and "n_gpu_layers" not in p.history_table()
    assert p.n_gpu_layers.disabled
    assert "GPU MiB" not in _text(p.plan_html.value) and "RAM MiB" in _text(p.plan_html.value)
    assert "<table>" in p.history_table()._repr_html_()
