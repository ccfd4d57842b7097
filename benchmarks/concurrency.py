"""Many users at once: the kit's server (qwenkit.serving: N slots, continuous batching) vs
llama.cpp's own `llama-server` built from the same sources and flags, side by side in ONE run.

    # 2-core CPU, the default model (SmolLM2-135M); users 2 and 4. At 1 thread (a shared machine:
    # --threads 1) the ~3K-token prompts make it ~15 min for 3 full rounds (4 users long got 2 of
    # 3 under --budget 560 in the committed run); 2 threads on an idle machine about halve that:
    python benchmarks/concurrency.py            # writes benchmarks/results/concurrency_cpu.json

    # GPU (H200), the full-size random synthetic Qwen3.5-35B-A3B (written once, ~15 s), users
    # 8 and 16, under ~6 min; the tools and the CUDA wheel from scripts/device_build.sh first
    # (~4.6 min, its own command), then the ONE benchmark command:
    bash scripts/device_build.sh .carry /tmp/llbuild
    PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 benchmarks/concurrency.py --gpu \
        --bin-dir /tmp/llbuild/bin --out $OUT_DIR/concurrency_h200.json
    # (--quick: 2 rounds and 128-token long answers, ~3.5 min; --native-extra "--ctx-checkpoints 0"
    # re-runs it with llama-server's hybrid-model checkpoints off, an A/B of its defaults). Then, here:
    # cp <OUT_DIR copied back>/concurrency_h200.json benchmarks/results/ && python benchmarks/results_md.py

What is measured, for each number of users U (1, then the --users list):
- a pair of servers, both loaded with the same model, build and flags: the kit's server with
  `RunConfig(n_ctx=N_CTX, parallel=U)` (n_ctx is PER SLOT; the context holds U x N_CTX cells,
  unified) and `llama-server -c U*N_CTX -np U --kv-unified` (llama-server's -c is the TOTAL
  context its slots share). Per slot both have N_CTX = 4096 tokens: a ~3K-token prompt plus
  its answer fits either. U=1 is `-np 1` against `parallel=1` (the one-stream figure).
- rounds (default 3), interleaved: round k sends each scenario to both servers, the order of
  the servers alternating from round to round, so load from other processes hits both alike.
- a scenario is U users at once (threads released by one barrier), each with a DISTINCT
  prompt (a different passage of qwenkit/data/sample_en.txt with a round/user label in
  front, so no server can reuse another request's prompt) and the SAME max_tokens, greedy,
  streamed `/v1/completions` (qwenkit.bench.stream_completion: http.client, one connection
  per user). "short": ~60-token prompts; "long": ~3K-token prompts (--long-tokens).
  Every answer's finish_reason and completion_tokens are recorded and checked: the lengths
  are equal only when every answer ended with "length" (`--eos-bias` adds a logit_bias of
  -100 against every end-of-generation token for both servers, if a model stops early).
- figures: aggregate tok/s per round = all users' completion tokens / (last token's arrival
  - first request's send); time to first token (send -> first text event) of every user,
  pooled over the rounds, p50 and p90 (linear interpolation between order statistics); for
  U=1 also the decode rate seen by the client ((events - 1) / (last - first event), as
  qwenkit.bench measures it everywhere). Ratio = kit / llama-server for each figure.
- the client must not be the bottleneck: this process's CPU time during each scenario is
  recorded (client_cpu_s), llama-server's own generation time (its `timings`) is compared
  with what the client saw (client_lag: 1.00 = the client kept up), and before the servers
  start a stand-in SSE server in another process streams U x max_tokens canned events as
  fast as it can: the client's ceiling in events/s (client_ceiling).
- the load average before and after every scenario; the kit server's /health decode
  counters (sequences per llama_decode) after each pair.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwenkit import bench
from qwenkit.config import RunConfig, default_threads
from qwenkit.data import sample_one_line

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N_CTX = 4096


# ---- prompts ---------------------------------------------------------------------------------
def prompt_for(kind: str, rnd: int, user: int, users: int, long_chars: int) -> str:
    """A distinct prompt per (round, user): a passage of the sample text starting at an
    offset that differs per user and round, with a label in front."""
    text = sample_one_line("en")
    n = len(text)
    if kind == "short":
        off = ((rnd * 7 + user) * 977) % max(1, n - 400)
        off = text.find(" ", off) + 1
        body = text[off:off + 300]
        body = body[:body.rfind(" ")]
        return f"Passage {rnd + 1}.{user + 1} of a technical report. {body}"
    off = ((rnd * 5 + user) * (n // max(1, users * 3 + 1) + 131)) % n
    off = text.find(" ", off) + 1
    out = []
    size = 0
    while size < long_chars:  # cycle through the text from the offset
        piece = text[off:off + long_chars - size]
        out.append(piece)
        size += len(piece)
        off = 0
    body = "".join(out)
    return f"Reader {rnd + 1}.{user + 1} studies this report and continues it.\n\n{body}"


def chars_per_token(base_url: str, kit: bool, headers: dict) -> float:
    """The model's own tokenizer on the sample text (through the server that has it)."""
    import http.client
    import urllib.parse
    text = sample_one_line("en")
    u = urllib.parse.urlsplit(base_url)
    path, body = (("/extras/tokenize", {"input": text}) if kit else ("/tokenize", {"content": text}))
    c = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=60)
    try:
        c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **headers})
        r = c.getresponse()
        toks = json.loads(r.read())["tokens"]
    finally:
        c.close()
    return len(text) / max(1, len(toks))


