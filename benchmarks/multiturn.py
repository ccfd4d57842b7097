"""Multi-turn chats (issue 14): time to first token per turn from the kit's server with its
prompt cache, the same server with the cache off (the cold prefill of the same conversation
each turn), and llama.cpp's own `llama-server` with its prompt reuse (context checkpoints,
host-RAM prompt cache, its defaults), all three loaded side by side in ONE run, same build,
model and flags.

    # 2-core CPU, the default model (SmolLM2-135M), 10 turns x 500 new tokens, --threads 1
    # (a shared machine). The cache-off server prefills every turn's whole history, the
    # expensive part: the committed run, --turns 5, took 471 s at load 3-4.9 (cache off 253 s of
    # it); 10 turns would be ~20 min at that load:
    python benchmarks/multiturn.py              # writes benchmarks/results/multiturn_cpu.json
    python benchmarks/multiturn.py --model /path/qwen35moe-synthetic.gguf \
        --out benchmarks/results/multiturn_cpu_qwen35moe.json

    # GPU (H200), the full-size random synthetic Qwen3.5-35B-A3B (written once, ~15 s), 10 turns
    # x 1500 new tokens, 1 and 4 conversations, ~3-4 min (estimated; --budget 390 s stops it
    # between requests, the scenario marked as stopped); the tools and the CUDA wheel from
    # scripts/device_build.sh first (~4.6 min, its own command), then the
    # ONE benchmark command:
    bash scripts/device_build.sh .carry /tmp/llbuild
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/multiturn.py --gpu \
        --bin-dir /tmp/llbuild/bin --out $OUT_DIR/multiturn_h200.json
    # (--quick: 6 turns; --native-extra "--ctx-checkpoints 0 --cache-ram 0" re-runs it with
    # llama-server's prompt reuse for hybrid models off). Then, here:
    # cp <OUT_DIR copied back>/multiturn_h200.json benchmarks/results/ && python benchmarks/results_md.py

What is measured:
- three servers, loaded once and kept for the whole run: "kit" = the kit's server with
  `RunConfig(n_ctx=N_CTX, parallel=4)` (the prompt cache on, the build's default budget);
  "kit cache off" = the same with `prompt_cache_mib=0` (no reuse at all: every turn prefills
  the whole conversation); "llama-server" = `llama-server -c 4*N_CTX -np 4 --kv-unified`
  (its own prompt reuse at its defaults; --native-extra adds flags). N_CTX (per slot) holds
  the whole conversation: the tokenized user turns + turns x (answer + 32) + 512, rounded
  up to 1024 (at least turns x (N + 64) + 512).
- scenario "1 conversation": T turns (default 10); each user turn adds a passage of ~N new
  tokens of qwenkit/data/sample_en.txt (N = 1500 with --gpu, 500 on the CPU; a different
  offset per conversation and turn, with a label and a question around it); answers of 32
  tokens (greedy; logit_bias -100 on every end-of-generation token so that every answer has
  32 tokens: --no-eos-bias lets them stop). The assistant's text as the server streamed it is
  appended to that server's own history, as a real client does (each server continues its own
  conversation). Thinking off: `chat_template_kwargs={"enable_thinking": false}` (the
  synthetic Qwen3.5's template, qwenkit.synthetic, honours it; SmolLM2's ignores it).
- scenario "4 interleaved": 4 conversations A-D sent turn by turn (A1 B1 C1 D1 A2 B2 ...),
  one request at a time, through the same 4-slot servers.
- scenarios "shared" and "shared-busy" (chats that share only a system prompt, the case of
  many users of one assistant): one system prompt of ~--system-tokens tokens (1000 on the CPU,
  4000 with --gpu) of the sample text, then P chats (A-D) of one question each (~80 tokens of
  their own passage). "shared": sent one after another (each after the previous answer);
  "shared-busy": on each server alone, chat A, and each next chat the moment the previous
  one's first token arrives, while the earlier ones still generate (--busy-tokens 160-token
  answers): the system prompt is then only in BUSY slots; "shared-burst": all chats sent at
  once (the same answers), as a room of users or a client's parallel calls do. Each of these scenarios starts on
  servers loaded anew. Figures: per chat the TTFT, what the kit reused (cached_tokens) and
  llama-server reused (cache_n), and over chats B-D the ratios to llama-server and cache off.

    python benchmarks/multiturn.py --scenarios shared,shared-busy,shared-burst --turns 1 --threads 2 \
        --out benchmarks/results/multiturn_cpu_shared.json      # ~1.5 min
- the three servers are asked in lockstep: each request step goes to all three (one after
  the other, the order rotating from step to step), so load from other processes hits them
  alike. Before the first scenario every server answers one short warm-up chat.
- per request: time to first token (send -> first streamed event with text), prompt tokens
  (usage), for the kit `usage.prompt_tokens_details.cached_tokens` (and whether it is at least
  the previous turn's prompt - 8, the issue's criterion), for llama-server its `timings`
  (cache_n: tokens it reused, prompt_n: tokens it computed), the answer's length and finish.
  Streamed `/v1/chat/completions` through http.client (as qwenkit.bench.stream_completion:
  a CUDA machine without internet may lack the openai package), one connection per request.
- figures: TTFT of turns 2-T, median and max, per server; per turn (matched by conversation
  and turn) the ratios kit / llama-server and kit / cache off, and overall: the median and max
  of the per-turn ratios and the ratio of the summed TTFTs (targets of issue 14: <= 1.2 and
  <= 0.15). The kit's /health "prompt_cache" block after each scenario; the load average
  before and after each request step.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenkit import bench
from qwenkit.config import RunConfig, default_threads
from qwenkit.data import sample_one_line

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS = ("kit", "kit_cache_off", "llama_server")
LABEL = {"kit": "kit", "kit_cache_off": "kit cache off", "llama_server": "llama-server"}
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
TARGET_NATIVE, TARGET_COLD = 1.2, 0.15


# ---- the conversations --------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp's loader log (file descriptor 2) goes nowhere while the vocabulary loads."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Vocab:
    """The model's own tokenizer (llama.cpp, the model loaded vocab only: no weights, no context)."""

    def __init__(self, model: str):
        import llama_cpp as lc
        self._lc = lc
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.vocab_only = True
        with quiet_stderr():
            self._model = lc.llama_model_load_from_file(model.encode(), mp)
        if not self._model:
            raise bench.BenchError(f"cannot read the vocabulary of {model}")
        self._vocab = lc.llama_model_get_vocab(self._model)

    def count(self, text: str) -> int:
        lc, b = self._lc, text.encode("utf-8")
        buf = (lc.llama_token * (len(b) + 8))()
        n = lc.llama_tokenize(self._vocab, b, len(b), buf, len(buf), False, False)
        return n if n >= 0 else -n

    def close(self) -> None:
        if self._model:
            self._lc.llama_model_free(self._model)
            self._model = None


