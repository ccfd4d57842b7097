"""Write benchmarks/RESULTS.md from the committed JSON files in benchmarks/results/.

    python benchmarks/results_md.py            # rewrite RESULTS.md
    python benchmarks/results_md.py --check    # exit 1 when RESULTS.md differs from the JSON

RESULTS.md is generated, never edited by hand: tests/test_results_md.py fails when the two
disagree. Each JSON file holds `meta` (machine, CPU, GPU, date, commit, model, load),
`results` (qwenkit.bench.BenchResult dicts), and optionally `comparisons` (figure / baseline /
ratio rows), `quality` (qwenkit.quality.KVQuality dicts) and `speed` (KV label -> ratios).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE / "RESULTS.md"

# files in this order first, then the rest alphabetically
ORDER = ("cpu_compare.json", "gpu_h200_final.json", "gpu_h200_flags.json", "gpu_h200_switches.json",
         "kv_quality.json", "gpu_suite.json", "gpu_h200_server_ab.json")
TITLES = {
    "cpu_compare": "2-core CPU: the kit vs llama-bench and llama-server",
    "cpu_compare_restructured": ("2-core CPU: the same comparison re-run after the issue-16 restructuring "
                                 "(7 rounds, quiet machine)"),
    "gpu_h200_final": "H200: the kit vs llama-bench and llama-server (defaults, server variants, experts in RAM)",
    "gpu_h200_flags": "H200: the kit's defaults vs llama-cpp-python's defaults and the recipe's flags",
    "gpu_h200_switches": "H200: llama.cpp's speed switches (GGML_CUDA_GRAPH_OPT, n_ubatch)",
    "kv_quality": "KV cache types: memory saved, quality cost, decode speed cost",
    "gpu_suite": "H200, first full run (before the server fixes; its KV stage is the GPU KV measurement)",
    "gpu_h200_server_ab": "H200: A/B of a wake-up variant that was dropped, and of CPU threads",
    "concurrency_cpu": "2-core CPU: users at once, the kit's server (N slots) vs llama-server -np N --kv-unified",
    "concurrency_h200": "H200: users at once, the kit's server (N slots) vs llama-server -np N --kv-unified",
    "concurrency_h200_nockpt": "H200, an earlier run (before 795cde5: the kit checkpointed every request): users "
                               "at once, the kit's server (prompt cache on) vs llama-server with its context "
                               "checkpoints off (--ctx-checkpoints 0)",
    "multiturn_cpu": "2-core CPU: multi-turn chats, the kit's prompt cache vs cache off and llama-server",
    "multiturn_cpu_qwen35moe": "2-core CPU: multi-turn chats on the small synthetic Qwen3.5 (hybrid DeltaNet + "
                               "attention, MoE), the kit's prompt cache vs cache off and llama-server",
    "multiturn_cpu_qwen35moe_interleaved": ("2-core CPU, synthetic qwen35moe (small): four chats interleaved "
                                             "over four slots, run to the end after the unpark fix"),
    "multiturn_cpu_shared": ("2-core CPU, default model: chats after one long system prompt, one after another "
                             "and while the earlier ones still generate"),
    "multiturn_cpu_qwen35moe_shared": ("2-core CPU, synthetic qwen35moe (small): chats after one long system "
                                       "prompt, one after another and while the earlier ones still generate"),
    "multiturn_h200": "H200: multi-turn chats, the kit's prompt cache vs cache off and llama-server",
    "multiturn_h200_interleaved": "H200: four chats interleaved turn by turn over four slots, the kit's prompt "
                                  "cache vs cache off and llama-server",
    "summary_slots_cpu": "2-core CPU: one long summary, the kit's server with N slots vs one slot",
    "summary_slots_h200": "H200: a ~30K-token summary, the kit's server with N slots vs one slot",
}


def _md(head, rows) -> str:
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)] if rows else [len(h) for h in head]

    def line(cells) -> str:
        return "| " + " | ".join(str(c).ljust(n) for c, n in zip(cells, w, strict=True)) + " |"
    return "\n".join([line(head), "| " + " | ".join("-" * n for n in w) + " |", *[line(r) for r in rows]])


def _rate(mean, sd, n) -> str:
    if not n:
        return "-"
    return f"{mean:.2f} ± {sd:.2f}"


def _meta_lines(meta: dict) -> list[str]:
    out = []
    def add(label, value):
        if value not in (None, "", [], {}):
            out.append(f"- {label}: {value}")
    add("date", meta.get("date"))
    add("commit", meta.get("commit"))
    add("machine", f"{meta.get('cpu', '?')}, {meta.get('cpu_count', '?')} cores"
        + (f"; host {meta['hostname']}" if meta.get("hostname") else ""))
    add("GPU", meta.get("gpu") or "none")
    add("model", meta.get("model"))
    add("llama-cpp-python", meta.get("llama_cpp_python"))
    tb = meta.get("tools_build")
    if tb:
        add("llama.cpp tools", f"{meta.get('tools')} (built with `{tb[1] if len(tb) > 1 else tb}`)")
    elif meta.get("tools"):
        add("llama.cpp tools", meta.get("tools"))
    if meta.get("threads"):
        add("threads", meta["threads"])
    if meta.get("reps"):
        add("repetitions", f"{meta['reps']} (interleaved rounds)" if meta.get("load") else meta["reps"])
    loads = meta.get("load") or []
    if loads:
        vals = [x for load in loads for x in (load["before"][0], load["after"][0])]
        add("load average (1 min) during the run", f"{min(vals):.2f} - {max(vals):.2f}")
    if meta.get("wall_s"):
        add("wall time", f"{meta['wall_s']} s")
    for n in meta.get("notes", []):
        out.append(f"- note: {n}")
    return out


def _results_table(results: list[dict]) -> str:
    keys = ("type_k", "type_v", "flash_attn", "n_gpu_layers", "n_threads", "n_ubatch", "n_ctx")
    vary = [k for k in keys if len({json.dumps(r.get("config", {}).get(k)) for r in results}) > 1]
    has_setting = any(r.get("extra", {}).get("setting") for r in results)
    head = ["path", "test", *(["setting"] if has_setting else []), *vary, "t/s (mean ± sd)", "reps"]
    rows = []
    for r in results:
        rows.append([r["path"], r["test"], *([r.get("extra", {}).get("setting", "")] if has_setting else []),
                     *[str(r.get("config", {}).get(k, "")) for k in vary],
                     _rate(r.get("mean", 0), r.get("sd", 0), len(r.get("rates", []))), str(len(r.get("rates", [])))])
    return _md(head, rows)


def _comparisons_table(comps: list[dict]) -> str:
    per_round = any("ratio_median_of_rounds" in c for c in comps)
    rows = [[c["figure"], _rate(c["value"], c["sd"], c.get("reps", 1)),
             f"{c['baseline_path']} {c['baseline_test']}",
             _rate(c["baseline"], c["baseline_sd"], c.get("baseline_reps", 1)),
             f"{c['ratio']:.3f}",
             *([f"{c['ratio_median_of_rounds']:.3f}" if "ratio_median_of_rounds" in c else ""] if per_round else [])]
            for c in comps]
    return _md(["figure", "t/s", "baseline (same run)", "baseline t/s", "ratio",
                *(["median of per-round ratios"] if per_round else [])], rows)


def _quality_table(rows: list[dict], speed: dict | None) -> str:
    base = next((r for r in rows if r["type_k"] == "f16" and r["type_v"] == "f16"), None)
    skeys = sorted({k for v in (speed or {}).values() for k in v})
    head = ["KV K/V", "KV bytes/token", "saved vs f16", "PPL", "ln(PPL/PPL_f16)", "mean KLD", "KLD p99",
            "same top token", *skeys]
    out = []
    for r in rows:
        kb = r.get("kv_bytes_per_token")
        saved = f"{1 - kb / base['kv_bytes_per_token']:.0%}" if kb and base and base.get("kv_bytes_per_token") else ""
        sp = (speed or {}).get(r["label"], {})
        out.append([r["label"], f"{kb:,.0f}" if kb else "", saved, f"{r['ppl']:.4f} ± {r['ppl_unc']:.4f}",
                    f"{r['ln_ppl_ratio']:+.5f}", f"{r['kld_mean']:.6f} ± {r['kld_unc']:.6f}", f"{r['kld_p99']:.5f}",
                    f"{r['same_top']:.2%}",
                    *[(f"{sp[k]:.3f}" if isinstance(sp.get(k), (int, float)) else str(sp.get(k, ""))) for k in skeys]])
    return _md(head, out)


def _f(x, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


def concurrency_table(rows: list[dict]) -> str:
    """benchmarks/concurrency.py's rows: per number of users and prompt kind, the kit's server
    vs llama-server: aggregate tok/s (mean of rounds), TTFT p50 / p90 (all users of all rounds
    pooled), ratios kit / llama-server, and whether every answer ended with "length"."""
    head = ["users", "prompt", "answer tokens", "rounds", "kit tok/s", "llama-server tok/s", "ratio",
            "kit TTFT p50 / p90 (s)", "llama-server TTFT p50 / p90 (s)", "TTFT ratio p50 / p90", "equal lengths"]
    out = []
    for r in rows:
        k, n = r["kit"], r["llama_server"]
        one = "decode_tps" in k
        pt = k.get("prompt_tokens") or []
        out.append([str(r["users"]), f"{r['prompt']} ({'-'.join(str(x) for x in sorted(set(pt)))} tokens)",
                    str(r["max_tokens"]), str(min(k["rounds"], n["rounds"])),
                    _f(k["aggregate_tps"], "{:.1f}") + (f"; stream {_f(k.get('decode_tps'), '{:.1f}')}" if one else ""),
                    _f(n["aggregate_tps"], "{:.1f}") + (f"; stream {_f(n.get('decode_tps'), '{:.1f}')}" if one else ""),
                    _f(r["aggregate_ratio"], "{:.3f}")
                    + (f"; stream {_f(r.get('decode_ratio'), '{:.3f}')}" if one else ""),
                    f"{_f(k['ttft_p50_s'], '{:.3f}')} / {_f(k['ttft_p90_s'], '{:.3f}')}",
                    f"{_f(n['ttft_p50_s'], '{:.3f}')} / {_f(n['ttft_p90_s'], '{:.3f}')}",
                    f"{_f(r['ttft_p50_ratio'], '{:.2f}')} / {_f(r['ttft_p90_ratio'], '{:.2f}')}",
                    "yes" if r["equal_lengths"]
                    else "no (" + ", ".join(sorted(set(k["finish_reasons"] + n["finish_reasons"]))) + ")"])
    return _md(head, out)


def _shared_chats_table(sm: dict) -> str:
    """Scenario "shared" of benchmarks/multiturn.py: chats after one long system prompt."""
    head = ["chat", "prompt tokens", "kit reused", "llama-server reused", "kit TTFT (s)", "cache off TTFT (s)",
            "llama-server TTFT (s)", "kit / llama-server", "kit / cache off"]
    rows = [[r["chat"], _f(r["kit"]["prompt_tokens"], "{:.0f}"), _f(r["kit"]["reused"], "{:.0f}"),
             _f(r["llama_server"]["reused"], "{:.0f}"), _f(r["kit"]["ttft_s"], "{:.3f}"),
             _f(r["kit_cache_off"]["ttft_s"], "{:.3f}"), _f(r["llama_server"]["ttft_s"], "{:.3f}"),
             _f(r["ratio_llama_server"], "{:.2f}"), _f(r["ratio_kit_cache_off"], "{:.3f}")] for r in sm["per_chat"]]
    ov = sm["overall"]
    return "\n".join([
        f"#### {sm['conversations']} chats after one system prompt of {sm['system_tokens']} tokens, "
        + {"shared-busy": "each sent when the previous one's first token arrives (earlier ones still generating)",
           "shared-burst": "all sent at once"}.get(sm["name"], "one after another") + f" ({sm['status']})", "",
        _md(head, rows), "",
        f"Chats {ov['chats']}: TTFT median kit {_f(ov['kit']['ttft_median_s'], '{:.3f}')} s, cache off "
        f"{_f(ov['kit_cache_off']['ttft_median_s'], '{:.3f}')} s, llama-server "
        f"{_f(ov['llama_server']['ttft_median_s'], '{:.3f}')} s; the slowest chat of all: kit "
        f"{_f(ov['kit'].get('ttft_max_s'), '{:.3f}')} s, cache off "
        f"{_f(ov['kit_cache_off'].get('ttft_max_s'), '{:.3f}')} s, llama-server "
        f"{_f(ov['llama_server'].get('ttft_max_s'), '{:.3f}')} s; per-chat ratio medians kit / llama-server "
        f"{_f(ov['ratio_llama_server'], '{:.2f}')}, kit / cache off {_f(ov['ratio_kit_cache_off'], '{:.3f}')}. "
        f"The kit reused at least the system prompt (- 8) on {ov['kit_reused_system']} chats; errors "
        f"{ov['errors']}.", ""])


def multiturn_tables(summaries: list[dict]) -> str:
    """benchmarks/multiturn.py's scenarios: per turn the time to first token of the kit's
    server (prompt cache on), the same server with the cache off, and llama-server (median over
    the scenario's conversations, max in brackets when there are several), prompt and reused
    tokens, the per-turn ratios; then turns 2-T overall and the issue's targets."""
    parts = []
    for sm in summaries:
        if sm.get("kind") == "shared":
            parts.append(_shared_chats_table(sm))
            continue
        many = sm["conversations"] > 1

        def t(d: dict, many: bool = many) -> str:
            return _f(d.get("ttft_s"), "{:.3f}") + (f" ({_f(d.get('ttft_max_s'), '{:.3f}')})" if many else "")
        head = ["turn", "prompt tokens", "new share", "kit cached", "llama-server reused", "kit TTFT (s)",
                "cache off TTFT (s)", "llama-server TTFT (s)", "kit / llama-server", "kit / cache off"]
        rows = []
        for r in sm["per_turn"]:
            k, o, n = r["kit"], r["kit_cache_off"], r["llama_server"]
            rows.append([str(r["turn"]), _f(k.get("prompt_tokens"), "{:.0f}"), _f(r.get("new_share"), "{:.3f}"),
                         _f(k.get("cached_tokens"), "{:.0f}")
                         + ("" if k.get("cached_ok") in (None, True) else " (short)"),
                         _f(n.get("cache_n"), "{:.0f}"), t(k), t(o), t(n),
                         _f(r.get("ratio_llama_server"), "{:.2f}"), _f(r.get("ratio_kit_cache_off"), "{:.3f}")])
        ov = sm["overall"]
        title = f"{sm['conversations']} conversation{'s interleaved turn by turn' if many else ''}"
        parts += [f"#### {title} ({sm['status']})", "", _md(head, rows), ""]
        head2 = ["turns " + str(ov.get("turns")), "kit", "cache off", "llama-server"]
        servers = ("kit", "kit_cache_off", "llama_server")
        rows2 = [["TTFT median (s)", *[_f(ov[s]["ttft_median_s"], "{:.3f}") for s in servers]],
                 ["TTFT max (s)", *[_f(ov[s]["ttft_max_s"], "{:.3f}") for s in servers]]]
        for ref, lab in (("llama_server", "kit / llama-server"), ("kit_cache_off", "kit / cache off")):
            o = ov[f"ratio_{ref}"]
            ok = "-" if o["meets_target_median"] is None else (
                "met" if o["meets_target_max"] else ("median met, max not" if o["meets_target_median"] else "not met"))
            rows2.append([f"{lab}: per-turn ratio median / max; of summed TTFT",
                          f"{_f(o['median'], '{:.3f}')} / {_f(o['max'], '{:.3f}')}; {_f(o['of_sums'], '{:.3f}')}",
                          f"target <= {o['target']}", ok])
        parts += [_md(head2, rows2), "",
                  f"New share: the tokens added since the previous prompt / the whole prompt (the kit's "
                  f"prompts), the least a perfect prefix cache prefills; over turns {ov.get('turns')} "
                  f"{_f(ov.get('new_share_of_sums'), '{:.3f}')} of all prompt tokens (median per turn "
                  f"{_f(ov.get('new_share_median'), '{:.3f}')}). "
                  f"Kit cached_tokens >= previous prompt - 8 on {ov['kit_cached_ok']} turns; answers "
                  f"{', '.join(str(x) for x in ov['completion_tokens'])} tokens, finish "
                  f"{', '.join(ov['finish_reasons'])}; errors {ov['errors']}.", ""]
    return "\n".join(parts).rstrip() + "\n"


def summary_slots_tables(ss: dict) -> str:
    """benchmarks/summary_slots.py: one summary (qwenkit.summarize) per run through the kit's
    server with N slots and with one; per run its wall time, map and reduce phases, calls, the
    map requests at once, the server's token counts and finish reasons and its sequences per
    decode; then wall(N) / wall(1) and whether both runs did the same work."""
    head = ["round", "slots", "wall (s)", "map (s)", "reduce (s)", "chunks", "calls map / reduce",
            "at once: summarizer / in flight", "prompt tokens (cached)", "completion tokens",
            "map answer tokens", "finish", "seqs per decode mean / max"]
    rows = []
    for r in ss.get("rows", []):
        rows.append([str(r["round"] + 1), str(r["slots"]), _f(r["wall_s"], "{:.1f}"), _f(r["map_s"], "{:.1f}"),
                     _f(r["reduce_s"], "{:.1f}"), str(r["chunks"]), f"{r['map_calls']} / {r['reduce_calls']}",
                     f"{r['map_width']} / {r['map_in_flight_max']}",
                     f"{r['prompt_tokens']:,} ({r['cached_tokens']:,})", f"{r['completion_tokens']:,}",
                     ", ".join(str(x) for x in r["map_completion_tokens"]), ", ".join(r["finish_reasons"]),
                     f"{_f(r['decode_mean_sequences'], '{:.2f}')} / {_f(r['decode_max_sequences'], '{}')}"])
    c = ss.get("compare") or {}
    n = ss.get("slots")
    parts = [f"Document: {ss.get('document_tokens'):,} tokens ({ss.get('language')} sample); {n} slots vs 1, "
             f"n_ctx {ss.get('n_ctx_per_slot')} per slot on both servers (and the summarizer's n_ctx); answers: "
             f"map {ss.get('map_answer_tokens')}, final {ss.get('max_tokens')} tokens at most; greedy, loop guard off"
             + (", logit_bias -100 on end-of-generation tokens (every answer runs to its limit)"
                if ss.get("eos_bias") else "")
             + ".", "", _md(head, rows), ""]
    if c.get("rounds"):
        per = "; per round " + ", ".join(f"{x:.3f}" for x in c["ratios"]) if c["rounds"] > 1 else ""
        rows2 = [[f"wall, {n} slots / 1 slot (of the summed walls{per})", f"{c['ratio']:.3f}",
                  f"{c['wall_n_s']:.1f} s / {c['wall_1_s']:.1f} s"],
                 ["map phase, {} slots / 1 slot".format(n), _f(c.get("map_ratio"), "{:.3f}"), ""],
                 ["same work (chunks, calls, completion tokens)", "yes" if c["equal_work"] else "no", ""],
                 [f"target wall ratio <= {c['target']} (the issue's, on the H200)",
                  "met" if c["meets_target"] else "not met", ""]]
        parts += [_md([f"{c['rounds']} round{'s' if c['rounds'] > 1 else ''}", "ratio", "walls"], rows2), ""]
    for e in ss.get("errors") or []:
        parts += [f"Error, round {e['round'] + 1}, {e['slots']} slot(s): {e['error'][:300]}", ""]
    for s in ss.get("skipped") or []:
        parts += [f"Skipped: {s}", ""]
    return "\n".join(parts).rstrip() + "\n"


def files() -> list[Path]:
    all_ = sorted(RESULTS.glob("*.json"))
    first = [RESULTS / n for n in ORDER if (RESULTS / n).is_file()]
    return first + [p for p in all_ if p not in first]


def render() -> str:
    parts = ["# Benchmark results", "",
             "Generated by `python benchmarks/results_md.py` from the JSON files in `benchmarks/results/`;",
             "do not edit by hand (`tests/test_results_md.py` checks that the two agree). Every ratio",
             "compares two figures measured in the same run, on the same model, build and flags.", ""]
    for f in files():
        doc = json.loads(f.read_text())
        meta = doc.get("meta", {})
        parts += [f"## {TITLES.get(f.stem, f.stem)}", "", f"Source: `benchmarks/results/{f.name}`", ""]
        parts += _meta_lines(meta) + [""]
        if doc.get("comparisons"):
            parts += ["### Figures and their baselines", "", _comparisons_table(doc["comparisons"]), ""]
        if doc.get("concurrency"):
            parts += ["### Users at once (ratio: kit / llama-server; TTFT ratio < 1 is the kit faster)", "",
                      concurrency_table(doc["concurrency"]), ""]
            if doc.get("client_ceiling"):
                cc = doc["client_ceiling"]
                parts += [f"The client (one thread and connection per user) took in {cc['events_per_s']:,.0f} "
                          f"events/s from a stand-in server over {cc['users']} streams.", ""]
        if doc.get("multiturn"):
            parts += ["### Multi-turn chats: time to first token per turn (ratio < 1 is the kit faster)", "",
                      multiturn_tables(doc["multiturn"])]
        if doc.get("summary_slots"):
            parts += ["### One summary, N slots vs one (ratio < 1 is the N-slot server faster)", "",
                      summary_slots_tables(doc["summary_slots"])]
        if doc.get("quality"):
            parts += ["### Quality and cost per KV type", "", _quality_table(doc["quality"], doc.get("speed")), ""]
            if doc.get("speed_note"):
                parts += [doc["speed_note"], ""]
        if doc.get("stages"):
            st = ", ".join(f"{k}: {v.get('status')}" + (f" ({v.get('seconds')} s)" if v.get("seconds") else "")
                           for k, v in doc["stages"].items() if isinstance(v, dict))
            parts += [f"Stages: {st}", ""]
        if doc.get("results"):
            parts += ["### All measurements", "", _results_table(doc["results"]), ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    text = render()
    if a.check:
        cur = OUT.read_text() if OUT.is_file() else ""
        if cur != text:
            print("benchmarks/RESULTS.md is out of date: run python benchmarks/results_md.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