# ---- numbers -----------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float | None:
    """q-th percentile (0-100), linear interpolation between order statistics (numpy's default)."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _ratio(a, b):
    return a / b if (a is not None and b) else None


# ---- one scenario: U users at once --------------------------------------------------------------
def burst(base_url: str, prompts: list[str], max_tokens: int, headers: dict, extra: dict) -> dict:
    """Send every prompt at once (one thread each, released together); per-user records and
    the aggregate."""
    n = len(prompts)
    gate = threading.Barrier(n + 1)
    out: list[dict] = [{} for _ in prompts]

    def user(i: int) -> None:
        gate.wait()
        try:
            st = bench.stream_completion(base_url, prompts[i], max_tokens, headers=headers,
                                         extra={"stream_options": {"include_usage": True}, **extra})
        except Exception as e:  # noqa: BLE001 - recorded, the scenario goes on
            out[i] = {"error": f"{type(e).__name__}: {e}"[:500]}
            return
        usage = st.server.get("usage") or {}
        timings = st.server.get("timings") or {}
        if usage.get("completion_tokens") is not None:
            ntok, src = int(usage["completion_tokens"]), "usage"
        elif timings.get("predicted_n") is not None:
            ntok, src = int(timings["predicted_n"]), "timings"
        else:
            ntok, src = st.n_chunks, "events"
        rec = {"t_send": st.t_send, "t_first": st.t_first, "t_last": st.t_last, "ttft_s": st.ttft,
               "events": st.n_chunks, "completion_tokens": ntok, "tokens_from": src,
               "prompt_tokens": usage.get("prompt_tokens", timings.get("prompt_n")),
               "finish_reason": st.finish_reason, "decode_rate": st.decode_rate}
        if timings.get("predicted_ms") and st.t_first is not None and st.t_last is not None and st.n_chunks > 1:
            # llama-server's own time from first to last generated token vs what the client saw
            pn = timings.get("predicted_n") or ntok
            server_s = timings["predicted_ms"] / 1000 * (pn - 1) / max(1, pn)
            rec["client_lag"] = (st.t_last - st.t_first) / server_s if server_s > 0 else None
        out[i] = rec

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    la0, cpu0 = os.getloadavg(), bench.cpu_seconds()
    gate.wait()
    for t in threads:
        t.join()
    cpu1, la1 = bench.cpu_seconds(), os.getloadavg()
    ok = [r for r in out if "error" not in r and r.get("t_last") is not None]
    wall = (max(r["t_last"] for r in ok) - min(r["t_send"] for r in ok)) if ok else None
    toks = sum(r["completion_tokens"] for r in ok)
    t0 = min((r["t_send"] for r in ok), default=0.0)
    for r in out:  # relative times are enough in the file
        for k in ("t_send", "t_first", "t_last"):
            if r.get(k) is not None:
                r[k] = round(r[k] - t0, 4)
    lags = [r["client_lag"] for r in ok if r.get("client_lag")]
    return {"users": out, "wall_s": wall, "completion_tokens": toks,
            "aggregate_tps": toks / wall if wall else None,
            "all_length": len(ok) == n and all(r["finish_reason"] == "length" for r in ok),
            "equal_tokens": len(ok) == n and len({r["completion_tokens"] for r in ok}) == 1,
            "errors": n - len(ok), "client_cpu_s": round(cpu1 - cpu0, 3),
            "client_lag_max": max(lags) if lags else None,
            "load_before": list(la0), "load_after": list(la1)}


# ---- the client's own ceiling ---------------------------------------------------------------------
_FAKE = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = int(body["max_tokens"])
        self.send_response(200); self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close"); self.end_headers()
        def ev(t, f):
            choice = {"index": 0, "text": t, "finish_reason": f, "logprobs": None}
            chunk = {"id": "x", "object": "text_completion", "created": 0, "model": "m", "choices": [choice]}
            return ("data: " + json.dumps(chunk) + "\n\n").encode()
        for i in range(n):
            self.wfile.write(ev(" word", None)); self.wfile.flush()
        self.wfile.write(ev("", "length"))
        self.wfile.write(("data: " + json.dumps({"choices": [], "usage": {"completion_tokens": n, "prompt_tokens": 1}})
                          + "\n\ndata: [DONE]\n\n").encode())
        self.wfile.flush()
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
'''


def client_ceiling(users: int, max_tokens: int) -> dict:
    """Events/s this client takes in from a stand-in server that writes canned SSE events as
    fast as it can (another process): what the client could count at most."""
    p = subprocess.Popen([sys.executable, "-c", _FAKE], stdout=subprocess.PIPE, text=True)
    try:
        port = int(cast(IO[str], p.stdout).readline())  # stdout=PIPE: never None
        url = f"http://127.0.0.1:{port}/v1"
        burst(url, ["x"] * users, 8, {}, {})
        b = burst(url, ["x"] * users, max_tokens, {}, {})
        return {"users": users, "max_tokens": max_tokens, "events_per_s": b["aggregate_tps"],
                "client_cpu_s": b["client_cpu_s"], "wall_s": b["wall_s"]}
    finally:
        p.terminate()
        p.wait(5)


# ---- the run ---------------------------------------------------------------------------------------
def summarize(bursts: list[dict], one_stream: bool) -> dict:
    ttfts = [u["ttft_s"] for b in bursts for u in b["users"] if u.get("ttft_s") is not None]
    aggs = [b["aggregate_tps"] for b in bursts if b["aggregate_tps"]]
    s = {"rounds": len(bursts), "aggregate_tps_rounds": aggs,
         "aggregate_tps": statistics.fmean(aggs) if aggs else None,
         "aggregate_tps_sd": statistics.stdev(aggs) if len(aggs) > 1 else 0.0,
         "ttft_p50_s": pct(ttfts, 50), "ttft_p90_s": pct(ttfts, 90), "ttft_max_s": max(ttfts) if ttfts else None,
         "n_ttft": len(ttfts),
         "all_length": all(b["all_length"] for b in bursts),
         "equal_tokens": all(b["equal_tokens"] for b in bursts)
         and len({b["users"][0].get("completion_tokens") for b in bursts}) == 1,
         "errors": sum(b["errors"] for b in bursts),
         "finish_reasons": sorted({u.get("finish_reason") or "error" for b in bursts for u in b["users"]}),
         "completion_tokens_per_user": sorted({u.get("completion_tokens") for b in bursts for u in b["users"]
                                               if u.get("completion_tokens") is not None}),
         "prompt_tokens": sorted({u.get("prompt_tokens") for b in bursts for u in b["users"]
                                  if u.get("prompt_tokens") is not None}),
         "client_cpu_s": round(sum(b["client_cpu_s"] for b in bursts), 3),
         "client_lag_max": max((b["client_lag_max"] for b in bursts if b["client_lag_max"]), default=None)}
    if s["prompt_tokens"]:
        s["prompt_tokens"] = [min(s["prompt_tokens"]), max(s["prompt_tokens"])]
    if one_stream:
        rates = [u["decode_rate"] for b in bursts for u in b["users"] if u.get("decode_rate")]
        s["decode_tps_rounds"] = rates
        s["decode_tps"] = statistics.fmean(rates) if rates else None
        s["decode_tps_sd"] = statistics.stdev(rates) if len(rates) > 1 else 0.0
    return s


def row(users: int, kind: str, max_tokens: int, k: dict, n: dict) -> dict:
    r = {"users": users, "prompt": kind, "max_tokens": max_tokens, "kit": k, "llama_server": n,
         "aggregate_ratio": _ratio(k["aggregate_tps"], n["aggregate_tps"]),
         "ttft_p50_ratio": _ratio(k["ttft_p50_s"], n["ttft_p50_s"]),
         "ttft_p90_ratio": _ratio(k["ttft_p90_s"], n["ttft_p90_s"]),
         "equal_lengths": k["all_length"] and n["all_length"] and k["equal_tokens"] and n["equal_tokens"]
         and k["completion_tokens_per_user"] == n["completion_tokens_per_user"]}
    ka, na = k["aggregate_tps_rounds"], n["aggregate_tps_rounds"]
    if len(ka) == len(na) > 1:
        r["aggregate_ratio_median_of_rounds"] = statistics.median(a / b for a, b in zip(ka, na, strict=True))
    if "decode_tps" in k:
        r["decode_ratio"] = _ratio(k["decode_tps"], n["decode_tps"])
    return r


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def table(rows: list[dict]) -> str:
    """The markdown table, as benchmarks/RESULTS.md shows it (results_md.py renders both)."""
    sys.path.insert(0, str(HERE))
    from results_md import concurrency_table
    return concurrency_table(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="GPU mode: all layers on the GPU, users 8,16, the "
                    "full-size synthetic Qwen3.5 unless --model, 256-token long answers")
    ap.add_argument("--model", help="GGUF (CPU default: the default model; --gpu default: the synthetic Qwen3.5)")
    ap.add_argument("--model-dir", default=os.environ.get("QWENKIT_GPU_MODEL_DIR", "/tmp/qwenkit-models"))
    ap.add_argument("--users", help="comma list (default 2,4 on the CPU, 8,16 with --gpu); 1 always runs first")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --quick 2)")
    ap.add_argument("--max-tokens", type=int, default=128, help="answer length, short prompts (and one stream)")
    ap.add_argument("--long-max-tokens", type=int, default=None, help="answer length, long prompts "
                    "(default 128 on the CPU, 256 with --gpu, 128 with --quick)")
    ap.add_argument("--long-tokens", type=int, default=3000, help="long prompts' size in tokens (about); 0 skips them")
    ap.add_argument("--n-ctx", type=int, default=N_CTX, help="context PER SLOT, both servers")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--bin-dir", default=None, help="folder with llama-server (default: bench.find_tools())")
    ap.add_argument("--eos-bias", action="store_true", help="logit_bias -100 on every end-of-generation token "
                    "(both servers), so that no answer stops early")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 128-token long answers")
    ap.add_argument("--budget", type=float, default=None, help="seconds; no server pair starts past it, and no "
                    "round that would end past budget + 200 s (+ 300 s on the CPU); default 900 on the CPU, "
                    "330 with --gpu")
    ap.add_argument("--native-extra", default="", help="more llama-server flags, e.g. \"--ctx-checkpoints 0 "
                    "--cache-ram 0\" (its defaults for hybrid models: 32 context checkpoints per slot, an 8 GiB "
                    "host-RAM prompt cache); recorded in the JSON")
    ap.add_argument("--note", action="append", default=[], help="a line for RESULTS.md (repeatable)")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/concurrency_cpu.json, or "
                    "concurrency_<gpu>.json with --gpu)")
    a = ap.parse_args(argv)
    t_start = time.monotonic()
    rounds = a.rounds or (2 if a.quick else 3)
    users = [int(x) for x in (a.users or ("8,16" if a.gpu else "2,4")).split(",") if x.strip()]
    users = [1] + [u for u in users if u != 1]
    long_max = a.long_max_tokens or (128 if (a.quick or not a.gpu) else 256)
    budget = a.budget or (330 if a.gpu else 900)
    hard = budget + (200 if a.gpu else 300)  # no round starts that would end past this
    if a.gpu:
        model = a.model or bench.synthetic_model(a.model_dir)
        cfg = RunConfig(model=model, n_ctx=a.n_ctx, n_gpu_layers=-1, n_threads=a.threads)
    else:
        from qwenkit.models import default_model_path
        model = a.model or str(default_model_path())
        cfg = RunConfig(model=model, n_ctx=a.n_ctx, n_threads=a.threads)  # as cpu_compare.py
    out_name = f"concurrency_{bench.gpu_slug()}.json" if a.gpu else "concurrency_cpu.json"
    out = Path(a.out or HERE / "results" / out_name)
    bin_dir = Path(a.bin_dir) if a.bin_dir else bench.find_tools(("llama-server",))
    if bin_dir is None or not (bin_dir / "llama-server").is_file():
        print("llama-server is not built: run scripts/build_tools.sh (or pass --bin-dir)", file=sys.stderr)
        return 2
    extra = {"logit_bias": bench.eog_bias(model)} if a.eos_bias else {}
    native_extra = a.native_extra.split()

    meta = bench.machine_info()
    meta.update(model=Path(model).name, model_path=model, threads=a.threads, tools=str(bin_dir), reps=rounds,
                users=users, max_tokens=a.max_tokens, long_max_tokens=long_max, long_tokens=a.long_tokens,
                n_ctx_per_slot=a.n_ctx, eos_bias=bool(extra), native_extra=native_extra, config=cfg.to_dict(),
                suite="concurrency", notes=list(a.note))
    info = bin_dir.parent / "BUILD_INFO"
    if info.is_file():
        meta["tools_build"] = info.read_text().strip().splitlines()
    meta["servers"] = {
        "kit": "qwenkit.server.start(RunConfig(n_ctx=N_CTX per slot, parallel=U)): one context of U x N_CTX "
               "cells, unified KV, continuous batching",
        "llama-server": f"{(bench.NativeServer.__doc__ or '').strip()} with -c U x N_CTX (its total) and "
                        "`-np U --kv-unified` (U > 1; -np 1 for one stream); same -t/-tb/-ngl/-fa/-ctk/-ctv/-b/-ub",
        "n_ctx_per_slot": a.n_ctx}
    doc: dict[str, Any] = {"meta": meta, "results": [], "concurrency": [], "pairs": [], "bursts": []}

    def save() -> None:
        meta["wall_s"] = round(time.monotonic() - t_start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        tmp.replace(out)

    print(f"{cfg.summary()} | tools: {bin_dir} | users {users} | rounds {rounds} | out {out}",
          file=sys.stderr, flush=True)
    doc["client_ceiling"] = client_ceiling(max(users), max(2000, a.max_tokens))
    print(f"client ceiling: {doc['client_ceiling']['events_per_s']:.0f} events/s over {max(users)} streams "
          f"(a stand-in server)", file=sys.stderr, flush=True)
    loads = []
    cpt = None
    for U in users:
        left = budget - (time.monotonic() - t_start)
        if doc["concurrency"] and left < 30:
            doc["pairs"].append({"users": U, "status": f"skipped: {left:.0f} s of the budget left"})
            print(f"== {U} users: skipped ({left:.0f} s left)", file=sys.stderr, flush=True)
            save()
            continue
        t_pair = time.monotonic()
        with bench.server_pair(cfg, U, bin_dir, together=a.gpu, native_extra=native_extra) as (kit, nat):
            servers = {"kit": kit, "llama-server": nat}
            props = bench.get_json(f"http://127.0.0.1:{nat.port}/props")
            pinfo = {"users": U, "load_s": round(time.monotonic() - t_pair, 1),
                     "llama_server_args": nat.argv[1:] if hasattr(nat, "argv") else None,
                     "llama_server_total_slots": props.get("total_slots") if isinstance(props, dict) else None,
                     "kit_health_start": kit.health()}
            if cpt is None:
                cpt = chars_per_token(kit.base_url.rsplit("/v1", 1)[0], True, kit.headers())
                meta["chars_per_token"] = round(cpt, 3)
            long_chars = int(a.long_tokens * cpt)
            kinds = [("short", a.max_tokens)] + ([("long", long_max)] if a.long_tokens and U > 1 else [])
            for srv in servers.values():  # warm-up: U short requests at once, 8 tokens
                burst(srv.base_url, [prompt_for("short", 99, i, U, 0) for i in range(U)], 8, srv.headers(), extra)
            got: dict[tuple, list[dict]] = {}
            round_s = 0.0
            for k in range(rounds):
                elapsed = time.monotonic() - t_start
                if k >= 1 and elapsed + round_s > hard:  # past the hard limit: fewer rounds for this pair
                    pinfo["rounds_skipped"] = f"{rounds - k} (at {elapsed:.0f} s, a round takes {round_s:.0f} s)"
                    print(f"  rounds {k + 1}-{rounds} skipped: {elapsed:.0f} s gone, a round takes {round_s:.0f} s",
                          file=sys.stderr, flush=True)
                    break
                t_round = time.monotonic()
                order = list(servers) if k % 2 == 0 else list(reversed(servers))
                for kind, mt in kinds:
                    prompts = [prompt_for(kind, k, i, U, long_chars) for i in range(U)]
                    for name in order:
                        srv = servers[name]
                        b = burst(srv.base_url, prompts, mt, srv.headers(), extra)
                        b.update(server=name, users_n=U, prompt=kind, round=k, max_tokens=mt)
                        doc["bursts"].append(b)
                        got.setdefault((kind, name), []).append(b)
                        loads.append({"round": k, "users": U, "prompt": kind, "server": name,
                                      "before": b["load_before"], "after": b["load_after"]})
                        finishes = sorted({u.get("finish_reason") for u in b["users"]}, key=str)
                        print(f"  U={U} {kind:5} round {k + 1} {name:12}: {_f(b['aggregate_tps'], '{:.1f}')} tok/s, "
                              f"TTFT max {_f(max((u.get('ttft_s') or 0) for u in b['users']), '{:.2f}')} s, "
                              f"{b['completion_tokens']} tok, finish {finishes}, "
                              f"load {b['load_before'][0]:.2f}->{b['load_after'][0]:.2f}, "
                              f"client cpu {b['client_cpu_s']:.2f} s", file=sys.stderr, flush=True)
                    save()
                round_s = time.monotonic() - t_round
            pinfo["kit_health_end"] = kit.health()
            pinfo["seconds"] = round(time.monotonic() - t_pair, 1)
            doc["pairs"].append(pinfo)
            for kind, mt in kinds:
                ks, ns = summarize(got[(kind, "kit")], U == 1), summarize(got[(kind, "llama-server")], U == 1)
                doc["concurrency"].append(row(U, kind, mt, ks, ns))
                for name, s in (("kit server", ks), ("llama-server", ns)):
                    test = f"{U} user{'s' if U > 1 else ''}, {kind}, {mt} tok (aggregate)"
                    doc["results"].append(bench.BenchResult(
                        test, name, 0, mt, 0, list(s["aggregate_tps_rounds"]), bench.config_fields(cfg),
                        {"ttft_p50_s": s["ttft_p50_s"], "ttft_p90_s": s["ttft_p90_s"], "users": U,
                         "parallel": U}).to_dict())
                    if U == 1 and s.get("decode_tps_rounds"):
                        doc["results"].append(bench.BenchResult(
                            f"tg{mt} (stream)", name, 0, mt, 0, list(s["decode_tps_rounds"]),
                            bench.config_fields(cfg), {"users": 1}).to_dict())
            save()
    meta["load"] = loads
    meta["machine_after"] = {"loadavg": list(os.getloadavg())}
    save()
    print(table(doc["concurrency"]))
    print(f"\nwrote {out} ({time.monotonic() - t_start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