def passage(conv: int, turn: int, chars: int) -> str:
    """~chars characters of the sample text from an offset that differs per (conv, turn),
    starting at a word, cycling through the text."""
    text = sample_one_line("en")
    n = len(text)
    off = ((conv * 13 + turn) * 1657 + conv * 211) % n
    off = text.find(" ", off) + 1
    out, size = [], 0
    while size < chars:
        piece = text[off:off + chars - size]
        out.append(piece)
        size += len(piece)
        off = 0
    body = "".join(out)
    return body[:body.rfind(" ")] if " " in body[-40:] else body


def user_message(label: str, turn: int, turns: int, body: str) -> str:
    return (f"Conversation {label}, part {turn + 1} of {turns} of a technical report.\n\n{body}\n\n"
            f"In one sentence: what does part {turn + 1} add?")


def build_conversations(vocab: Vocab, labels: list[str], turns: int, new_tokens: int) -> dict[str, list[str]]:
    """The user turns of each conversation, each ~new_tokens tokens (the passage's size is
    corrected once by its measured token count)."""
    text = sample_one_line("en")
    cpt = len(text) / max(1, vocab.count(text))
    out = {}
    for c, lab in enumerate(labels):
        msgs = []
        for t in range(turns):
            chars = int(new_tokens * cpt)
            body = passage(c, t, chars)
            n = vocab.count(body)
            if n and abs(n - new_tokens) > 0.02 * new_tokens:
                body = passage(c, t, int(chars * new_tokens / n))
            msgs.append(user_message(lab, t, turns, body))
        out[lab] = msgs
    return out


