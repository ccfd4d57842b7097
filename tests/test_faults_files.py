"""Fault suite, files: broken GGUFs meet the kit's reader and llama.cpp's loader through the kit;
a chat template that tries to run code cannot."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from qwenkit.errors import GGUFError

from fixtures_faults import MALICIOUS_TEMPLATE, TEMPLATE_MARKER

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parent.parent

CASES = ["empty", "header_only", "bad_magic", "bad_version", "truncated_half", "tensor_past_end",
         "absurd_tensor_count", "absurd_kv_count", "absurd_string_length", "absurd_array_length",
         "absurd_tensor_dims"]

# llama.cpp is asked to load every broken file in ONE child process (a crash there must not take
# the test run with it, and one import of llama_cpp serves all cases); one JSON line per file.
_LOADER = textwrap.dedent("""
    import json, sys, resource
    import qwenkit

    def peak_mib():
        # VmHWM is this program's own peak; ru_maxrss survives exec, so it would report the
        # test runner's size at the fork (over 1 GiB late in a full run)
        try:
            with open("/proc/self/status") as f:
                return next(int(x.split()[1]) for x in f if x.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    from qwenkit.errors import ModelLoadError
    from qwenkit.llamalog import load_llama
    for path in sys.argv[1:]:
        print(json.dumps({"path": path, "start": True}), flush=True)
        try:
            llm = load_llama(model_path=path, n_ctx=256, n_threads=1, verbose=False, echo=False)
            llm.close()
            out = {"type": "loaded"}
        except ModelLoadError as e:
            out = {"type": "ModelLoadError", "problem": e.problem, "fix": e.fix,
                   "reason": getattr(e, "reason", None)}
        except Exception as e:
            out = {"type": type(e).__name__, "problem": str(e)}
        out["path"] = path
        out["maxrss_mib"] = peak_mib()
        print(json.dumps(out), flush=True)
""")


@pytest.fixture(scope="module")
def llama_results(broken_files) -> dict[str, dict]:
    paths = [str(broken_files[c][0]) for c in CASES]
    p = subprocess.run([sys.executable, "-c", _LOADER, *paths], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, check=False)
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    done = {Path(r["path"]).stem: r for r in lines if "type" in r}
    started = [Path(r["path"]).stem for r in lines if r.get("start")]
    assert p.returncode == 0, (f"the loader process died (rc {p.returncode}) on {started[-1] if started else '?'}:"
                               f"\n{p.stderr[-3000:]}")
    return done


@pytest.mark.parametrize("case", CASES)
def test_broken_file(case, broken_files, llama_results, faults_log):
    path, what = broken_files[case]
    # 1. the kit's reader: GGUFError naming the file and a fix, fast, without reading the data
    t = time.monotonic()
    with pytest.raises(GGUFError) as e:
        from qwenkit.gguf_info import read_gguf
        read_gguf(path)
    took = time.monotonic() - t
    assert took < 2
    assert str(path) in e.value.problem and e.value.fix, e.value
    # 2. llama.cpp through the kit: ModelLoadError with llama.cpp's own reason, not the bare
    #    "Failed to load model from file"
    r = llama_results[case]
    assert r["type"] == "ModelLoadError", r
    assert r["reason"] and "Failed to load model from file" not in r["problem"], r
    assert r["fix"], r
    assert r["maxrss_mib"] < 1024, r  # no huge allocation from an absurd count
    faults_log.add(f"file:{case}", area="files", input=f"tiny qwen35moe GGUF: {what}", fault="broken file",
                   result=(f"GGUFError ({_short(e.value.problem, str(path))}); ModelLoadError: "
                           f"llama.cpp says \"{_short(r['reason'], str(path))}\""),
                   reader_ms=round(took * 1000, 1))


def _short(text: str, path: str, n: int = 90) -> str:
    if path:
        text = text.replace(path, "<file>")
    text = text.replace("|", "/").splitlines()[0]
    text = text.removeprefix("<file>: ")
    return text if len(text) <= n else text[: n - 1] + "…"


# ---- a chat template that tries to run code ----------------------------------------------------
def test_malicious_template_cannot_run_code(malicious_template_model, faults_log):
    """The template reaches for `cycler.__init__.__globals__.os.popen('touch MARKER')`. Loading the
    model works; rendering it raises jinja2's SecurityError; the marker file never appears."""
    from jinja2.exceptions import SecurityError

    from qwenkit.gguf_info import read_gguf
    from qwenkit.llamalog import load_llama

    TEMPLATE_MARKER.unlink(missing_ok=True)
    assert read_gguf(malicious_template_model).metadata["tokenizer.chat_template"] == MALICIOUS_TEMPLATE
    llm = load_llama(model_path=str(malicious_template_model), n_ctx=256, n_threads=1, verbose=False,
                     echo=False)
    try:
        with pytest.raises(SecurityError) as e:
            llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    finally:
        llm.close()
    assert not TEMPLATE_MARKER.exists()
    faults_log.add("file:malicious_template", area="files",
                   input="tiny qwen35moe GGUF whose chat template calls os.popen('touch ...') via "
                         "cycler.__init__.__globals__",
                   fault="code in a chat template", result=f"jinja2 SecurityError ({_short(str(e.value), '')}); "
                   "no file created")


def test_malicious_template_through_the_server(malicious_template_model, faults_log, tmp_path):
    """The same model behind the kit's server: the chat request fails with a generic 500, no file
    appears, and the server keeps answering."""
    import httpx

    from qwenkit import server
    from qwenkit.config import RunConfig

    TEMPLATE_MARKER.unlink(missing_ok=True)
    with server.start(RunConfig(model=str(malicious_template_model), n_ctx=512, n_threads=1),
                      port="any", log_path=tmp_path / "s.log", quiet=True) as srv:
        r = httpx.post(srv.base_url + "/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        assert r.status_code == 500 and "__globals__" not in r.text and "os.popen" not in r.text
        assert srv.ping() and srv.alive()
        assert "SecurityError" in srv.log_tail(200)
    assert not TEMPLATE_MARKER.exists()
    faults_log.add("file:malicious_template_server", area="files",
                   input="the same GGUF behind qwenkit.server", fault="code in a chat template",
                   result="HTTP 500 with a generic message (SecurityError in the log only); no file "
                   "created; server still answers")


# ---- the README table ---------------------------------------------------------------------------
def test_readme_table_matches_committed_json():
    """README's fault table is exactly what tools/faults_table.py renders from the committed
    benchmarks/faults/faults.json (regenerate: QWENKIT_FAULTS_JSON=... pytest -m faults, then
    python tools/faults_table.py)."""
    from repo_scripts import load_script

    ft = load_script("tools/faults_table.py")
    data = json.loads(ft.JSON_PATH.read_text())
    ids = {r["id"] for r in data["records"]}
    assert {"file:" + c for c in CASES} <= ids and "load:sequential_and_concurrent" in ids
    readme = ft.README.read_text()
    assert readme.count(ft.BEGIN) == 1 and readme.count(ft.END) == 1
    assert ft.splice(readme, ft.render(data)) == readme, "README's fault table differs from faults.json"
    assert ft.main(["--check"]) == 0
