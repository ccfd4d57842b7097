"""The CLI's model options: generated from RunConfig's fields, one spelling each, the older
spellings accepted, `--config` on every verb that takes model settings, and today's command
lines giving the configs they gave before."""
from __future__ import annotations

import argparse
import json

import pytest

from qwenkit.cli import build_parser, main
from qwenkit.cli_options import config_from_args
from qwenkit.config import RunConfig, settings

# the verbs that take model settings; doctor's --model is only a file to load for its check
# (it takes --config too, for that file)
MODEL_VERBS = ("serve", "summarize", "fit", "bench", "demo")
OTHER_MODEL_FLAGS = {"doctor"}
# positional arguments a verb needs before its options parse
POSITIONALS = {"summarize": ["doc.txt"]}


def _verbs() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _parse(verb: str, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args([verb, *POSITIONALS.get(verb, []), *argv])


def _sample(s) -> tuple[str, object]:
    """A command-line word for a field and the value it must give."""
    if s.kind is bool:
        return "false", False
    if s.kind is int:
        return "7", 7
    if s.choices:
        return "q8_0", "q8_0"
    return "x.gguf" if s.name == "model" else "word", "x.gguf" if s.name == "model" else "word"


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_every_field_has_exactly_one_listed_flag(verb):
    parser = _verbs()[verb]
    names = {s.name for s in settings()}
    for s in settings():
        listed = [a for a in parser._actions if a.dest == s.name and a.help != argparse.SUPPRESS]
        assert [a.option_strings for a in listed] == [[s.flag]], (verb, s.name)
        assert s.flag == "--" + s.name.replace("_", "-")
        hidden = {o for a in parser._actions if a.dest == s.name and a.help == argparse.SUPPRESS
                  for o in a.option_strings}
        assert hidden == set(s.aliases) | ({s.negation} if s.negation else set()), (verb, s.name)
    # nothing else of the verb writes into a field
    others = [a for a in parser._actions if a.dest in names and not any(o in s.flags + (s.negation,)
              for s in settings() for o in a.option_strings)]
    assert not others
    assert "--config" in parser._option_string_actions
    assert "--n-ctx N" in parser.format_help()


def test_other_verbs_with_a_model_flag_are_known():
    """A new verb that takes --model should take the model options (or be listed here)."""
    with_model = {v for v, p in _verbs().items() if "--model" in p._option_string_actions}
    assert with_model - set(MODEL_VERBS) <= OTHER_MODEL_FLAGS


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_aliases_parse_to_the_same_value(verb):
    for s in settings():
        text, value = _sample(s)
        assert getattr(_parse(verb, s.flag, text), s.name) == value, (verb, s.flag)
        for alias in s.aliases:
            assert getattr(_parse(verb, alias, text), s.name) == value, (verb, alias)
        if s.negation:
            assert getattr(_parse(verb, s.negation), s.name) is False
    # the values RunConfig itself takes: KV type ids, any case, on/off, llama.cpp's -1
    a = _parse(verb, "--type_k", "8", "-ctv", "Q4_0", "--flash_attn", "on", "-ngl", "-1", "--threads", "0")
    assert (a.type_k, a.type_v, a.flash_attn, a.n_gpu_layers) == ("q8_0", "q4_0", True, -1)
    assert a.n_threads == RunConfig(model="m").n_threads                       # 0: every core


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_bad_values_are_usage_errors_naming_the_flag(verb, capsys):
    for argv in (["--n-ctx", "big"], ["-ctk", "q9_9"], ["--flash-attn", "maybe"]):
        with pytest.raises(SystemExit) as e:
            _parse(verb, *argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert argv[1] in err and ("expects" in err or "use one of" in err)


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_config_file_then_flags(verb, tmp_path):
    saved = RunConfig(model="/m/tuned.gguf", n_ctx=4096, type_k="q8_0", type_v="q8_0", n_threads=3,
                      n_batch=256, n_ubatch=128, parallel=2, prompt_cache_mib=64, alias="mine")
    path = saved.save(tmp_path / "tuned.json")
    cfg, _ = config_from_args(_parse(verb, "--config", str(path)))
    assert cfg == saved                           # the file wins over the verb's own defaults
    cfg, _ = config_from_args(_parse(verb, "--config", str(path), "-c", "1024", "--no-flash-attn",
                                     "--type-v", "f16"))
    assert cfg == saved.replace(n_ctx=1024, flash_attn=False, type_v="f16")
    (tmp_path / "bad.json").write_text(json.dumps({"model": "m", "cache_type_k": "q8_0"}))
    with pytest.raises(Exception, match="cache_type_k"):
        config_from_args(_parse(verb, "--config", str(tmp_path / "bad.json")))


def test_todays_command_lines_give_todays_configs(default_model):
    """Command lines from the README, the notebooks and the module docstrings, with the
    configs they gave before the options were generated."""
    cfg, notes = config_from_args(_parse("serve", "--model", "M.gguf", "--n_ctx", "8192", "--cache_type_k",
                                         "q8_0", "--flash_attn", "true", "-np", "4", "--model_alias", "q"))
    assert cfg == RunConfig(model="M.gguf", n_ctx=8192, type_k="q8_0", flash_attn=True, parallel=4, alias="q")
    assert notes == ["--cache_type_k q8_0 is not a llama_cpp.server flag; it becomes --type_k 8 (GGML type id)"]
    cfg, _ = config_from_args(_parse("serve"))
    assert cfg == RunConfig(model=str(default_model))
    # fit: --n-ctx/--type-k/--no-flash-attn as before; RunConfig's defaults otherwise
    cfg, _ = config_from_args(_parse("fit", "--model", "m.gguf", "--n-ctx", "65536", "--type-k", "q8_0",
                                     "--n-ubatch", "256", "--n-cpu-moe", "8", "--n-gpu-layers", "20"))
    assert cfg == RunConfig(model="m.gguf", n_ctx=65536, type_k="q8_0", n_ubatch=256, n_cpu_moe=8, n_gpu_layers=20)
    # bench: its own n_batch 2048; n_ctx 0 until the run sizes it; --threads N as before
    a = _parse("bench", "-p", "512", "-n", "128", "-r", "5", "-d", "4096", "--threads", "2", "--no-flash-attn")
    cfg, _ = config_from_args(a)
    assert (a.n_prompt, a.n_gen, a.reps, a.depth) == (512, 128, 5, 4096)
    assert cfg == RunConfig(model=str(default_model), n_ctx=0, n_batch=2048, n_threads=2, flash_attn=False)
    # summarize: --ctx is the chunk planner's context, not the model's
    a = _parse("summarize", "--ctx", "8192", "--max-tokens", "500")
    assert a.n_ctx_summary == 8192 and a.n_ctx is None and a.max_tokens == 500


def test_cli_fit_reads_a_config_and_prints_one_spelling(engine_full_sparse, tmp_path, capsys):
    """fit with --config (flags over it), its plan, and flags `serve` takes back."""
    path = RunConfig(model=str(engine_full_sparse["qwen35moe"]), n_ctx=65536, type_k="q8_0",
                     type_v="q8_0").save(tmp_path / "run.json")
    rc = main(["fit", "--config", str(path), "--vram", "16GiB", "--n-ubatch", "256",
               "--save", str(tmp_path / "fitted.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "KV cache" in out
    fitted = RunConfig.load(tmp_path / "fitted.json")
    assert (fitted.n_ctx, fitted.type_k, fitted.n_ubatch, fitted.n_gpu_layers) == (65536, "q8_0", 256, -1)
    assert 0 < fitted.n_cpu_moe < 40
    flags = next(line for line in out.splitlines() if line.startswith("flags:")).split()[1:]
    assert flags == fitted.cli_args(["n_ctx", "type_k", "type_v", "flash_attn", "n_gpu_layers", "n_cpu_moe"])
    assert f"--n-cpu-moe {fitted.n_cpu_moe}" in out
    again, _ = config_from_args(_parse("serve", "--config", str(tmp_path / "fitted.json"), *flags))
    assert again == fitted                           # the printed flags serve the fitted config


def test_cli_bench_reads_a_config(default_model, tmp_path):
    path = RunConfig(model=str(default_model), n_ctx=512, type_k="q8_0", n_threads=1,
                     n_batch=64, n_ubatch=32).save(tmp_path / "run.json")
    out = tmp_path / "bench.json"
    rc = main(["bench", "--config", str(path), "-p", "16", "-n", "4", "-r", "1", "--path", "decode",
               "--n-ubatch", "16", "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    conf = {k: rows[0]["config"][k] for k in ("n_ctx", "type_k", "n_threads", "n_batch", "n_ubatch")}
    assert conf == {"n_ctx": 512, "type_k": "q8_0", "n_threads": 1, "n_batch": 64, "n_ubatch": 16}
    assert all(r["rates"] for r in rows)


def test_sweep_values_read_as_the_flags_read_them():
    from qwenkit.cli_bench import parse_sweep
    from qwenkit.errors import ConfigError
    assert parse_sweep("type_k=f16,8,Q4_0") == ("type_k", ["f16", "q8_0", "q4_0"])
    assert parse_sweep("parallel=1,2") == ("parallel", [1, 2])
    assert parse_sweep("flash-attn=on,off") == ("flash_attn", [True, False])
    with pytest.raises(ConfigError, match="no field"):
        parse_sweep("cache=1")
    with pytest.raises(ConfigError, match="integer"):
        parse_sweep("n_ctx=big")


def test_cli_args_round_trip_through_the_parser():
    cfg = RunConfig(model="m.gguf", n_ctx=2048, type_k="q8_0", type_v="q4_0", n_threads_batch=3,
                    kv_unified=True, prompt_cache_mib=0, use_mmap=False, chat_format="chatml", seed=5)
    every = [s.name for s in settings()]
    for verb in MODEL_VERBS:
        assert config_from_args(_parse(verb, *cfg.cli_args(every)))[0] == cfg
    assert cfg.cli_args()[:6] == ["--model", "m.gguf", "--n-ctx", "2048", "--type-k", "q8_0"]
    assert "--n-threads" not in cfg.cli_args()         # only what differs from the defaults


def test_every_verb_with_a_model_takes_config(tmp_path, default_model, capsys):
    """Issue 16: every verb that takes a model reads --config FILE (doctor: the file's model)."""
    cfg_file = RunConfig(model=str(default_model), n_ctx=1024).save(tmp_path / "run.json")
    verbs = _verbs()
    with_model = {v for v, p in verbs.items() if "--model" in p._option_string_actions}
    assert with_model >= set(MODEL_VERBS) | OTHER_MODEL_FLAGS
    for verb in sorted(with_model):
        assert "--config" in verbs[verb]._option_string_actions, verb
    args = _parse("demo", "--config", str(cfg_file))
    assert config_from_args(args)[0].n_ctx == 1024
    copy = tmp_path / "copy.gguf"   # a model only the config names: doctor must load that one
    copy.write_bytes(default_model.read_bytes())
    RunConfig(model=str(copy)).save(cfg_file)
    capsys.readouterr()
    main(["doctor", "--config", str(cfg_file), "--json"])
    assert json.loads(capsys.readouterr().out)["load"]["model"] == str(copy)