# ---- one streamed chat request -------------------------------------------------------------------
def stream_chat(base_url: str, messages: list[dict], max_tokens: int, *, headers: dict | None = None,
                extra: dict | None = None, timeout: float = 900, on_first: Any = None) -> dict:
    """POST {base_url}/chat/completions, stream=true, greedy; times the first event that
    carries text (content or reasoning_content). Returns the answer's content (what a client
    appends to its history), usage, llama-server's timings, finish_reason."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, **NO_THINKING, **(extra or {})}
    url = base_url.rstrip("/") + "/chat/completions"
    t_first = t_last = None
    content: list[str] = []
    reasoning: list[str] = []
    events, finish, info = 0, None, {}
    with bench.open_stream(url, body, headers=headers, timeout=timeout, source=base_url) as (t_send, stream):
        for now, ev in stream:
            for k in ("usage", "timings"):
                if ev.get(k):
                    info[k] = ev[k]
            ch = (ev.get("choices") or [{}])[0]
            d = ch.get("delta") or {}
            got = False
            if d.get("content"):
                content.append(d["content"])
                got = True
            if d.get("reasoning_content"):
                reasoning.append(d["reasoning_content"])
                got = True
            if got:
                events += 1
                if t_first is None and on_first is not None:
                    on_first()
                t_first = now if t_first is None else t_first
                t_last = now
            finish = ch.get("finish_reason") or finish
    usage, timings = info.get("usage") or {}, info.get("timings") or {}
    return {"ttft_s": None if t_first is None else t_first - t_send,
            "answer_s": None if t_last is None else t_last - t_send,
            "content": "".join(content), "reasoning": "".join(reasoning), "events": events,
            "finish_reason": finish, "prompt_tokens": usage.get("prompt_tokens", timings.get("prompt_n")),
            "completion_tokens": usage.get("completion_tokens", timings.get("predicted_n")),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "timings": {k: timings[k] for k in ("cache_n", "prompt_n", "prompt_ms", "predicted_n") if k in timings}}


# ---- servers --------------------------------------------------------------------------------------
@contextlib.contextmanager
def servers(cfg: RunConfig, parallel: int, bin_dir: Path, native_extra: list[str],
            together: bool) -> Iterator[dict[str, Any]]:
    """{"kit", "kit_cache_off", "llama_server"}: the kit's two (parallel slots of cfg.n_ctx
    each) and llama-server (-c parallel x n_ctx: its total) loaded side by side, all stopped on
    exit. together (a GPU host): the kit's server and llama-server load at once, then the
    cache-off kit; else one after the other."""
    with contextlib.ExitStack() as stack:
        kit, nat = stack.enter_context(bench.server_pair(cfg, parallel, bin_dir, together=together,
                                                         native_extra=native_extra, ready_timeout=600))
        off = stack.enter_context(bench.kit_server(cfg.replace(parallel=parallel, prompt_cache_mib=0),
                                                   port=bench.free_port(), ready_timeout=600))
        yield {"kit": kit, "kit_cache_off": off, "llama_server": nat}


# ---- a scenario -------------------------------------------------------------------------------------
def run_scenario(name: str, srvs: dict, convs: dict[str, list[str]], max_tokens: int, extra: dict,
                 loads: list, save, deadline: float | None, system: str | None = None) -> dict:
    """Every conversation's turns, interleaved turn by turn (A1 B1 ... A2 B2 ...), each request
    step sent to the three servers in a rotating order; every server keeps its own history
    (which starts with `system` as a system message when given)."""
    labels = list(convs)
    turns = len(convs[labels[0]])
    first = [{"role": "system", "content": system}] if system else []
    hist: dict[str, dict[str, list[dict]]] = {s: {lab: list(first) for lab in labels} for s in SERVERS}
    prev_prompt: dict[str, dict[str, int | None]] = {s: {lab: None for lab in labels} for s in SERVERS}
    recs: list[dict] = []
    scen = {"name": name, "conversations": labels, "turns": turns, "requests": recs, "status": "complete"}
    step = 0
    for t in range(turns):
        for lab in labels:
            if deadline is not None and time.monotonic() > deadline:
                scen["status"] = f"stopped at turn {t + 1} of {turns} (conversation {lab}): past the time budget"
                print(f"  {name}: {scen['status']}", file=sys.stderr, flush=True)
                return scen
            order = list(SERVERS[step % 3:] + SERVERS[:step % 3])
            step += 1
            la0 = os.getloadavg()
            line = []
            for s in order:
                srv = srvs[s]
                msgs = hist[s][lab] + [{"role": "user", "content": convs[lab][t]}]
                try:
                    r = stream_chat(srv.base_url, msgs, max_tokens, headers=srv.headers(), extra=extra)
                except Exception as e:  # noqa: BLE001 - recorded; the conversation goes on
                    r = {"error": f"{type(e).__name__}: {e}"[:500], "content": ""}
                answer = r.pop("content")
                r.pop("reasoning", None)
                r.update(server=s, conversation=lab, turn=t + 1, answer_chars=len(answer),
                         answer_head=answer[:60])
                pp = prev_prompt[s][lab]
                if s == "kit" and t > 0 and pp is not None and r.get("cached_tokens") is not None:
                    r["cached_ok"] = r["cached_tokens"] >= pp - 8
                prev_prompt[s][lab] = r.get("prompt_tokens")
                hist[s][lab] = msgs + [{"role": "assistant", "content": answer}]
                recs.append(r)
                cache_n = r.get("timings", {}).get("cache_n")
                line.append(f"{LABEL[s]} {_f(r.get('ttft_s'), '{:.3f}')} s"
                            + (f" (cached {r['cached_tokens']})" if r.get("cached_tokens") is not None else "")
                            + (f" (cache_n {cache_n})" if cache_n is not None else "")
                            + (f" ERROR {r['error'][:120]}" if "error" in r else ""))
            la1 = os.getloadavg()
            loads.append({"scenario": name, "conversation": lab, "turn": t + 1, "before": list(la0),
                          "after": list(la1)})
            pt = next((r.get("prompt_tokens") for r in recs[-3:] if r["server"] == "kit"), None)
            print(f"  {name} {lab}{t + 1} ({pt} prompt tokens): " + "; ".join(line)
                  + f"; load {la0[0]:.2f}->{la1[0]:.2f}", file=sys.stderr, flush=True)
            save()
    return scen


def run_busy(name: str, srvs: dict, system: str, convs: dict[str, list[str]], max_tokens: int, extra: dict,
             save, burst: bool = False) -> dict:
    """Scenario "shared-busy": on each server in turn (alone: concurrency within a server is
    the point), chat A is sent, and every next chat the moment the previous one's first token
    arrives, while the earlier ones still generate (long answers): a later chat finds the
    system prompt only in BUSY slots. burst ("shared-burst"): all chats are sent at once."""
    import threading
    labels = list(convs)
    recs: list[dict] = []
    for s in SERVERS:
        srv = srvs[s]
        outs: dict[str, dict] = {}
        started = [threading.Event() for _ in labels]

        def one(i: int, lab: str, srv=srv, outs=outs, started=started) -> None:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": convs[lab][0]}]
            try:
                outs[lab] = stream_chat(srv.base_url, msgs, max_tokens, headers=srv.headers(), extra=extra,
                                        on_first=started[i].set)
            except Exception as e:  # noqa: BLE001 - recorded
                outs[lab] = {"error": f"{type(e).__name__}: {e}"[:500], "content": ""}
            started[i].set()
        threads = []
        for i, lab in enumerate(labels):
            if i and not burst:
                started[i - 1].wait(600)
            t = threading.Thread(target=one, args=(i, lab), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(900)
        line = []
        for lab in labels:
            r = outs.get(lab, {"error": "no answer", "content": ""})
            r.pop("content", None)
            r.pop("reasoning", None)
            r.update(server=s, conversation=lab, turn=1)
            recs.append(r)
            line.append(f"{lab} {_f(r.get('ttft_s'), '{:.3f}')} s (reused "
                        f"{r.get('cached_tokens', r.get('timings', {}).get('cache_n'))})")
        print(f"  {name} {LABEL[s]}: " + "; ".join(line), file=sys.stderr, flush=True)
        save()
    return {"name": name, "conversations": labels, "turns": 1, "requests": recs, "status": "complete"}


# ---- figures -----------------------------------------------------------------------------------------
def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(scen: dict) -> dict:
    """Per turn (all conversations of the scenario), per server: TTFT median / max, prompt and
    cached tokens; per (conversation, turn) the ratios kit / llama-server and kit / cache off;
    over turns 2-T: TTFT median and max per server, the per-turn ratios' median and max, the
    ratio of the summed TTFTs, and whether the issue's targets hold."""
    by = {(r["server"], r["conversation"], r["turn"]): r for r in scen["requests"]}
    turns = sorted({r["turn"] for r in scen["requests"]})
    convs = scen["conversations"]
    rows = []
    kit_pt = {(r["conversation"], r["turn"]): r.get("prompt_tokens") for r in scen["requests"] if r["server"] == "kit"}
    shares: dict[int, list[tuple[int, int]]] = {}
    for (c, t), pt in kit_pt.items():  # (new tokens since the previous prompt, whole prompt)
        prev = kit_pt.get((c, t - 1)) if t > 1 else 0
        if pt and prev is not None:
            shares.setdefault(t, []).append((pt - prev, pt))
    pair_ratios: dict[str, list[tuple[int, float]]] = {"llama_server": [], "kit_cache_off": []}
    for t in turns:
        row: dict[str, Any] = {"turn": t, "new_share": _med([n / a for n, a in shares.get(t, [])])}
        for s in SERVERS:
            rs = [by[s, c, t] for c in convs if (s, c, t) in by]
            tt = [r.get("ttft_s") for r in rs if r.get("ttft_s") is not None]
            row[s] = {"ttft_s": _med(tt), "ttft_max_s": max(tt) if tt else None,
                      "prompt_tokens": _med([r.get("prompt_tokens") for r in rs]),
                      "errors": sum(1 for r in rs if "error" in r)}
            if s != "llama_server":
                row[s]["prefilled"] = _med([r["prompt_tokens"] - (r.get("cached_tokens") or 0) for r in rs
                                            if r.get("prompt_tokens") is not None])
            if s == "kit":
                row[s]["cached_tokens"] = _med([r.get("cached_tokens") for r in rs])
                oks = [r["cached_ok"] for r in rs if "cached_ok" in r]
                row[s]["cached_ok"] = all(oks) if oks else None
            if s == "llama_server":
                row[s]["cache_n"] = _med([r.get("timings", {}).get("cache_n") for r in rs])
                row[s]["prefilled"] = _med([r.get("timings", {}).get("prompt_n") for r in rs])
        for ref in pair_ratios:
            rr = []
            for c in convs:
                k, b = by.get(("kit", c, t)), by.get((ref, c, t))
                if k and b and k.get("ttft_s") is not None and b.get("ttft_s"):
                    rr.append(k["ttft_s"] / b["ttft_s"])
                    pair_ratios[ref].append((t, rr[-1]))
            row[f"ratio_{ref}"] = _med(rr)
        rows.append(row)
    late = [t for t in turns if t >= 2]
    overall: dict[str, Any] = {"turns": f"2-{max(turns)}" if late else None}
    for s in SERVERS:
        tt = [r["ttft_s"] for r in scen["requests"]
              if r["server"] == s and r["turn"] >= 2 and r.get("ttft_s") is not None]
        overall[s] = {"ttft_median_s": _med(tt), "ttft_max_s": max(tt) if tt else None,
                      "ttft_sum_s": sum(tt) if tt else None, "n": len(tt)}
    for ref, target in (("llama_server", TARGET_NATIVE), ("kit_cache_off", TARGET_COLD)):
        rr = [x for t, x in pair_ratios[ref] if t >= 2]
        ks, bs = overall["kit"]["ttft_sum_s"], overall[ref]["ttft_sum_s"]
        o = {"median": _med(rr), "max": max(rr) if rr else None,
             "of_sums": ks / bs if (ks is not None and bs) else None,
             "of_medians": (overall["kit"]["ttft_median_s"] / overall[ref]["ttft_median_s"]
                            if overall["kit"]["ttft_median_s"] is not None and overall[ref]["ttft_median_s"] else None),
             "target": target}
        o["meets_target_median"] = None if o["median"] is None else o["median"] <= target
        o["meets_target_max"] = None if o["max"] is None else o["max"] <= target
        overall[f"ratio_{ref}"] = o
    late_shares = [x for t, xs in shares.items() if t >= 2 for x in xs]
    # the least a perfect prefix cache could prefill (everything up to the previous prompt reused),
    # as a share of the whole prompt: a floor for kit / cache off if prefill time were linear in tokens
    overall["new_share_of_sums"] = (sum(n for n, _ in late_shares) / sum(a for _, a in late_shares)
                                    if late_shares else None)
    overall["new_share_median"] = _med([n / a for n, a in late_shares])
    oks = [r["cached_ok"] for r in scen["requests"] if "cached_ok" in r]
    overall["kit_cached_ok"] = f"{sum(oks)}/{len(oks)}"
    fins = sorted({str(r.get("finish_reason")) for r in scen["requests"]})
    overall["finish_reasons"] = fins
    overall["completion_tokens"] = sorted({r.get("completion_tokens") for r in scen["requests"]
                                           if r.get("completion_tokens") is not None})
    overall["errors"] = sum(1 for r in scen["requests"] if "error" in r)
    return {"name": scen["name"], "conversations": len(convs), "status": scen["status"], "per_turn": rows,
            "overall": overall}


