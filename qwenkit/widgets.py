"""The tuning panel: ipywidgets controls -> RunConfig -> relaunch the in-kernel model, with the
memory plan before and llama.cpp's real allocation, load time and pp/tg speed after.

    from qwenkit import widgets
    panel = widgets.tune_panel()          # the small default model; nothing is loaded yet
    panel                                 # (in a notebook) shows the panel
    panel.set(n_ctx=2048, type_k="q8_0")  # or move the controls: the plan updates, nothing reloads
    panel.relaunch_button.click()         # close the old model, load the pending config, measure
    panel.engine.llm.n_ctx()              # the live model
    panel.save("tuned.json")              # python -m qwenkit serve --config tuned.json

Everything the panel shows comes from the package's own parts: `RunConfig` validates and
notes, `plan.plan` estimates, `engine.Engine` loads (closing the previous model first), and
llama.cpp's own log (`Engine.log`) says what it really allocated and which KV types it used.
The panel is plain ipywidgets, so tests drive it without a browser.
"""
from __future__ import annotations

import contextlib
import gc
import html
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenkit.config import KV_TYPES, RunConfig
from qwenkit.engine import Engine, gpu_free_bytes, rss_bytes
from qwenkit.errors import ConfigError, QwenkitError
from qwenkit.units import MiB

MIN_CTX = 256          # llama.cpp pads the KV cache to 256 cells: smaller sizes buy nothing
DEFAULT_SAVE_NAME = "tuned.json"   # in the kit's cache folder unless a save_path is given


# ---- small helpers ------------------------------------------------------------------------------
def ctx_options(context_length: int | None, minimum: int = MIN_CTX) -> list[int]:
    """Powers of two from `minimum` up to the model's context length (itself included when it is
    not a power of two): the n_ctx slider's stops."""
    top = int(context_length or 4096)
    out, n = [], minimum
    while n <= top:
        out.append(n)
        n *= 2
    if not out or out[-1] != top:
        out.append(top)
    return out


def ram_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what the kernel says can be allocated without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def gpu_offload_build() -> bool:
    """True when this llama-cpp-python was built with a GPU backend."""
    import llama_cpp
    return bool(llama_cpp.llama_supports_gpu_offload())


def _is_host_buffer(name: str) -> bool:
    # llama.cpp's buffer names: CUDA0 (card), CUDA_Host (pinned RAM), CPU, CPU_Mapped, CPU_REPACK
    return name.upper().startswith("CPU") or name.endswith("_Host")


def _split(buffers: dict[str, float]) -> tuple[int, int]:
    """{buffer name: MiB} -> (GPU bytes, RAM bytes)."""
    gpu = sum(v for k, v in buffers.items() if not _is_host_buffer(k))
    ram = sum(v for k, v in buffers.items() if _is_host_buffer(k))
    return round(gpu * MiB), round(ram * MiB)


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:,.1f}"


def allocated(log) -> dict[str, tuple[int, int]]:
    """What llama.cpp allocated for the live model, from its own log: {part: (GPU, RAM) bytes}."""
    return {
        "weights": _split(log.model_buffers()),
        "KV cache": _split(log.kv_buffers()),
        "recurrent state": _split(log.rs_buffers()),
        "compute buffers": _split(log.compute_buffers()),
        "output buffer": _split(log.output_buffers()),
    }


def estimated(p) -> dict[str, tuple[int, int]]:
    """The same parts from a `plan.MemoryPlan`."""
    return {
        "weights": (p.weights_gpu, p.weights_cpu),
        "KV cache": (p.kv_k[0] + p.kv_v[0], p.kv_k[1] + p.kv_v[1]),
        "recurrent state": p.recurrent,
        "compute buffers": p.compute,
        "output buffer": (0, p.output_buffer),
    }


