"""`python -m qwenkit serve` and `python -m qwenkit summarize FILE`.

    python -m qwenkit serve                              # default model, 127.0.0.1:8000, Ctrl-C stops
    python -m qwenkit serve --model M.gguf --n-ctx 8192 --type-k q8_0 --flash-attn true
    python -m qwenkit serve --model M.gguf --n_ctx 8192 --cache_type_k q8_0   # the recipe's spelling works
    python -m qwenkit serve --config run.json --background
    python -m qwenkit serve --status | --stop
    python -m qwenkit summarize report.txt               # the background server, or a fresh one
"""
from __future__ import annotations

import os
import sys
import time

from qwenkit import cli_options
from qwenkit.summarize import PRESENCE_PENALTY

__all__ = ["add_cli", "cmd_serve", "cmd_summarize"]

_SERVE_MODEL_HELP = {"model": "GGUF file, or REPO:QUANT from the hub (downloaded, verified) "
                              "(default: the config's, or the small default model)"}


def _config_from_args(args) -> tuple:
    """RunConfig from --config, the model options and their recipe spellings; returns
    (cfg, notes): the spellings translated and the config's own advice."""
    cfg, notes = cli_options.config_from_args(args)
    return cfg, notes + cfg.notes()


def _api_key(args) -> str | None:
    from qwenkit.server import new_api_key
    key = args.api_key or os.environ.get("QWENKIT_API_KEY")
    if key in ("generate", "auto"):
        key = new_api_key()
    return key


def _real_model(cfg, args):
    """REPO:QUANT -> local verified GGUF (downloaded when missing); --fit -> the plan's config."""
    from qwenkit import realmodel

    if realmodel.is_hub_spec(cfg.model):
        cfg = cfg.replace(model=str(realmodel.resolve_model(cfg.model)))
    if args.fit:
        from qwenkit.cli_fit import parse_bytes

        vram = None if args.vram in (None, "auto") else parse_bytes(args.vram)
        ram = parse_bytes(args.ram) if args.ram else None
        result = realmodel.fit_config(cfg, vram, ram)
        print(result)  # the reason and the memory plan table
        cfg = result.cfg
    return cfg


def cmd_serve(args) -> int:
    from qwenkit import server
    from qwenkit.errors import ServerError

    if args.status:
        srv = server.background()
        if srv is None:
            print("no background server is running")
            return 1
        print(srv.describe())
        print("answers: " + ("yes" if srv.ping() else "NO (see the log)"))
        return 0
    if args.stop:
        srv = server.background()
        if server.stop_background():
            print(f"stopped the server at {srv.base_url} (pid {srv.pid})" if srv else "stopped")
            return 0
        print("no background server is running")
        return 1

    cfg, notes = _config_from_args(args)
    cfg = _real_model(cfg, args)
    key = _api_key(args)
    if args.allow_remote and not key:
        key = server.new_api_key()
        print("a server reachable from the network needs a key; generated one (shown below)")
    running = server.background() if args.background else None
    if running is not None:
        raise ServerError(f"a background server already runs ({running.base_url})",
                          "stop it first: python -m qwenkit serve --stop")
    port = args.port if args.port == "any" else int(args.port)
    print(cfg.summary())
    for n in notes:
        print("note:", n)
    t0 = time.perf_counter()
    srv = server.start(cfg, host=args.host, port=port, api_key=key, allow_remote=args.allow_remote,
                       log_path=args.log, ready_timeout=args.ready_timeout, background=args.background,
                       allowed_origins=args.allow_origin, stream_flush_ms=args.stream_flush_ms, quiet=True)
    print(f"ready in {time.perf_counter() - t0:.1f} s")
    print(srv.describe())
    print(f'client: OpenAI(base_url="{srv.base_url}", api_key="{srv.api_key or "anything"}"), '
          f'model="{srv.alias}"')
    if args.background:
        server.save_background(srv)
        print("running in the background: python -m qwenkit serve --status | --stop")
        return 0
    proc = srv._proc
    if proc is None:  # server.start without background= always hands back the child it started
        raise ServerError("the server started without a process to wait for",
                          "a bug in qwenkit: report it with the command you ran")
    print("Ctrl-C stops it")
    try:
        rc = proc.wait()
        print(f"the server exited with code {rc}\n{srv.log_tail(20)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping")
        srv.stop()
        return 0