def shared_chats(vocab: Vocab, labels: list[str], system_tokens: int) -> tuple[str, dict[str, list[str]]]:
    """Scenario "shared": one system prompt of ~system_tokens tokens, and one short question
    (~80 tokens of its own passage) per chat."""
    text = sample_one_line("en")
    cpt = len(text) / max(1, vocab.count(text))
    system = ("You answer questions about a technical report for a workshop. The report follows.\n\n"
              + passage(97, 0, int(system_tokens * cpt)))
    chats = {lab: [f"Chat {lab}. About this passage: {passage(c, 5, int(80 * cpt))}\n\nWhat does it say, in "
                   "one sentence?"] for c, lab in enumerate(labels)}
    return system, chats


def summarize_shared(scen: dict, system_tokens: int) -> dict:
    """Scenario "shared": per chat and server the time to first token, prompt tokens, what the
    kit reused (cached_tokens) and llama-server reused (cache_n); over chats 2-P (the first is
    cold everywhere) the medians and the ratios kit / llama-server and kit / cache off."""
    by = {(r["server"], r["conversation"]): r for r in scen["requests"]}
    convs = scen["conversations"]
    rows = []
    for c in convs:
        row: dict[str, Any] = {"chat": c}
        for s in SERVERS:
            r = by.get((s, c), {})
            row[s] = {"ttft_s": r.get("ttft_s"), "prompt_tokens": r.get("prompt_tokens"),
                      "reused": r.get("cached_tokens") if s != "llama_server" else r.get("timings", {}).get("cache_n"),
                      "error": r.get("error")}
        for ref in ("llama_server", "kit_cache_off"):
            k, b = row["kit"]["ttft_s"], row[ref]["ttft_s"]
            row[f"ratio_{ref}"] = k / b if (k is not None and b) else None
        rows.append(row)
    later = rows[1:]
    overall: dict[str, Any] = {"chats": f"2-{len(rows)}"}
    for s in SERVERS:
        every = [r[s]["ttft_s"] for r in rows if r[s]["ttft_s"] is not None]
        overall[s] = {"ttft_median_s": _med([r[s]["ttft_s"] for r in later]), "ttft_max_s": max(every, default=None)}
    for ref in ("llama_server", "kit_cache_off"):
        overall[f"ratio_{ref}"] = _med([r[f"ratio_{ref}"] for r in later])
    reused = [r["kit"]["reused"] for r in later if r["kit"]["reused"] is not None]
    overall["kit_reused_system"] = f"{sum(1 for x in reused if x >= system_tokens - 8)}/{len(later)}"
    overall["errors"] = sum(1 for r in scen["requests"] if "error" in r)
    return {"name": scen["name"], "kind": "shared", "conversations": len(convs), "status": scen["status"],
            "system_tokens": system_tokens, "per_chat": rows, "overall": overall}