def quick_bench(llm, n_prompt: int = 64, n_gen: int = 16) -> dict[str, float]:
    """A short measurement on a loaded model with qwenkit.bench (the kit's path: one warm-up,
    one repetition of pp{n_prompt} and tg{n_gen}, sizes cut to fit the context, the context
    cleared after). Seconds, not a benchmark: notebook 07 measures properly."""
    from qwenkit import bench
    n_ctx = llm.n_ctx()
    n_gen = max(1, min(n_gen, n_ctx // 4))
    n_prompt = max(1, min(n_prompt, n_ctx - n_gen - 2))
    pp, tg = bench.bench(llm, p=n_prompt, n=n_gen, r=1, path="kit")
    return {"n_prompt": n_prompt, "n_gen": n_gen, "pp_tok_s": pp.mean, "tg_tok_s": tg.mean}


# ---- one relaunch -----------------------------------------------------------------------------------
@dataclass
class Relaunch:
    """One press of Relaunch: what was asked, what happened, what it cost."""
    index: int
    cfg: RunConfig
    ok: bool
    started: float = field(default_factory=time.time)
    load_seconds: float | None = None
    live_n_ctx: int | None = None
    kv_types: tuple[str, str] | None = None       # (K, V) from llama.cpp's log of the new context
    estimate: dict[str, tuple[int, int]] = field(default_factory=dict)
    allocated: dict[str, tuple[int, int]] = field(default_factory=dict)
    estimate_extra: dict[str, int] = field(default_factory=dict)   # GPU-only items llama.cpp does not report
    rss_before: int = 0           # process RSS before closing the old model
    rss_closed: int = 0           # ... after closing it
    rss_loaded: int = 0           # ... after loading (and measuring) the new one
    gpu_free_before: int | None = None
    gpu_free_after: int | None = None
    bench: dict[str, float] = field(default_factory=dict)
    offloaded: tuple[int, int] | None = None
    error: str | None = None      # problem
    fix: str | None = None
    restored: RunConfig | None = None   # the previous config, loaded again after a failure

    @property
    def estimate_total(self) -> int:
        return sum(g + c for g, c in self.estimate.values())

    @property
    def allocated_total(self) -> int:
        return sum(g + c for g, c in self.allocated.values())

    @property
    def freed(self) -> int:
        return self.rss_before - self.rss_closed

    def label(self) -> str:
        c = self.cfg
        s = f"{c.n_ctx} {c.type_k}/{c.type_v}{'' if c.flash_attn else ' noFA'}"
        if c.n_cpu_moe:
            s += f" moe{c.n_cpu_moe}"
        if c.n_gpu_layers != -1:
            s += f" ngl{c.n_gpu_layers}"
        return s

    def row(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "#": self.index, "n_ctx": c.n_ctx, "live n_ctx": self.live_n_ctx,
            "K/V": "/".join(self.kv_types) if self.kv_types else f"{c.type_k}/{c.type_v}",
            "flash_attn": c.flash_attn, "n_gpu_layers": c.n_gpu_layers, "n_cpu_moe": c.n_cpu_moe,
            "load s": self.load_seconds, "estimate MiB": self.estimate_total / MiB if self.estimate else None,
            "llama.cpp MiB": self.allocated_total / MiB if self.allocated else None,
            "pp tok/s": self.bench.get("pp_tok_s"), "tg tok/s": self.bench.get("tg_tok_s"),
            "RSS MiB": self.rss_loaded / MiB if self.rss_loaded else None,
            "result": "ok" if self.ok else f"failed: {self.error}",
        }


# ---- the panel ---------------------------------------------------------------------------------------
class TunePanel:
    """The tuning panel. Its widgets are attributes (drive them from code, or display the panel):

    controls: `n_ctx` (SelectionSlider), `type_k`, `type_v` (Dropdown), `flash_attn` (Checkbox),
    `n_gpu_layers`, `n_cpu_moe` (IntSlider; n_cpu_moe only for MoE models, else None),
    `relaunch_button`, `save_button`, `save_path` (Text).
    views: `check_html` (refusal or notes for the pending config), `plan_html` (plan vs free
    memory), `progress` + `progress_label`, `status_html` (the live model), `result_html`
    (the last relaunch: load time, estimate vs llama.cpp, pp/tg), `history_html`, `plot`
    (an Image of tok/s and memory per relaunch), `save_html`. `ui` is the whole VBox.
    """

    def __init__(self, model: str | Path | None = None, *, base: RunConfig | None = None,
                 n_ctx: int | None = None, engine: Engine | None = None, measure: bool = True,
                 n_prompt: int = 64, n_gen: int = 16, save_path: str | Path | None = None,
                 restore: bool = True, gpu: bool | None = None, n_threads: int | None = None):
        import ipywidgets as W

        from qwenkit.gguf_info import read_model_info

        if base is None:
            if model is None:
                from qwenkit.models import default_model_path
                model = default_model_path()
            base = RunConfig(model=str(model))
        elif model is not None:
            base = base.replace(model=str(model))
        base = base.replace(model=str(Path(base.model).resolve()))
        if n_threads:
            base = base.replace(n_threads=int(n_threads))
        self.info = read_model_info(base.model)
        self.gpu = gpu_offload_build() if gpu is None else bool(gpu)
        self.engine = engine or Engine()
        self.measure, self.n_prompt, self.n_gen, self.restore = measure, n_prompt, n_gen, restore
        self.history: list[Relaunch] = []
        self.last: Relaunch | None = None
        self.last_refusal: ConfigError | None = None
        self._busy = False

        opts = ctx_options(self.info.context_length)
        want = n_ctx or base.n_ctx or opts[-1]
        start_ctx = min(opts, key=lambda o: (abs(o - want), o))   # the nearest stop
        self._base = base.replace(n_ctx=start_ctx)
        kv_names = list(KV_TYPES)
        style = {"description_width": "110px"}
        wide = W.Layout(width="520px")

        self.n_ctx = W.SelectionSlider(options=[(f"{o:,}", o) for o in opts], value=start_ctx,
                                       description="n_ctx", continuous_update=False, style=style,
                                       layout=wide, tooltip="context length (tokens); powers of two "
                                       "up to the model's own")
        self.type_k = W.Dropdown(options=kv_names, value=base.type_k, description="type_k (K cache)",
                                 style=style, layout=W.Layout(width="260px"))
        self.type_v = W.Dropdown(options=kv_names, value=base.type_v, description="type_v (V cache)",
                                 style=style, layout=W.Layout(width="260px"))
        self.flash_attn = W.Checkbox(value=base.flash_attn, description="flash attention", indent=False)
        n_all = self.info.n_layer_all
        self.n_gpu_layers = W.IntSlider(value=max(-1, min(base.n_gpu_layers, n_all + 1)), min=-1,
                                        max=n_all + 1, description="n_gpu_layers", continuous_update=False,
                                        style=style, layout=wide, disabled=not self.gpu,
                                        tooltip="-1: every layer on the GPU; N: the last N layers"
                                        if self.gpu else "this llama.cpp build has no GPU: every layer runs on the CPU")
        self.n_cpu_moe: Any = None
        if self.info.is_moe:
            self.n_cpu_moe = W.IntSlider(value=min(base.n_cpu_moe, n_all), min=0, max=n_all,
                                         description="n_cpu_moe", continuous_update=False, style=style,
                                         layout=wide, tooltip="keep the expert weights of the first N "
                                         "layers in system RAM")
        self.controls: dict[str, Any] = {"n_ctx": self.n_ctx, "type_k": self.type_k, "type_v": self.type_v,
                                         "flash_attn": self.flash_attn, "n_gpu_layers": self.n_gpu_layers}
        if self.n_cpu_moe is not None:
            self.controls["n_cpu_moe"] = self.n_cpu_moe

        self.relaunch_button = W.Button(description="Relaunch", button_style="primary", icon="refresh",
                                        tooltip="close the current model, load the settings above, measure")
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, layout=W.Layout(width="200px"))
        self.progress_label = W.HTML("")
        self.check_html = W.HTML()
        self.plan_html = W.HTML()
        self.status_html = W.HTML()
        self.result_html = W.HTML()
        self.history_html = W.HTML()
        self.plot = W.Image(format="png", layout=W.Layout(max_width="900px"))
        if save_path is None:
            from qwenkit.models import cache_dir
            save_path = cache_dir() / "configs" / DEFAULT_SAVE_NAME
        self.save_path = W.Text(value=str(save_path), description="config file", style=style,
                                layout=W.Layout(width="420px"))
        self.save_button = W.Button(description="Save", icon="save",
                                    tooltip="write the settings above for `python -m qwenkit serve --config FILE`")
        self.save_html = W.HTML()
        for w, cls in ((self.status_html, "qwenkit-status"), (self.check_html, "qwenkit-check"),
                       (self.plan_html, "qwenkit-plan"), (self.result_html, "qwenkit-result"),
                       (self.history_html, "qwenkit-history"), (self.save_html, "qwenkit-save"),
                       (self.relaunch_button, "qwenkit-relaunch"), (self.save_button, "qwenkit-save-button"),
                       (self.n_ctx, "qwenkit-n-ctx"), (self.progress_label, "qwenkit-progress")):
            w.add_class(cls)

        for w in self.controls.values():
            w.observe(self._on_change, names="value")   # updates the plan; never reloads
        self.relaunch_button.on_click(lambda _b: self.relaunch())
        self.save_button.on_click(lambda _b: self._save_clicked())

        title = W.HTML(f"<b>Tune {html.escape(Path(base.model).name)}</b> "
                       f"<span style='color:#666'>({html.escape(self.info.arch)}, {self.info.n_layer} layers, "
                       f"context {self.info.context_length:,}; "
                       f"{'GPU build' if self.gpu else 'CPU-only build: everything runs in system RAM'})</span>")
        rows = [title, self.n_ctx, W.HBox([self.type_k, self.type_v, self.flash_attn]), self.n_gpu_layers]
        if self.n_cpu_moe is not None:
            rows.append(self.n_cpu_moe)
        rows += [self.check_html, self.plan_html,
                 W.HBox([self.relaunch_button, self.progress, self.progress_label]),
                 self.status_html, self.result_html, self.history_html, self.plot,
                 W.HBox([self.save_path, self.save_button]), self.save_html]
        self.ui = W.VBox(rows, layout=W.Layout(border="1px solid #ddd", padding="8px"))
        self.ui.add_class("qwenkit-tune-panel")
        self._refresh_pending()
        self._show_state()

    # ---- display ---------------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kw: Any):
        return self.ui._repr_mimebundle_(**kw)

    def __repr__(self) -> str:
        return f"<TunePanel {self.describe_live()}>"

    # ---- the pending config ------------------------------------------------------------------------
    def set(self, **values: Any) -> None:
        """Set controls from code (names as in `controls`); the plan updates, nothing reloads.
        Returns None, so a notebook cell ending in `panel.set(...)` does not show a second panel."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ConfigError(f"the panel has no control(s) {', '.join(sorted(unknown))}",
                              f"controls: {', '.join(self.controls)}")
        for k, v in values.items():
            self.controls[k].value = v

    def pending_config(self) -> RunConfig:
        """The RunConfig the controls describe; raises ConfigError (problem + fix) when invalid."""
        cfg = self._base.replace(
            n_ctx=int(self.n_ctx.value), type_k=self.type_k.value, type_v=self.type_v.value,
            flash_attn=bool(self.flash_attn.value), n_gpu_layers=int(self.n_gpu_layers.value),
            n_cpu_moe=int(self.n_cpu_moe.value) if self.n_cpu_moe is not None else 0)
        cfg.check_context(self.info.context_length)
        return cfg

    def plan(self, cfg: RunConfig | None = None):
        """The memory plan (`plan.MemoryPlan`) for `cfg` (default: the pending config)."""
        from qwenkit.plan import plan
        return plan(self.info, cfg or self.pending_config(), gpu=self.gpu)

    def check(self) -> tuple[RunConfig | None, str | None, list[str]]:
        """(config or None, refusal text or None, notes) for the pending controls."""
        try:
            cfg = self.pending_config()
        except ConfigError as e:
            return None, f"{e.problem}" + (f" — fix: {e.fix}" if e.fix else ""), []
        # notes for this build and this model's header only (no CUDA note on a CPU-only build)
        return cfg, None, cfg.notes(gpu=self.gpu, info=self.info)

    def check_text(self) -> str:
        cfg, refusal, notes = self.check()
        if refusal or cfg is None:
            return f"refused: {refusal}"
        return "\n".join(["ok: " + cfg.summary()] + [f"note: {n}" for n in notes])

    def _on_change(self, _change: dict) -> None:
        self._refresh_pending()

    def _refresh_pending(self) -> None:
        cfg, refusal, notes = self.check()
        if refusal or cfg is None:
            self.check_html.value = (f"<div style='color:#b00020'><b>refused:</b> "
                                     f"{html.escape(refusal or '')}</div>")
            self.relaunch_button.disabled = True
            self.plan_html.value = ""
            return
        self.relaunch_button.disabled = self._busy
        live = self.engine.cfg
        pending = "" if live is None or live != cfg else " (this is the live config)"
        parts = [f"<div><b>pending:</b> {html.escape(cfg.summary())}{pending}</div>"]
        parts += [f"<div style='color:#8a5a00'><i>note: {html.escape(n)}</i></div>" for n in notes]
        self.check_html.value = "".join(parts)
        try:
            self.plan_html.value = self._plan_html(self.plan(cfg))
        except Exception as e:  # noqa: BLE001 - a plan problem must not break the controls
            self.plan_html.value = f"<div style='color:#b00020'>no plan: {html.escape(str(e))}</div>"

    def free_memory(self) -> dict[str, int | None]:
        """Free memory as the machine reports it, plus what the live model holds (released by a
        relaunch): {'gpu_free', 'ram_available', 'gpu_held', 'ram_held'} in bytes."""
        held_gpu = held_ram = 0
        if self.engine.loaded and self.engine.log is not None:
            for part, (g, c) in allocated(self.engine.log).items():
                held_gpu += g
                if part != "weights":   # mapped weights are page cache: already counted as available
                    held_ram += c
        return {"gpu_free": gpu_free_bytes() if self.gpu else None, "ram_available": ram_available_bytes(),
                "gpu_held": held_gpu, "ram_held": held_ram}

    def _plan_html(self, p) -> str:
        fm = self.free_memory()
        gpu_td = (lambda v: f"<td style='text-align:right'>{v}</td>") if self.gpu else (lambda v: "")
        rows = "".join(
            f"<tr><td>{html.escape(r.part)}</td><td>{html.escape(r.detail)}</td>"
            f"{gpu_td(_mib(r.gpu))}<td style='text-align:right'>{_mib(r.cpu)}</td></tr>"
            for r in p.rows)
        verdicts = []
        gpu_free, ram_available = fm["gpu_free"], fm["ram_available"]
        if self.gpu and gpu_free is None:
            verdicts.append(f"<span style='color:#8a5a00'>GPU: plan {_mib(p.gpu_total)} MiB; llama.cpp sees no GPU "
                            "here, so its free memory is unknown</span>")
        elif self.gpu and gpu_free is not None:
            room = gpu_free + (fm["gpu_held"] or 0)
            ok = p.gpu_total <= room
            advice = " — does not fit: raise n_cpu_moe, lower n_ctx, or quantize the KV cache"
            verdicts.append(f"<span style='color:{'#137333' if ok else '#b00020'}'>GPU: plan {_mib(p.gpu_total)} MiB "
                            f"vs {_mib(fm['gpu_free'])} MiB free + {_mib(fm['gpu_held'])} MiB held by the live "
                            f"model{'' if ok else advice}</span>")
        if ram_available is not None:
            room = ram_available + (fm["ram_held"] or 0)
            ok = p.cpu_total <= room
            verdicts.append(f"<span style='color:{'#137333' if ok else '#b00020'}'>RAM: plan {_mib(p.cpu_total)} MiB "
                            f"vs {_mib(fm['ram_available'])} MiB available + {_mib(fm['ram_held'])} MiB held by "
                            f"the live model{'' if ok else ' — does not fit'}</span>")
        return ("<details open><summary><b>memory plan for the pending config</b> (KV "
                f"{_mib(p.kv)} MiB, weights {_mib(p.weights)} MiB)</summary>"
                f"<table style='font-size:90%'><tr><th>part</th><th></th>{'<th>GPU MiB</th>' if self.gpu else ''}"
                f"<th>RAM MiB</th></tr>{rows}<tr><td><b>total</b></td><td></td>{gpu_td(f'<b>{_mib(p.gpu_total)}</b>')}"
                f"<td style='text-align:right'><b>{_mib(p.cpu_total)}</b></td></tr></table>"
                + "<br>".join(verdicts) + "</details>")

    # ---- relaunch ----------------------------------------------------------------------------------
    def relaunch(self) -> Relaunch | None:
        """Close the live model (its memory is freed), load the pending config, show the load time,
        llama.cpp's allocation next to the estimate and a short pp/tg measurement. An invalid
        config is refused (returns None, nothing is closed); a failed load is shown with its
        reason and fix, and the previous config is loaded again when `restore` is on."""
        if self._busy:
            return None
        try:
            cfg = self.pending_config()
        except ConfigError as e:
            self.last_refusal = e
            self.progress_label.value = (f"<span style='color:#b00020'>refused: {html.escape(e.problem)}"
                                         f"{' — fix: ' + html.escape(e.fix) if e.fix else ''}</span>")
            self._show_state()
            return None
        self.last_refusal = None
        self._busy = True
        self.relaunch_button.disabled = True
        rec = Relaunch(index=len(self.history) + 1, cfg=cfg, ok=False)
        previous = self.engine.cfg
        try:
            self._step(0.05, "closing the live model")
            rec.rss_before = rss_bytes()
            self.engine.close()
            rec.rss_closed = rss_bytes()
            rec.gpu_free_before = gpu_free_bytes() if self.gpu else None
            try:
                p = self.plan(cfg)
                rec.estimate = estimated(p)
                if self.gpu:
                    rec.estimate_extra = {"CUDA context (estimate)": p.runtime}
            except Exception as e:  # noqa: BLE001 - the plan is informative, the load decides
                self.progress_label.value = f"no estimate: {html.escape(str(e))}"
            self._step(0.15, "loading")
            with _Ticker(lambda s: self._step(None, f"loading… {s:.1f} s")):
                self.engine.load(cfg)
            rec.load_seconds = self.engine.load_seconds
            self._read_live(rec)
            rec.ok = True
            if self.measure:
                self._step(0.7, "measuring pp/tg")
                try:
                    rec.bench = quick_bench(self.engine.llm, self.n_prompt, self.n_gen)
                except (ValueError, RuntimeError) as e:  # the model is loaded; only the numbers are missing
                    rec.bench = {}
                    self.progress_label.value = f"measurement failed: {html.escape(str(e))}"
            rec.rss_loaded = rss_bytes()
            rec.gpu_free_after = gpu_free_bytes() if self.gpu else None
            self._step(1.0, f"done in {time.time() - rec.started:.1f} s")
        except (QwenkitError, ValueError, RuntimeError, OSError, MemoryError) as e:
            rec.ok = False
            rec.error = getattr(e, "problem", None) or f"{type(e).__name__}: {e}"
            rec.fix = getattr(e, "fix", None) or _fix_for(e)
            self._step(1.0, "<span style='color:#b00020'>load failed</span>")
        finally:
            if not rec.ok:
                self._after_failure(rec, previous)
            self._busy = False
            self.history.append(rec)
            self.last = rec
            self._show_state()
            self._show_result(rec)
            self._show_history()
            self._refresh_pending()
        return rec

    def _after_failure(self, rec: Relaunch, previous: RunConfig | None) -> None:
        """After a failed load: free what the half-built model held (the exception's traceback
        kept it alive), then load the previous config again when `restore` is on."""
        if rec.error is None:
            rec.error = "interrupted"
        gc.collect()
        rec.rss_loaded = rss_bytes()
        if self.restore and previous is not None and not self.engine.loaded:
            self._step(0.5, "load failed: loading the previous config again")
            try:
                self.engine.load(previous)
                rec.restored = previous
            except (QwenkitError, ValueError, RuntimeError, OSError, MemoryError):
                gc.collect()
            self._step(1.0, "<span style='color:#b00020'>load failed</span>")

    def _step(self, frac: float | None, text: str) -> None:
        if frac is not None:
            self.progress.value = frac
        self.progress_label.value = text

    def _read_live(self, rec: Relaunch) -> None:
        llm, log = self.engine.llm, self.engine.log
        rec.live_n_ctx = int(llm.n_ctx())
        kv = log.kv_cache() if log is not None else []
        rec.kv_types = (kv[0].type_k, kv[0].type_v) if kv else None
        rec.allocated = allocated(log) if log is not None else {}
        rec.offloaded = log.offloaded() if log is not None else None

    # ---- views ------------------------------------------------------------------------------------
    def live_state(self) -> dict[str, Any]:
        """The live model as llama.cpp reports it: n_ctx from `llm.n_ctx()`, KV types and cells
        from its log of the context it created; {} when nothing is loaded."""
        if not self.engine.loaded:
            return {}
        log = self.engine.log
        kv = log.kv_cache() if log is not None else []
        return {"config": self.engine.cfg, "n_ctx": int(self.engine.llm.n_ctx()),
                "type_k": kv[0].type_k if kv else None, "type_v": kv[0].type_v if kv else None,
                "kv_cells": kv[0].cells if kv else None, "kv_layers": kv[0].layers if kv else None,
                "offloaded": log.offloaded() if log is not None else None,
                "n_overrides": len(log.overrides()) if log is not None else 0,
                "load_seconds": self.engine.load_seconds}

    def describe_live(self) -> str:
        s = self.live_state()
        if not s:
            return "no model loaded"
        kv = f"KV K {s['type_k']} / V {s['type_v']}" if s["type_k"] else "no KV cache"
        cfg = s["config"]
        moe = f", n_cpu_moe {cfg.n_cpu_moe} ({s['n_overrides']} expert tensors in RAM)" if cfg.n_cpu_moe else ""
        off = f", offloaded {s['offloaded'][0]}/{s['offloaded'][1]} layers" if s["offloaded"] else ""
        return (f"live model: {Path(cfg.model).name}, n_ctx {s['n_ctx']}, {kv}, flash_attn "
                f"{'on' if cfg.flash_attn else 'off'}{off}{moe}, loaded in {s['load_seconds']:.2f} s")

    def _show_state(self) -> None:
        last = self.last
        if self.engine.loaded:
            head = (f"<div style='color:#137333'><b>{html.escape(self.describe_live())}</b></div>")
        else:
            head = "<div style='color:#b00020'><b>no model loaded</b></div>"
        extra = ""
        if last is not None and not last.ok:
            extra = (f"<div style='color:#b00020'><b>relaunch #{last.index} failed:</b> {html.escape(last.error or '')}"
                     + (f"<br><b>fix:</b> {html.escape(last.fix)}" if last.fix else "")
                     + "<br>"
                     + (f"the previous config was loaded again ({html.escape(last.restored.summary())})"
                        if last.restored is not None else
                        "the previous model was closed before the load: no model is loaded now")
                     + "</div>")
        elif last is None and not self.engine.loaded:
            extra = "<div>press <b>Relaunch</b> to load the settings above</div>"
        if self.last_refusal is not None:
            extra += (f"<div style='color:#b00020'>not relaunched: {html.escape(self.last_refusal.problem)}"
                      f"{' — fix: ' + html.escape(self.last_refusal.fix) if self.last_refusal.fix else ''}</div>")
        self.status_html.value = head + extra

    def _show_result(self, rec: Relaunch) -> None:
        if not rec.ok:
            self.result_html.value = ""
            return
        # a CPU-only build has no GPU columns: everything is in system RAM
        gpu_cols = (("GPU estimate", 0, "e"), ("GPU llama.cpp", 0, "a"))
        cols: tuple[tuple[str, int, str], ...] = gpu_cols if self.gpu else ()
        cols += (("RAM estimate", 1, "e"), ("RAM llama.cpp", 1, "a"))

        def cells(est: tuple[int, int], alo: tuple[int, int], bold: bool = False) -> str:
            b = ("<b>", "</b>") if bold else ("", "")
            return "".join(f"<td style='text-align:right'>{b[0]}{_mib((est if w == 'e' else alo)[i])}{b[1]}</td>"
                           for _, i, w in cols)

        rows = "".join(f"<tr><td>{html.escape(part)}</td>"
                       + cells(rec.estimate.get(part, (0, 0)), rec.allocated.get(part, (0, 0))) + "</tr>"
                       for part in rec.estimate or rec.allocated)
        tot_e = (sum(g for g, _ in rec.estimate.values()), sum(c for _, c in rec.estimate.values()))
        tot_a = (sum(g for g, _ in rec.allocated.values()), sum(c for _, c in rec.allocated.values()))
        rows += "<tr><td><b>total</b></td>" + cells(tot_e, tot_a, bold=True) + "</tr>"
        for k, v in rec.estimate_extra.items():
            rows += (f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{_mib(v)}</td><td>not reported</td>"
                     + "<td></td>" * (len(cols) - 2) + "</tr>")
        measured = [f"load {rec.load_seconds:.2f} s", f"live n_ctx {rec.live_n_ctx}"]
        if rec.kv_types:
            measured.append(f"KV {rec.kv_types[0]}/{rec.kv_types[1]} (llama.cpp log)")
        if rec.bench:
            measured.append(f"pp {rec.bench['pp_tok_s']:,.0f} tok/s ({rec.bench['n_prompt']} tokens), "
                            f"tg {rec.bench['tg_tok_s']:,.1f} tok/s ({rec.bench['n_gen']} tokens)")
        mem = [f"closing the old model freed {_mib(rec.freed)} MiB of RSS",
               f"RSS now {_mib(rec.rss_loaded)} MiB"]
        if rec.gpu_free_before is not None and rec.gpu_free_after is not None:
            mem.append(f"GPU free {_mib(rec.gpu_free_before)} → {_mib(rec.gpu_free_after)} MiB "
                       f"(used {_mib(rec.gpu_free_before - rec.gpu_free_after)} MiB)")
        self.result_html.value = (
            f"<div><b>relaunch #{rec.index}:</b> {html.escape('; '.join(measured))}</div>"
            f"<div style='color:#555'>{html.escape('; '.join(mem))}</div>"
            "<table style='font-size:90%'><tr><th>part</th>" + "".join(f"<th>{c}</th>" for c, _, _ in cols)
            + f"</tr>{rows}</table>"
            "<div style='color:#555;font-size:85%'>MiB; llama.cpp's figures are the buffers it logged for this "
            "model and context (weights mapped from the file count as RAM).</div>")

    def history_rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.history]

    def history_table(self) -> str:
        """The history, one row per relaunch: text when printed, an HTML table as a cell's result."""
        from qwenkit.htmltable import Table
        rows = self.history_rows()
        if not rows:
            return Table([], [], title="no relaunches yet")
        cols = ["#", "n_ctx", "live n_ctx", "K/V", "flash_attn", "n_gpu_layers", "n_cpu_moe", "load s",
                "estimate MiB", "llama.cpp MiB", "pp tok/s", "tg tok/s", "RSS MiB", "result"]
        if not self.gpu:   # a CPU-only build has no GPU layers to show
            cols.remove("n_gpu_layers")
        return Table(cols, [[r[c] for c in cols] for r in rows], align="r" * (len(cols) - 1) + "l")

    def _show_history(self) -> None:
        rows = self.history_rows()
        if not rows:
            self.history_html.value = ""
            return
        cols = [c for c in rows[0] if self.gpu or c != "n_gpu_layers"]   # no GPU layers on a CPU-only build

        def fmt(v: Any) -> str:
            return "-" if v is None else (f"{v:,.2f}" if isinstance(v, float) else str(v))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r[c]))}</td>" for c in cols) + "</tr>"
                       for r in rows[-50:])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        self.history_html.value = ("<details open><summary><b>history</b> (one row per relaunch)</summary>"
                                   f"<table style='font-size:85%'><tr>{head}</tr>{body}</table></details>")
        png = history_png(self.history)
        if png:
            self.plot.value = png

    # ---- save ---------------------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path:
        """Write the pending config (the controls) as JSON for `python -m qwenkit serve --config FILE`.
        Raises ConfigError when the controls describe an invalid config."""
        cfg = self.pending_config()
        p = Path(path or self.save_path.value).expanduser()
        out = cfg.save(p)
        where = html.escape(str(out.resolve()))
        self.save_html.value = (f"<div>saved {where} ({html.escape(cfg.summary())}); serve it "
                                f"with <code>python -m qwenkit serve --config {where}</code></div>")
        return out

    def _save_clicked(self) -> None:
        try:
            self.save()
        except (QwenkitError, OSError) as e:
            self.save_html.value = f"<div style='color:#b00020'>not saved: {html.escape(str(e))}</div>"

    # ---- end ----------------------------------------------------------------------------------------
    def close_model(self) -> None:
        """Close the live model and free its memory (the panel stays usable)."""
        self.engine.close()
        self._show_state()
        self._refresh_pending()

    def close(self) -> None:
        """Close the model and the widgets."""
        self.engine.close()
        for w in self._all_widgets():
            w.close()

    def _all_widgets(self) -> list:
        out, todo = [], [self.ui]
        while todo:
            w = todo.pop()
            out.append(w)
            todo.extend(getattr(w, "children", ()))
        return out