def cmd_summarize(args) -> int:
    from qwenkit import server, summarize

    text = summarize.read_document(args.file)
    started = None
    if args.url:
        import openai
        client = openai.OpenAI(base_url=args.url, api_key=_api_key(args) or "not-needed",
                               timeout=600, max_retries=1)
        model, n_ctx = args.model_name or "qwen3.5-35b", args.n_ctx_summary
        if not n_ctx:
            from qwenkit.errors import ConfigError
            raise ConfigError("with --url the server's context size is unknown", "add --ctx N (its n_ctx)")
    else:
        srv = server.background() if not (args.model or args.config) else None
        if srv is None:
            cfg, _ = _config_from_args(args)
            print(f"starting a server: {cfg.summary()}", file=sys.stderr)
            srv = started = server.start(cfg, port="any", quiet=True)
        else:
            print(f"using the background server at {srv.base_url}", file=sys.stderr)
        client, model, n_ctx = srv.client(timeout=600), srv.alias, args.n_ctx_summary or srv.n_ctx
    try:
        def show(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        s = summarize.summarize(
            text, client, model, n_ctx=n_ctx, language=args.language, system_prompt=args.system_prompt,
            temperature=args.temperature, max_tokens=args.max_tokens, presence_penalty=args.presence_penalty,
            on_token=show,
            on_progress=lambda m: print(f"[{m}]", file=sys.stderr))
        print()
        print(f"-- {s}")
        return 0
    finally:
        if started is not None:
            started.stop()


def add_cli(sub) -> None:
    p = sub.add_parser("serve", help="start the OpenAI-compatible server (127.0.0.1 by default)",
                       description="Start llama_cpp.server through the kit's safe entry point.")
    cli_options.add_model_options(p, help=_SERVE_MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1; others need --allow-remote)")
    p.add_argument("--port", default="8000", help="port number, or 'any' for the first free one from 8000")
    p.add_argument("--api-key", help="require this key (Bearer); 'generate' makes one; "
                   "QWENKIT_API_KEY in the environment works too and keeps it out of your shell history")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (a key is then required)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin allowed to call the API from a browser (CORS), e.g. http://localhost:3000")
    p.add_argument("--log", metavar="FILE", help="server log file (default: in the kit's cache folder)")
    p.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for the model to load")
    p.add_argument("--stream-flush-ms", type=float, default=None, metavar="MS",
                   help="group a stream's tokens into one write per MS milliseconds (default: 25 when the "
                   "model's threads take every core and the CPU computes, else 0 = every token at once)")
    p.add_argument("--fit", action="store_true", help="plan memory and keep the fewest expert layers in "
                   "system RAM so the model fits the GPU (the one path to the real model: "
                   "--model unsloth/Qwen3.5-35B-A3B-GGUF:Q4_K_M --fit)")
    p.add_argument("--vram", default=None, help="with --fit: GPU budget (16GiB, ...; default: the GPU's free memory)")
    p.add_argument("--ram", default=None, help="with --fit: system RAM the experts may use (e.g. 32GiB)")
    p.add_argument("--background", action="store_true", help="leave it running; manage with --status/--stop")
    p.add_argument("--status", action="store_true", help="show the background server")
    p.add_argument("--stop", action="store_true", help="stop the background server")
    p.set_defaults(func=cmd_serve)

    q = sub.add_parser("summarize", help="summarize a text file through the server, streaming; prints time and tok/s")
    q.add_argument("file", metavar="FILE")
    cli_options.add_model_options(q, help=_SERVE_MODEL_HELP)
    q.add_argument("--url", help="a running OpenAI-compatible server (default: the background one, else start one)")
    q.add_argument("--api-key", help="its key, if it has one (or QWENKIT_API_KEY)")
    q.add_argument("--model-name", help="model name to ask for with --url (default qwen3.5-35b)")
    q.add_argument("--ctx", dest="n_ctx_summary", type=int, default=None,
                   help="context size to plan chunks for (default: the server's)")
    q.add_argument("--language", default="ja", choices=["ja", "en"])
    q.add_argument("--system-prompt", default=None)
    q.add_argument("--temperature", type=float, default=0.2)
    q.add_argument("--max-tokens", type=int, default=1000)
    q.add_argument("--presence-penalty", type=float, default=PRESENCE_PENALTY,
                   help=f"OpenAI presence_penalty (default {PRESENCE_PENALTY}, Qwen3.5's model card value "
                   "against repetition loops)")
    q.set_defaults(func=cmd_summarize)
