"""Trust verdicts and conclusions, both ways, on recorded samples (tests/data/trust_samples.json:
a quiet 2-core run and a busy one, recorded by tools/record_trust_sample.py and
benchmarks/cpu_compare.py); the Probe on real CPU load; bench() repeating until its spread is small."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwenkit import trust

SAMPLES = json.loads((Path(__file__).parent / "data" / "trust_samples.json").read_text())


def fig(run: str, label: str) -> trust.Figure:
    (f,) = [trust.Figure.of(x) for x in SAMPLES[run]["figures"] if x["label"] == label]
    return f


# ---- verdicts ----------------------------------------------------------------------------------
def test_a_quiet_run_is_trusted():
    v = trust.judge(fig("quiet", "kit tg128"))
    assert v.trusted and not v.reasons, v
    assert str(v) == ("trustworthy: spread 0.9% over 11 runs; load average 0.99 on 2 cores, "
                      "this run's own 2 threads included")


def test_a_busy_run_is_not_trusted_and_says_why():
    v = trust.judge(fig("busy", "f16/f16 tg32"))
    assert not v.trusted
    text = str(v)
    assert text.startswith("NOT trustworthy:")
    assert "spread too large: f16/f16 tg32 varies" in text           # 0.9 .. 28 tok/s
    assert "machine busy: other programs used 1.09 of 2 cores" in text


def test_one_outlier_makes_a_quiet_figure_untrusted():
    # llama-cpp-python's first repetition in the quiet run: 62 tok/s, then ~150
    v = trust.judge(fig("quiet", "llama-cpp-python tg128"))
    assert not v.trusted and "spread too large" in str(v) and "machine busy" not in str(v)


def test_a_single_run_has_no_known_spread():
    v = trust.judge(trust.Figure("one", [150.0], machine={"cores": 2, "others_cores": 0.0}))
    assert not v.trusted and "spread is unknown" in str(v)


def test_load_average_fallback_subtracts_our_own_threads():
    quiet = {"cores": 2, "load1": 2.1, "own_threads": 2}
    busy = {"cores": 2, "load1": 4.5, "own_threads": 2}
    vals = [100.0, 101.0, 99.5]
    assert trust.judge(trust.Figure("x", vals, machine=quiet)).trusted
    assert "machine busy: load average 4.50 on 2 cores" in str(trust.judge(trust.Figure("x", vals, machine=busy)))


# ---- conclusions -------------------------------------------------------------------------------
def test_a_real_difference_on_a_quiet_machine_is_concluded():
    c = trust.compare(fig("quiet", "kit tg128"), fig("quiet", "llama-bench tg128"), what="decodes")
    assert c.conclusive and c.direction == "slower" and c.ratio is not None and 0.96 < c.ratio < 0.98
    assert str(c).startswith("kit tg128 decodes 3% slower than llama-bench tg128 here (151.2 vs 155.8 tok/s")
    assert trust.check(c, "slower") == "holds" and trust.check(c, "faster") == "contradicted"


def test_no_difference_on_a_quiet_machine_is_concluded_as_the_same():
    c = trust.compare(fig("quiet", "kit tg128"), fig("quiet", "decode tg128"), what="decodes")
    assert c.conclusive and c.direction == "same", c
    assert "cannot be told from noise" in str(c)
    assert trust.check(c, "not faster") == "holds" and trust.check(c, "slower") == "contradicted"


def test_nothing_is_concluded_on_a_busy_machine():
    # busy run: q8_0 measured *faster* than f16 (20.5 vs 17.8 tok/s): noise, not a finding
    c = trust.compare(fig("busy", "q8_0/q8_0 tg32"), fig("busy", "f16/f16 tg32"), what="decodes")
    assert not c.conclusive and c.direction == "unknown"
    assert str(c).startswith("not conclusive (q8_0/q8_0 tg32 vs f16/f16 tg32: 20.5 vs 17.8 tok/s): ")
    assert "machine busy" in str(c) and "spread too large" in str(c)
    assert trust.check(c, "not faster") == "not conclusive"
    line = trust.claim_line("a quantized KV cache does not decode faster", c, "not faster")
    assert line.startswith("claim: a quantized KV cache does not decode faster -> NOT CONCLUSIVE: not conclusive")


def test_a_range_claim():
    f = trust.Figure("notebook 05", [95.0], unit="s", machine={"cores": 2, "others_cores": 0.05})
    assert "HOLDS" in trust.within(f, 60, 180, "takes 1-3 minutes")
    busy = trust.Figure("notebook 05", [286.0], unit="s", machine={"cores": 2, "others_cores": 1.2})
    assert "NOT CONCLUSIVE" in trust.within(busy, 60, 180, "takes 1-3 minutes")
    quiet_slow = trust.Figure("notebook 05", [286.0], unit="s", machine={"cores": 2, "others_cores": 0.0})
    assert "CONTRADICTED" in trust.within(quiet_slow, 60, 180, "takes 1-3 minutes")


def test_unknown_claims_and_figures_are_refused():
    c = trust.compare(fig("quiet", "kit tg128"), fig("quiet", "decode tg128"))
    with pytest.raises(ValueError, match="unknown claim"):
        trust.check(c, "better")
    with pytest.raises(TypeError, match="cannot make a Figure"):
        trust.Figure.of(42)


# ---- the probe on a real machine ---------------------------------------------------------------
def test_probe_sees_another_program_burn_cpu():
    """A process that is not ours (a child not yet waited for counts as another program; one that
    subprocess.run waited for counts as ours, like llama-bench run by the notebook)."""
    import time
    burn = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        with trust.Probe() as p:
            time.sleep(1.8)
        assert p.wall is not None
        child_cores = trust._proc_cpu_s(child.pid) / p.wall   # what it got (less on a busy machine)
    finally:
        child.wait()
    rec = p.record()
    assert child_cores > 0.2 and rec["others_cores"] >= child_cores - 0.1, (child_cores, rec)
    assert rec["seconds"] >= 1.8 and rec["cores"] == trust.cores()


def test_probe_counts_the_pids_it_is_given_as_ours():
    """Two probes over the same second: one told that the burning child is ours (a server
    process, say), one not; they differ by about the core the child kept busy."""
    import time
    burn = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        with trust.Probe() as theirs, trust.Probe(pids=[child.pid]) as ours:
            time.sleep(1.8)   # the child has finished, not yet reaped: its CPU time is still readable
        assert ours.wall is not None
        child_cores = trust._proc_cpu_s(child.pid) / ours.wall
    finally:
        child.wait()
    assert child_cores > 0.2, child_cores
    assert theirs.others_cores is not None and ours.others_cores is not None
    assert abs((theirs.others_cores - ours.others_cores) - child_cores) < 0.15, \
        (child_cores, theirs.record(), ours.record())


# ---- bench repeats until its spread is small or time runs out ---------------------------------
@pytest.mark.slow
def test_bench_repeats_until_the_time_limit_and_records_the_machine(default_model):
    from qwenkit import bench
    from qwenkit.config import RunConfig
    cfg = RunConfig(model=str(default_model), n_ctx=512, n_threads=1)
    (r,) = bench.bench(cfg, p=0, n=4, r=2, until=1e-9, time_limit=1.0)
    assert len(r.rates) > 2 and r.extra["stopped"].startswith("time limit (1 s)")
    assert set(r.extra["machine"]) >= {"cores", "others_cores", "load1", "own_threads", "seconds"}
    (q,) = bench.bench(cfg, p=0, n=4, r=3, until=10.0, time_limit=60.0)
    assert len(q.rates) == 3 and q.extra["stopped"].startswith("standard error")
    assert trust.Figure.of(q).values == q.rates


# ---- notebook 07 concludes through these functions --------------------------------------------
def test_notebook_07_conclusions_come_from_trust():
    import nbformat
    nb = nbformat.read(str(Path(__file__).parent.parent / "notebooks" / "07_benchmark.ipynb"), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    claims = [s for s in code if "claim_line(" in s]
    assert len(claims) >= 3 and all("trust.compare(" in s for s in claims), claims
    takeaway = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "What to take away" in c.source)
    after = nb.cells[takeaway + 1]
    assert after.cell_type == "code" and "trust.judge(" in after.source and "kv_claims" in after.source
    # no conclusion is written before the cell that computes it
    before = "\n".join(c.source for c in nb.cells[:takeaway + 1] if c.cell_type == "markdown")
    assert "buys memory, not speed" not in before and "at parity" not in before.split("## 4.")[0]


def test_a_range_claim_on_repeated_runs_needs_a_trusted_figure():
    quiet = fig("quiet", "kit tg128")
    assert "HOLDS" in trust.within(quiet, 120, 220, "about 150 tok/s")
    assert "CONTRADICTED" in trust.within(quiet, 40, 80, "about 60 tok/s")
    busy = trust.within(fig("busy", "f16/f16 tg32"), 120, 220, "about 150 tok/s")
    assert "NOT CONCLUSIVE" in busy and "machine busy" in busy and "measured 17.8 tok/s" in busy


def test_bench_tables_carry_a_trust_column():
    from qwenkit import bench
    rows = [bench.BenchResult.from_dict({**x, "test": "tg32", "path": "kit", "n_prompt": 0, "n_gen": 32,
                                         "n_depth": 0, "rates": x["values"], "extra": {"machine": x["machine"]}})
            for x in SAMPLES["busy"]["figures"] + SAMPLES["quiet"]["figures"][1:2]]
    t = bench.html(bench.table(rows), trust_of=rows)
    assert t.columns[-1] == "trust" and [r[-1] for r in t.rows] == ["spread 58%, busy", "spread 54%, busy", "ok"]
    assert "<table>" in t._repr_html_()