def _fix_for(e: BaseException) -> str | None:
    from qwenkit.llamalog import fix_for
    if isinstance(e, MemoryError):
        return fix_for("out of memory")
    return fix_for(str(e))


class _Ticker:
    """Calls `fn(elapsed_seconds)` every `every` s from a thread while the block runs (a load
    blocks the kernel in C; the widget still shows time passing)."""

    def __init__(self, fn: Callable[[float], None], every: float = 0.5):
        self.fn, self.every = fn, every
        self._stop = threading.Event()
        self._t0 = 0.0
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):   # display only
                self.fn(time.perf_counter() - self._t0)

    def __enter__(self) -> _Ticker:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True, name="qwenkit-load-ticker")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


def history_figure(history: list[Relaunch]):
    """A matplotlib Figure: tok/s (pp, tg) and memory (estimate, llama.cpp, RSS) per relaunch."""
    from matplotlib.figure import Figure
    ok = [r for r in history if r.ok]
    fig = Figure(figsize=(9, 3.2), dpi=90)
    ax1, ax2 = fig.subplots(1, 2)
    if ok:
        x = [r.index for r in ok]
        labels = [f"#{r.index}\n{r.label()}" for r in ok]
        tg = [r.bench.get("tg_tok_s", float("nan")) for r in ok]
        pp = [r.bench.get("pp_tok_s", float("nan")) for r in ok]
        ax1.plot(x, tg, "o-", color="tab:blue", label="tg (decode)")
        ax1.set_ylabel("tg tok/s", color="tab:blue")
        ax1b = ax1.twinx()
        ax1b.plot(x, pp, "s--", color="tab:orange", label="pp (prefill)")
        ax1b.set_ylabel("pp tok/s", color="tab:orange")
        ax1.set_title("speed per relaunch")
        est = [r.estimate_total / MiB for r in ok]
        alloc = [r.allocated_total / MiB for r in ok]
        rss = [r.rss_loaded / MiB for r in ok]
        ax2.plot(x, est, "o-", label="estimate")
        ax2.plot(x, alloc, "x--", label="llama.cpp allocated")
        ax2.plot(x, rss, ".:", label="process RSS")
        ax2.set_ylabel("MiB")
        ax2.set_title("memory per relaunch")
        ax2.legend(fontsize=7)
        step = max(1, len(x) // 8)
        for ax in (ax1, ax2):
            ax.set_xticks(x[::step])
            ax.set_xticklabels(labels[::step], fontsize=7)
    fig.tight_layout()
    return fig


def history_png(history: list[Relaunch]) -> bytes:
    fig = history_figure(history)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def tune_panel(model: str | Path | None = None, **kw: Any) -> TunePanel:
    """The tuning panel for `model` (default: the small default model). Keyword arguments:
    base: a RunConfig for the settings the panel has no control for;
    n_ctx: the starting stop of the slider; n_threads: llama.cpp threads (default all cores);
    engine: an Engine to reuse; measure / n_prompt / n_gen: the pp/tg measurement;
    save_path: default tuned.json in the kit's cache folder;
    restore: load the previous config again after a failed load (default on);
    gpu: plan for a GPU build (default: what this llama-cpp-python was built with).
    Nothing loads until Relaunch is pressed (or `relaunch_button.click()` is called)."""
    return TunePanel(model, **kw)


__all__ = [
    "Relaunch",
    "TunePanel",
    "allocated",
    "ctx_options",
    "estimated",
    "history_figure",
    "history_png",
    "quick_bench",
    "ram_available_bytes",
    "tune_panel",
]
