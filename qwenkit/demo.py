"""The main job, end to end: check the build, serve a model on 127.0.0.1, summarize a bundled
technical document through the `openai` client, print the summary with time and tok/s, stop.

`python -m qwenkit demo` runs it on the small default model with no GPU and no hub."""
from __future__ import annotations

import sys
from pathlib import Path

from qwenkit.config import RunConfig
from qwenkit.models import default_model_path


def run_demo(model: str | Path | None = None, language: str | None = None, n_ctx: int = 4096,
             document: str | Path | None = None, max_tokens: int = 400, out=sys.stdout,
             check_build: bool = True):
    """Returns the Summary. Streams the summary to `out` as it is generated."""
    from qwenkit import data, doctor, server, summarize

    is_default = model is None
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
    cfg = RunConfig(model=str(model), n_ctx=n_ctx)
    say(f"[2/4] serving {cfg.summary()}")
    with server.start(cfg, port="any", quiet=True) as srv:
        say(f"      OpenAI-compatible API at {srv.base_url} (model name {srv.alias!r})")
        text = doc.read_text(encoding="utf-8")
        say(f"[3/4] summarizing {doc.name} ({len(text):,} characters, language {language}):")
        say()
        result = summarize.summarize(
            text, srv.client(), srv.alias, n_ctx=cfg.n_ctx, language=language,
            max_tokens=max_tokens, on_token=lambda t: print(t, end="", file=out, flush=True))
        say()
        say()
        say(f"[4/4] {result}")
    say("server stopped")
    return result


def add_cli(sub) -> None:
    p = sub.add_parser("demo", help="the whole path on the small default model: build check, "
                                    "serve, summarize a sample document, stop")
    p.add_argument("--model", help="GGUF path (default: the small default model)")
    p.add_argument("--lang", choices=["en", "ja"], help="sample and summary language "
                   "(default: en for the small default model, ja otherwise)")
    p.add_argument("--file", help="summarize this document instead of the bundled sample")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--max-tokens", type=int, default=400)

    def _run(args) -> int:
        run_demo(model=args.model, language=args.lang, n_ctx=args.n_ctx, document=args.file,
                 max_tokens=args.max_tokens)
        return 0

    p.set_defaults(func=_run)