def table(summaries: list[dict]) -> str:
    sys.path.insert(0, str(HERE))
    from results_md import multiturn_tables
    return multiturn_tables(summaries)


# ---- the run -------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="GPU mode: all layers on the GPU, 1500 new tokens per "
                    "turn, the full-size synthetic Qwen3.5 unless --model")
    ap.add_argument("--model", help="GGUF (CPU default: the default model; --gpu default: the synthetic Qwen3.5)")
    ap.add_argument("--model-dir", default=os.environ.get("QWENKIT_GPU_MODEL_DIR", "/tmp/qwenkit-models"))
    ap.add_argument("--turns", type=int, default=None, help="turns per conversation (default 10; --quick 6)")
    ap.add_argument("--new-tokens", type=int, default=None, help="new tokens per user turn (default 1500 with "
                    "--gpu, 500 on the CPU)")
    ap.add_argument("--max-tokens", type=int, default=32, help="answer length")
    ap.add_argument("--parallel", type=int, default=4, help="slots of every server, and conversations of the "
                    "interleaved scenario")
    ap.add_argument("--scenarios", default="one,interleaved", help="comma list of: one, interleaved, shared "
                    "(P chats, one question each, after one long system prompt, sent one after another), "
                    "shared-busy (the same, each chat sent when the previous one's first token arrives), "
                    "shared-burst (all sent at once)")
    ap.add_argument("--busy-tokens", type=int, default=160, help="answer length in scenario shared-busy (the "
                    "earlier chats must still generate when the next one arrives)")
    ap.add_argument("--system-tokens", type=int, default=None, help="the shared system prompt of scenario "
                    "shared (default 4000 with --gpu, 1000 on the CPU)")
    ap.add_argument("--n-ctx", type=int, default=None, help="context PER SLOT (default: the whole conversation "
                    "fits, computed from the tokenized turns)")
    ap.add_argument("--threads", type=int, default=None, help="default 1 on the CPU (a shared 2-core machine), "
                    "all cores with --gpu")
    ap.add_argument("--bin-dir", default=None, help="folder with llama-server (default: bench.find_tools())")
    ap.add_argument("--no-eos-bias", action="store_true", help="let answers stop at an end-of-generation token")
    ap.add_argument("--quick", action="store_true", help="6 turns")
    ap.add_argument("--budget", type=float, default=None, help="seconds; no request step starts past it "
                    "(default 390 with --gpu, none on the CPU)")
    ap.add_argument("--native-extra", default="", help="more llama-server flags, e.g. \"--ctx-checkpoints 0 "
                    "--cache-ram 0\"; recorded in the JSON")
    ap.add_argument("--note", action="append", default=[], help="a line for RESULTS.md (repeatable)")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/multiturn_cpu.json, or "
                    "multiturn_<gpu>.json with --gpu)")
    a = ap.parse_args(argv)
    t_start = time.monotonic()
    turns = a.turns or (6 if a.quick else 10)
    new_tokens = a.new_tokens or (1500 if a.gpu else 500)
    threads = a.threads or (default_threads() if a.gpu else 1)
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    budget = a.budget if a.budget is not None else (390 if a.gpu else None)
    if a.gpu:
        model = a.model or bench.synthetic_model(a.model_dir)
    else:
        from qwenkit.models import default_model_path
        model = a.model or str(default_model_path())
    out = Path(a.out or HERE / "results" / (f"multiturn_{bench.gpu_slug()}.json" if a.gpu else "multiturn_cpu.json"))
    bin_dir = Path(a.bin_dir) if a.bin_dir else bench.find_tools(("llama-server",))
    if bin_dir is None or not (bin_dir / "llama-server").is_file():
        print("llama-server is not built: run scripts/build_tools.sh (or pass --bin-dir)", file=sys.stderr)
        return 2

    vocab = Vocab(model)
    labels_all = [chr(ord("A") + i) for i in range(a.parallel)]
    convs = {"one": build_conversations(vocab, ["S"], turns, new_tokens),
             "interleaved": build_conversations(vocab, labels_all, turns, new_tokens)}
    system_tokens = a.system_tokens or (4000 if a.gpu else 1000)
    system, convs["shared"] = shared_chats(vocab, labels_all, system_tokens)
    convs["shared-busy"] = convs["shared-burst"] = convs["shared"]
    system_tokens = vocab.count(system)
    user_tokens = max(sum(vocab.count(m) for m in msgs) for c in convs.values() for msgs in c.values())
    # 10 % over the counted user tokens: the H200 run's 10th turn rendered 17,824 tokens against
    # a counted need under 17,408 (the template and the answers' re-tokenization add some)
    need = max(int(1.1 * user_tokens) + turns * (a.max_tokens + 32), int(1.1 * system_tokens) + 200) + 512
    n_ctx = a.n_ctx or -(-max(need, turns * (new_tokens + 64) + 512) // 1024) * 1024
    if a.gpu:
        cfg = RunConfig(model=model, n_ctx=n_ctx, n_gpu_layers=-1, n_threads=threads)
    else:
        cfg = RunConfig(model=model, n_ctx=n_ctx, n_threads=threads)
    extra = {} if a.no_eos_bias else {"logit_bias": bench.eog_bias(model)}
    native_extra = a.native_extra.split()

    meta = bench.machine_info()
    meta.update(model=Path(model).name, model_path=model, threads=threads, tools=str(bin_dir), suite="multiturn",
                turns=turns, new_tokens_per_turn=new_tokens, max_tokens=a.max_tokens, parallel=a.parallel,
                n_ctx_per_slot=n_ctx, user_tokens_max_conversation=user_tokens, eos_bias=bool(extra),
                native_extra=native_extra, config=cfg.to_dict(), notes=list(a.note), budget_s=budget,
                client="http.client, streamed /v1/chat/completions, one connection per request, "
                       "chat_template_kwargs enable_thinking=false, temperature 0")
    info = bin_dir.parent / "BUILD_INFO"
    if info.is_file():
        meta["tools_build"] = info.read_text().strip().splitlines()
    meta["servers"] = {
        "kit": f"qwenkit.server.start(RunConfig(n_ctx={n_ctx} per slot, parallel={a.parallel})): prompt cache on "
               "(the build's default budget)",
        "kit_cache_off": "the same with prompt_cache_mib=0: no reuse, every turn prefills the whole conversation",
        "llama_server": f"{(bench.NativeServer.__doc__ or '').strip()} with -c {a.parallel * n_ctx} (its total) "
                        f"and `{' '.join(bench.native_pair_args(a.parallel, native_extra))}`; "
                        "same -t/-tb/-ngl/-fa/-ctk/-ctv/-b/-ub"}
    loads: list = []
    doc: dict[str, Any] = {"meta": meta, "multiturn": [], "scenarios": [], "servers_info": {}}

    def save() -> None:
        meta["wall_s"] = round(time.monotonic() - t_start, 1)
        meta["load"] = loads
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        tmp.replace(out)

    print(f"{cfg.summary()} | tools: {bin_dir} | turns {turns} x {new_tokens} tokens | n_ctx/slot {n_ctx} | "
          f"out {out}", file=sys.stderr, flush=True)
    deadline = None if budget is None else t_start + budget
    t_load = time.monotonic()
    # one/interleaved share their servers; each shared scenario starts on servers loaded anew (no
    # slot may hold its system prompt from before)
    groups = [[n for n in scenarios if not n.startswith("shared")]] + [[n] for n in scenarios if n.startswith("shared")]
    for group in (g for g in groups if g):
        t_load = time.monotonic()
        with servers(cfg, a.parallel, bin_dir, native_extra, together=a.gpu) as srvs:
            nat = srvs["llama_server"]
            if not doc["servers_info"]:
                props = bench.get_json(f"http://127.0.0.1:{nat.port}/props")
                doc["servers_info"] = {"load_s": round(time.monotonic() - t_load, 1),
                                       "llama_server_args": nat.proc.args[1:],
                                       "llama_server_total_slots": (props.get("total_slots")
                                                                    if isinstance(props, dict) else None),
                                       "kit_health_start": srvs["kit"].health(),
                                       "kit_cache_off_health_start": srvs["kit_cache_off"].health()}
            print(f"servers loaded in {time.monotonic() - t_load:.1f} s", file=sys.stderr, flush=True)
            for s in SERVERS:  # warm-up: one short chat each
                stream_chat(srvs[s].base_url, [{"role": "user", "content": f"Warm-up for {LABEL[s]}: say hello."}],
                            8, headers=srvs[s].headers(), extra=extra)
            save()
            for name in group:
                cs = convs[name]
                print(f"== {name}: {len(cs)} conversation(s) x {len(next(iter(cs.values())))} turns",
                      file=sys.stderr, flush=True)
                if name in ("shared-busy", "shared-burst"):
                    scen = run_busy(name, srvs, system, cs, a.busy_tokens, extra, save, burst=name == "shared-burst")
                else:
                    scen = run_scenario(name, srvs, cs, a.max_tokens, extra, loads, save, deadline,
                                        system=system if name == "shared" else None)
                scen["kit_health_end"] = srvs["kit"].health()
                scen["kit_cache_off_health_end"] = srvs["kit_cache_off"].health()
                doc["scenarios"].append(scen)
                doc["multiturn"].append(summarize_shared(scen, system_tokens) if name.startswith("shared")
                                        else summarize(scen))
                save()
    meta["machine_after"] = {"loadavg": list(os.getloadavg())}
    save()
    print(table(doc["multiturn"]))
    print(f"\nwrote {out} ({time.monotonic() - t_start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
