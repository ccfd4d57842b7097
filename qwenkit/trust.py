"""Can a measured figure be trusted, and what does it allow us to conclude?

A speed figure from a shared or busy machine can be off by a factor of two or more, and a
figure from two noisy repetitions says nothing about a 5 % difference. The notebooks therefore
never write a conclusion in advance: they measure, then ask this module.

    with trust.Probe() as probe:                       # CPU time other programs used meanwhile
        rates = [...]                                  # repeated measurements (tok/s, s, ...)
    fig = trust.Figure("f16 tg128", rates, machine=probe.record())
    print(trust.judge(fig))                            # trusted, or why not
    print(trust.compare(q8, f16, what="decodes"))      # "q8_0 decodes 7 % slower than f16 here ..."
    print(trust.check(conclusion, "not faster"))       # does the measurement support a claim?

Two signals decide whether a figure is trustworthy:
- the machine: the share of CPU time *other* programs used during the measurement (from
  /proc/stat minus this process's own time; the load average counts our own threads too and
  trails by a minute, so it is only the fallback, with our own threads subtracted);
- the spread of repeated runs: the sample standard deviation relative to the mean.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["MAX_BUSY", "MAX_SPREAD", "MIN_EFFECT", "SIGNIFICANCE", "Conclusion", "Figure", "Probe", "Verdict",
           "busy_reason", "check", "claim_line", "compare", "cores", "judge", "within"]

MAX_SPREAD = 0.10        # relative sd of repeated runs above which a figure is too noisy
MAX_BUSY = 0.15          # share of all cores other programs may use before the machine is "busy"
SIGNIFICANCE = 3.0       # a difference counts when it exceeds this many standard errors (more
                         # with few runs: Student's t, see _critical) ...
MIN_EFFECT = 0.02        # ... and this relative size (smaller differences do not matter here)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ---- the machine during a measurement --------------------------------------------------------
def _cpu_busy_s() -> float | None:
    """Seconds of CPU time all programs spent busy since boot (None where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)   # idle + iowait
    # user nice system idle iowait irq softirq steal: steal (a hypervisor's other guests) counts
    # as busy, since our threads could not run then either
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of one process; 0 when it is gone."""
    if pid == os.getpid():  # with the children it has waited for (a tool run by subprocess.run)
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Probe:
    """Measures what else ran on the machine while a block of code ran.

    `pids`: processes whose CPU time counts as ours besides this one (a server child)."""

    def __init__(self, pids: Sequence[int] = (), own_threads: int | None = None):
        self.pids = [os.getpid(), *[p for p in pids if p != os.getpid()]]
        self.own_threads = own_threads
        self.wall: float | None = None
        self.others_cores: float | None = None
        self.load1: float | None = None

    def _own(self) -> float:
        return sum(_proc_cpu_s(p) for p in self.pids)

    def __enter__(self) -> "Probe":
        self._t0, self._busy0, self._own0 = time.perf_counter(), _cpu_busy_s(), self._own()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> "Probe":
        self.wall = time.perf_counter() - self._t0
        busy1 = _cpu_busy_s()
        if busy1 is not None and self._busy0 is not None and self.wall > 0:
            others = (busy1 - self._busy0) - (self._own() - self._own0)
            self.others_cores = max(0.0, others / self.wall)
        try:
            self.load1 = os.getloadavg()[0]
        except OSError:  # pragma: no cover
            self.load1 = None
        return self

    def record(self) -> dict[str, Any]:
        """What a figure keeps about its machine (JSON-friendly; judge() reads it)."""
        return {"cores": cores(), "others_cores": self.others_cores, "load1": self.load1,
                "own_threads": self.own_threads, "seconds": self.wall}


def _num(x: float) -> str:
    """151.2, 20.5, 0.888: one decimal from 10 up, three significant digits below."""
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


# ---- figures and verdicts --------------------------------------------------------------------
@dataclass
class Figure:
    """Repeated measurements of one thing, and the machine they were taken on."""
    label: str
    values: list[float]
    unit: str = "tok/s"
    machine: dict[str, Any] = field(default_factory=dict)   # Probe.record()
    higher_is_better: bool = True

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else float("nan")

    @property
    def spread(self) -> float:
        """Relative sample standard deviation (nan with fewer than 2 values)."""
        return self.sd / self.mean if len(self.values) > 1 and self.mean else float("nan")

    @property
    def sem(self) -> float:
        """Relative standard error of the mean."""
        return self.spread / math.sqrt(len(self.values)) if len(self.values) > 1 else float("nan")

    @classmethod
    def of(cls, x: Any, label: str | None = None) -> "Figure":
        """A Figure from a Figure, a bench.BenchResult or a recorded dict
        ({"label", "values" or "rates", "machine"})."""
        if isinstance(x, Figure):
            return x
        if isinstance(x, dict):
            values = x["values"] if "values" in x else x.get("rates", [])
            return cls(label or x.get("label") or x.get("test", "figure"), list(values), x.get("unit", "tok/s"),
                       dict(x.get("machine") or (x.get("extra") or {}).get("machine") or {}))
        if hasattr(x, "rates"):  # bench.BenchResult
            name = label or f"{x.extra.get('setting') or x.path} {x.test}"
            return cls(name, list(x.rates), "tok/s", dict(x.extra.get("machine") or {}))
        raise TypeError(f"cannot make a Figure of a {type(x).__name__}: "
                        "pass a Figure, a bench.BenchResult or a dict with 'values'")

    def __str__(self) -> str:
        if not self.values:
            return f"{self.label}: no measurement"
        sp = f" (spread {self.spread:.0%} over {len(self.values)} runs)" if len(self.values) > 1 \
            else " (1 run)"
        return f"{self.label}: {_num(self.mean)} {self.unit}{sp}"


@dataclass
class Verdict:
    trusted: bool
    reasons: list[str]          # why not (empty when trusted)
    notes: list[str]            # what was checked
    figure: Figure

    def __str__(self) -> str:
        if self.trusted:
            return f"trustworthy: {'; '.join(self.notes)}"
        return f"NOT trustworthy: {'; '.join(self.reasons)}"

    def __bool__(self) -> bool:
        return self.trusted

    @property
    def short(self) -> str:
        """A table cell: "ok", or what is wrong ("busy", "spread 44%", "1 run")."""
        f, out = self.figure, []
        if len(f.values) < 2:
            out.append(f"{len(f.values)} run")
        elif any(r.startswith("spread") for r in self.reasons):
            out.append(f"spread {f.spread:.0%}")
        if any(r.startswith("machine busy") for r in self.reasons):
            out.append("busy")
        return ", ".join(out) or "ok"


def busy_reason(machine: dict[str, Any], max_busy: float = MAX_BUSY) -> tuple[str | None, str]:
    """(why the machine was too busy, or None; what was seen) for a Probe.record()."""
    n = machine.get("cores") or cores()
    others = machine.get("others_cores")
    if others is not None:
        seen = f"other programs used {others:.2f} of {n} cores meanwhile"
        return (f"machine busy: {seen} (limit {max_busy * n:.2f})" if others > max_busy * n else None), seen
    load = machine.get("load1")
    if load is not None:
        own = machine.get("own_threads") or 0
        extra = max(0.0, load - own)
        seen = f"load average {load:.2f} on {n} cores, this run's own {own} threads included"
        return (f"machine busy: {seen}" if extra > max_busy * n + 0.5 else None), seen
    return None, "machine load unknown"


def judge(fig: Any, max_spread: float = MAX_SPREAD, max_busy: float = MAX_BUSY) -> Verdict:
    """Whether a figure can be trusted: enough runs, a small spread, a quiet machine."""
    f = Figure.of(fig)
    reasons, notes = [], []
    if len(f.values) < 2:
        reasons.append(f"{f.label}: {len(f.values)} run(s): the spread is unknown (repeat it)")
    elif not f.spread <= max_spread:
        reasons.append(f"spread too large: {f.label} varies {f.spread:.0%} between runs "
                       f"(limit {max_spread:.0%}, {len(f.values)} runs)")
    else:
        notes.append(f"spread {f.spread:.1%} over {len(f.values)} runs")
    why, seen = busy_reason(f.machine, max_busy)
    (reasons if why else notes).append(why or seen)
    return Verdict(not reasons, reasons, notes, f)


# ---- conclusions -----------------------------------------------------------------------------
@dataclass
class Conclusion:
    text: str
    conclusive: bool
    direction: str              # "faster" | "slower" | "same" | "unknown" (a relative to b)
    ratio: float | None         # mean of a / mean of b
    verdicts: tuple[Verdict, Verdict]

    def __str__(self) -> str:
        return self.text


_WORDS = {True: ("faster", "slower"), False: ("lower", "higher")}
# Student's t, two-sided 99 %, by degrees of freedom (beyond 30: 2.75 and falling to 2.58)
_T99 = {1: 63.66, 2: 9.925, 3: 5.841, 4: 4.604, 5: 4.032, 6: 3.707, 7: 3.499, 8: 3.355, 9: 3.250,
        10: 3.169, 15: 2.947, 20: 2.845, 30: 2.750}


def _critical(df: int) -> float:
    """How many standard errors a difference must exceed, for df degrees of freedom."""
    t = next((v for k, v in sorted(_T99.items()) if df <= k), 2.75)
    return max(SIGNIFICANCE, t)


def compare(a: Any, b: Any, what: str = "runs", max_spread: float = MAX_SPREAD,
            max_busy: float = MAX_BUSY) -> Conclusion:
    """What the measurements say about a against b ("q8_0 decodes 7 % slower than f16 here").

    Conclusive only when both figures are trustworthy; a difference counts when it exceeds
    SIGNIFICANCE standard errors and MIN_EFFECT, otherwise the two are "the same within noise"."""
    fa, fb = Figure.of(a), Figure.of(b)
    va, vb = judge(fa, max_spread, max_busy), judge(fb, max_spread, max_busy)
    nums = f"{_num(fa.mean)} vs {_num(fb.mean)} {fa.unit}"
    if not (va and vb):
        why = list(dict.fromkeys(va.reasons + vb.reasons))
        ratio = fa.mean / fb.mean if fa.values and fb.values and fb.mean else None
        return Conclusion(f"not conclusive ({fa.label} vs {fb.label}: {nums}): " + "; ".join(why),
                          False, "unknown", ratio, (va, vb))
    ratio = fa.mean / fb.mean
    # relative noise of the ratio; with 3 runs a standard deviation is itself uncertain, so the
    # multiplier is Student's t (two-sided 99 %) for the smaller sample, at least SIGNIFICANCE
    df = min(len(fa.values), len(fb.values)) - 1
    noise = _critical(df) * math.hypot(fa.sem, fb.sem)
    diff = ratio - 1.0
    spreads = f"spread {fa.spread:.1%} and {fb.spread:.1%}"
    if abs(diff) <= max(noise, MIN_EFFECT):
        return Conclusion(f"{fa.label} {what} as fast as {fb.label} here: {ratio:.3f}x ({nums}; {spreads}; "
                          f"a difference under {max(noise, MIN_EFFECT):.0%} cannot be told from noise)"
                          if fa.higher_is_better else
                          f"{fa.label} and {fb.label} are the same here: {ratio:.3f}x ({nums}; {spreads})",
                          True, "same", ratio, (va, vb))
    better = (diff > 0) == fa.higher_is_better
    word = _WORDS[fa.higher_is_better][0 if diff > 0 else 1]
    return Conclusion(f"{fa.label} {what} {abs(diff):.0%} {word} than {fb.label} here "
                      f"({nums}, {ratio:.3f}x; {spreads})", True,
                      "faster" if better else "slower", ratio, (va, vb))


_EXPECT = {
    "faster": {"faster"}, "slower": {"slower"}, "same": {"same"},
    "not faster": {"slower", "same"}, "not slower": {"faster", "same"},
}


def check(conclusion: Conclusion, expected: str) -> str:
    """Whether a conclusion supports a claim ("faster", "slower", "same", "not faster",
    "not slower"): 'holds', 'contradicted' or 'not conclusive'."""
    if expected not in _EXPECT:
        raise ValueError(f"unknown claim {expected!r}: use one of {', '.join(_EXPECT)}")
    if not conclusion.conclusive:
        return "not conclusive"
    return "holds" if conclusion.direction in _EXPECT[expected] else "contradicted"


def claim_line(claim: str, conclusion: Conclusion, expected: str) -> str:
    """One line: the claim, what this run says, and the numbers it rests on."""
    return f"claim: {claim} -> {check(conclusion, expected).upper()}: {conclusion}"


def within(fig: Any, low: float, high: float, claim: str, max_spread: float = MAX_SPREAD,
           max_busy: float = MAX_BUSY) -> str:
    """A figure against a stated range ("1-3 minutes", "about 150 tok/s"): 'holds' or
    'contradicted' only when the figure is trustworthy (a single value: when the machine was
    quiet), 'not conclusive' otherwise; one line with the measured value and the reasons."""
    f = Figure.of(fig)
    if len(f.values) > 1:
        v = judge(f, max_spread, max_busy)
        why, seen = ("; ".join(v.reasons) or None), "; ".join(v.notes)
    else:
        why, seen = busy_reason(f.machine, max_busy)
    state = "not conclusive" if why else ("holds" if low <= f.mean <= high else "contradicted")
    return (f"claim: {claim} -> {state.upper()}: measured {_num(f.mean)} {f.unit}"
            f" (stated {_num(low)}-{_num(high)}; {why or seen})")
