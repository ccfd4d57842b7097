"""The main job, end to end: check the build, serve a model on 127.0.0.1, summarize a bundled
technical document through the `openai` client, print the summary with time and tok/s, stop.

`python -m qwenkit demo` runs it on the small default model with no GPU and no hub.

The small default model (SmolLM2-135M-Instruct) is a stand-in that runs anywhere: it writes
fluent English but gets facts wrong and, left alone, repeats one sentence until max_tokens.
The demo therefore (a) watches the stream with the loop guard (qwenkit.loopguard), which stops
a repeat, cancels the request and says so in one line, and (b) asks the small model for a
short summary with sampling that discourages repetition (SMALL_MODEL_SAMPLING, measured below).
Any other model gets the summarizer's defaults (Qwen3.5's model card settings)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TypedDict

from qwenkit.config import RunConfig
from qwenkit.models import default_model_path

__all__ = ["SMALL_MODEL_MAX_TOKENS", "SMALL_MODEL_SAMPLING", "add_cli", "run_demo"]


class _Sampling(TypedDict, total=False):
    """Sampling arguments of summarize.summarize that the demo sets for the small model."""
    temperature: float
    frequency_penalty: float


# Measured on the English sample with SmolLM2-135M (2-core CPU): with the summarizer's defaults
# (temperature 0.2, presence_penalty 1.5) the answer repeated one sentence until max_tokens (28-31 %
# distinct words over 340 words); greedy decoding with frequency_penalty 1.0 gave 71-74 % distinct
# words, no repeated sentence. The longer a 135M model writes, the more it repeats itself, so
# the demo asks it for about 200 tokens (roughly 150 words).
SMALL_MODEL_SAMPLING: _Sampling = {"temperature": 0.0, "frequency_penalty": 1.0}
SMALL_MODEL_MAX_TOKENS = 200


def run_demo(model: str | Path | None = None, language: str | None = None, n_ctx: int = 4096,
             document: str | Path | None = None, max_tokens: int | None = None, out=sys.stdout,
             check_build: bool = True, cfg: RunConfig | None = None):
    """Returns the Summary. Streams the summary to `out` as it is generated.
    max_tokens: None means SMALL_MODEL_MAX_TOKENS for the small default model, 1000 otherwise.
    cfg: a whole RunConfig (the CLI's options or --config); then `model` and `n_ctx` are its own."""
    from qwenkit import data, doctor, server, summarize

    if cfg is not None:
        model = None if Path(cfg.model) == default_model_path() else cfg.model
        n_ctx = cfg.n_ctx
    is_default = model is None
    if max_tokens is None:
        max_tokens = SMALL_MODEL_MAX_TOKENS if is_default else 1000
    sampling: _Sampling = SMALL_MODEL_SAMPLING if is_default else {}
    model = Path(model) if model else default_model_path()
    # SmolLM2-135M only writes English; the real model handles the recipe's Japanese too.
    language = language or ("en" if is_default else "ja")
    doc = Path(document) if document else data.sample_path(language)

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    if check_build:
        report = doctor.diagnose()
        say(f"[1/4] build: llama-cpp-python {report.build.version}, {report.build.backend} backend"
            f" -> {report.verdict}")
        if report.fix_command:
            say(f"      fix: {report.fix_command}")
    cfg = cfg.replace(model=str(model), n_ctx=n_ctx) if cfg is not None else RunConfig(model=str(model), n_ctx=n_ctx)
    say(f"[2/4] serving {cfg.summary()}")
    with server.start(cfg, port="any", quiet=True) as srv:
        say(f"      OpenAI-compatible API at {srv.base_url} (model name {srv.alias!r})")
        text = doc.read_text(encoding="utf-8")
        say(f"[3/4] summarizing {doc.name} ({len(text):,} characters, language {language}):")
        if is_default:
            say("      (SmolLM2-135M is a 135M-parameter stand-in: fluent, often wrong on facts; "
                "the real model answers from the same code)")
        say()

        def notice(msg: str) -> None:  # the loop guard's lines, each on a line of its own
            if msg.startswith(("loop guard:", "the loop guard")):
                say()
                say(f"[{msg}]")

        result = summarize.summarize(
            text, srv.client(), srv.alias, n_ctx=cfg.n_ctx, language=language,
            max_tokens=max_tokens, **sampling, on_progress=notice,
            on_token=lambda t: print(t, end="", file=out, flush=True))
        say()
        say()
        say(f"[4/4] {result}")
    say("server stopped")
    return result


def add_cli(sub) -> None:
    p = sub.add_parser("demo", help="the whole path on the small default model: build check, "
                                    "serve, summarize a sample document, stop")
    from qwenkit import cli_options
    cli_options.add_model_options(p, defaults={"n_ctx": 4096})
    p.add_argument("--lang", choices=["en", "ja"], help="sample and summary language "
                   "(default: en for the small default model, ja otherwise)")
    p.add_argument("--file", help="summarize this document instead of the bundled sample")
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"summary length (default: {SMALL_MODEL_MAX_TOKENS} for the small default model, "
                        "1000 otherwise)")

    def _run(args) -> int:
        from qwenkit import cli_options
        cfg, notes = cli_options.config_from_args(args)
        for note in notes:
            print(f"note: {note}")
        run_demo(cfg=cfg, language=args.lang, document=args.file, max_tokens=args.max_tokens)
        return 0

    p.set_defaults(func=_run)
