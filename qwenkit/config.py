"""RunConfig: one frozen object for every run setting, validated once, rendered for each consumer.

Every other module takes a RunConfig; none re-derives llama.cpp flags. It renders itself as
`llama_cpp.Llama` keyword arguments (`llama_kwargs`), as `python -m llama_cpp.server`
arguments (`server_args`), as llama.cpp's `llama-server` and `llama-bench` flags
(`llama_server_args`, `llama_bench_args`), for the kit's own server (`to_dict`: the JSON its
child process reads), as the kit's own CLI flags (`cli_args`) and as a one-line summary
(`summary`). `settings()` describes each field for a command line (flag, older spellings,
help): qwenkit.cli_options generates the CLI's model options from it, `from_recipe_flags`
reads the recipe's flags with it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from qwenkit.errors import ConfigError

__all__ = ["KV_TYPES", "KV_TYPE_NAMES", "UNQUANTIZED", "KV_BYTES_PER_ELEMENT", "kv_type_id",
           "kv_type_name", "default_threads", "RunConfig", "Setting", "settings", "setting",
           "spelling_note", "from_recipe_flags"]

# GGML type ids that llama.cpp accepts for the KV cache (ggml.h `enum ggml_type`).
KV_TYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
    "iq4_nl": 20, "bf16": 30,
}
KV_TYPE_NAMES = {v: k for k, v in KV_TYPES.items()}
UNQUANTIZED = {"f32", "f16", "bf16"}
# Bytes per element of each KV type (block bytes / block size), for memory plans.
KV_BYTES_PER_ELEMENT: dict[str, float] = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
    "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32,
}
# The notes on KV types (flash-attention kernels, measured speed, memory saved) live in
# qwenkit.kvnotes: they depend on the build and on the model's header, not only on the config.


def kv_type_id(name: str | int) -> int:
    """GGML id of a KV type name ('q8_0' -> 8); ids pass through if valid."""
    if isinstance(name, int) and name in KV_TYPE_NAMES:
        return name
    key = str(name).strip().lower()
    if key.isdigit() and int(key) in KV_TYPE_NAMES:
        return int(key)
    if key not in KV_TYPES:
        raise ConfigError(f"unknown KV cache type {name!r}",
                          f"use one of: {', '.join(KV_TYPES)}")
    return KV_TYPES[key]


def kv_type_name(name: str | int) -> str:
    return KV_TYPE_NAMES[kv_type_id(name)]


def default_threads() -> int:
    """All cores this process may use: llama.cpp decode on the CPU scales with them, and
    llama_cpp.server's own default (cpu_count // 2) leaves half of a small machine idle."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _setting(default: Any = dataclasses.MISSING, *, help: str, aliases: tuple[str, ...] = (),
             default_factory: Any = dataclasses.MISSING, **cli: Any) -> Any:
    """A RunConfig field with what the command line needs to know about it: `help`, older
    spellings still accepted (`aliases`; the llama_cpp.server spelling `--field_name` is added
    for every field) and optional `convert` (parsed value -> field value), `choices`,
    `negation` (a flag that sets a bool field false), `default_text` (the default in words)."""
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, "aliases": aliases, **cli})


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _all_cores_for_zero(n: int) -> int:
    return n or default_threads()   # 0 (bench's --threads default) = every core


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one model run. Validated on construction; immutable (use `replace`).

    Each field's metadata (help, older flag spellings) is what `settings()` gives the command
    line, which generates its model options from it (qwenkit.cli_options)."""

    model: str = _setting(help="the GGUF file", aliases=("-m",),
                          default_text="the config's, or the kit's small default model")
    n_ctx: int = _setting(8192, help="context size in tokens, per slot (0: the model's own)", aliases=("-c",))
    type_k: str = _setting("f16", help="K cache type", aliases=("--cache_type_k", "--cache-type-k", "-ctk"),
                           choices=tuple(KV_TYPES), convert=lambda t: kv_type_name(t))
    type_v: str = _setting("f16", help="V cache type (quantized needs flash attention)",
                           aliases=("--cache_type_v", "--cache-type-v", "-ctv"),
                           choices=tuple(KV_TYPES), convert=lambda t: kv_type_name(t))
    flash_attn: bool = _setting(True, help="flash attention", negation="--no-flash-attn")
    n_gpu_layers: int = _setting(-1, help="layers on the GPU (-1: every layer, when there is a GPU)",
                                 aliases=("-ngl",))
    n_cpu_moe: int = _setting(0, help="keep the expert tensors of the first N layers in system RAM",
                              aliases=("-ncmoe",))
    n_threads: int = _setting(default_factory=default_threads, help="CPU threads (0: every core)",
                              aliases=("-t", "--threads"), convert=_all_cores_for_zero,
                              default_text="every core this process may use")
    n_threads_batch: int | None = _setting(None, help="CPU threads for prompt processing (default: n_threads)")
    # llama-cpp-python keeps a float32 n_batch x n_vocab array even with logits_all off:
    # 2048 would cost 1.9 GiB of RAM for Qwen3.5's 248K vocabulary, 512 costs 0.47 GiB, and
    # llama.cpp computes in n_ubatch steps either way.
    n_batch: int = _setting(512, help="logical batch size (tokens per llama_decode call)", aliases=("-b",))
    n_ubatch: int = _setting(512, help="physical batch size (tokens per compute step; <= n_batch)",
                             aliases=("-ub",))
    seed: int = _setting(0, help="sampling seed")
    # the server's sequence slots (requests decoded together); n_ctx is per slot. 0: the
    # server decides (1 on a CPU-only build; on a GPU what the memory plan fits, at most 8)
    parallel: int = _setting(0, help="the server's sequence slots, n_ctx each (0: 1 on a CPU build, "
                             "on a GPU what fits, at most 8)", aliases=("-np",))
    # one KV pool shared by the slots (llama-server's --kv-unified) or one region per slot.
    # None: shared on a GPU build; per slot on a CPU build, where llama.cpp's CPU flash
    # attention over a shared pool changed a prompt's logits by up to 1.5 when other prompts
    # shared its batch (measured, 0c1e570, SmolLM2) and per-slot regions gave identical ones
    kv_unified: bool | None = _setting(None, help="one KV pool shared by the slots (default: on a GPU "
                                       "build; a CPU build gives each slot its own)")
    # host RAM for the server's prompt cache (recurrent checkpoints, parked conversations);
    # None: 2048 MiB on a GPU build, 512 MiB on a CPU build; 0 turns reuse off
    prompt_cache_mib: int | None = _setting(None, help="host RAM for the server's prompt cache in MiB "
                                            "(default: 2048 on a GPU build, 512 on a CPU build; 0: off)")
    use_mmap: bool = _setting(True, help="map the model file instead of reading it")
    alias: str = _setting("qwen3.5-35b", help="the model name the server answers to (the recipe's)",
                          aliases=("--model_alias",))
    chat_format: str | None = _setting(None, help="llama-cpp-python chat format (default: the GGUF's own template)")
    verbose: bool = _setting(False, help="llama.cpp's own log lines")

    def __post_init__(self) -> None:
        # normalise names first (frozen: go through object.__setattr__)
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "type_k", kv_type_name(self.type_k))
        object.__setattr__(self, "type_v", kv_type_name(self.type_v))
        if self.type_v not in UNQUANTIZED and not self.flash_attn:
            raise ConfigError(
                f"a quantized V cache (type_v={self.type_v}) needs flash attention; "
                "llama.cpp refuses to create the context without it",
                "set flash_attn=True, or type_v='f16'")
        if self.n_ctx < 0:
            raise ConfigError(f"n_ctx={self.n_ctx} is negative", "use 0 (the model's own) or a positive size")
        if self.n_cpu_moe < 0:
            raise ConfigError(f"n_cpu_moe={self.n_cpu_moe} is negative", "use 0 (all experts on the GPU) or more")
        if self.parallel < 0:
            raise ConfigError(f"parallel={self.parallel} is negative", "use 0 (the server decides) or 1-64")
        if self.parallel > 64:
            raise ConfigError(f"parallel={self.parallel} is more slots than llama.cpp allows (64)",
                              "use at most 64 (8 is plenty for one GPU)")
        if self.prompt_cache_mib is not None and self.prompt_cache_mib < 0:
            raise ConfigError(f"prompt_cache_mib={self.prompt_cache_mib} is negative",
                              "use 0 (no prompt cache), a size in MiB, or None (the build's default)")
        if self.n_threads < 1:
            raise ConfigError(f"n_threads={self.n_threads} must be at least 1", f"use {default_threads()}")
        if self.n_ubatch > self.n_batch:
            raise ConfigError(f"n_ubatch={self.n_ubatch} is larger than n_batch={self.n_batch}",
                              "make n_ubatch <= n_batch")

    # ---- derived facts ------------------------------------------------------------------
    @property
    def kv_quantized(self) -> bool:
        return self.type_k not in UNQUANTIZED or self.type_v not in UNQUANTIZED

    def notes(self, *, gpu: bool | None = None, info: Any = None) -> list[str]:
        """Advice that is not an error, for this build (`gpu` None: detected) and model (`info`
        None: the header of `model` when it is a file): `qwenkit.kvnotes.notes`."""
        from qwenkit.kvnotes import notes
        return notes(self, gpu=gpu, info=info)

    def check_context(self, n_ctx_train: int | None) -> None:
        """Error when n_ctx exceeds the model's trained context (from the GGUF header)."""
        if n_ctx_train and self.n_ctx > n_ctx_train:
            raise ConfigError(
                f"n_ctx={self.n_ctx} is beyond the model's context length {n_ctx_train}",
                f"use n_ctx <= {n_ctx_train}")

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    # ---- renderings -------------------------------------------------------------------
    def llama_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `llama_cpp.Llama(**kw)`. n_cpu_moe is not among them: the
        engine applies it through tensor buffer overrides, which Llama() does not expose."""
        return dict(
            model_path=self.model, n_ctx=self.n_ctx, n_gpu_layers=self.n_gpu_layers,
            flash_attn=self.flash_attn, type_k=KV_TYPES[self.type_k], type_v=KV_TYPES[self.type_v],
            n_threads=self.n_threads, n_threads_batch=self.n_threads_batch or self.n_threads,
            n_batch=self.n_batch, n_ubatch=self.n_ubatch, seed=self.seed, use_mmap=self.use_mmap,
            logits_all=False, chat_format=self.chat_format, verbose=self.verbose,
        )

    def server_args(self) -> list[str]:
        """Arguments for `python -m llama_cpp.server` (host, port and key are the launcher's).

        Fixes the server's harmful defaults: logits_all (2 GB of float32 logits for a 248K
        vocabulary), n_gpu_layers=0, flash_attn off, n_ctx 2048, half the cores, and
        interrupt_requests (a new request silently ends the one streaming)."""
        b = lambda v: "true" if v else "false"  # noqa: E731 - pydantic-settings booleans
        args = [
            "--model", self.model, "--model_alias", self.alias,
            "--n_ctx", str(self.n_ctx), "--n_gpu_layers", str(self.n_gpu_layers),
            "--flash_attn", b(self.flash_attn),
            "--type_k", str(KV_TYPES[self.type_k]), "--type_v", str(KV_TYPES[self.type_v]),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads_batch or self.n_threads),
            "--n_batch", str(self.n_batch), "--n_ubatch", str(self.n_ubatch),
            "--seed", str(self.seed), "--use_mmap", b(self.use_mmap),
            "--logits_all", "false", "--interrupt_requests", "false",
            "--verbose", b(self.verbose),
        ]
        if self.chat_format:
            args += ["--chat_format", self.chat_format]
        return args

    def prompt_cache_bytes(self, gpu_build: bool) -> int:
        """Host RAM the kit's server (and a notebook ChatSession) may use for its prompt cache:
        `prompt_cache_mib`, or the build's default (2 GiB with GPU offload, 512 MiB without;
        one Qwen3.5 recurrent checkpoint is about 63 MiB)."""
        mib = self.prompt_cache_mib if self.prompt_cache_mib is not None else (2048 if gpu_build else 512)
        return int(mib) * 2**20

    def llama_server_args(self) -> list[str]:
        """Flags for llama.cpp's `llama-server` (the model, host and port are the launcher's):
        one slot and no web UI. -c is llama-server's TOTAL context over its slots, so it is
        n_ctx here; a caller that wants N slots adds `-np N` (and `-c N x n_ctx`) after these,
        where llama.cpp's parser lets the later flag win. n_cpu_moe only when set."""
        return ["-c", str(self.n_ctx), "-t", str(self.n_threads),
                "-tb", str(self.n_threads_batch or self.n_threads), "-ngl", self._llama_cpp_ngl(),
                "-fa", "on" if self.flash_attn else "off", "-ctk", self.type_k, "-ctv", self.type_v,
                "-b", str(self.n_batch), "-ub", str(self.n_ubatch), "-np", "1", "--no-webui",
                "-a", self.alias, *(["--n-cpu-moe", str(self.n_cpu_moe)] if self.n_cpu_moe else [])]

    def llama_bench_args(self) -> list[str]:
        """Flags for llama.cpp's `llama-bench`, as (flag, value) pairs (the model and the test
        sizes are the caller's; n_ctx does not apply: llama-bench sizes its context to p + n + d)."""
        return ["-t", str(self.n_threads), "-ngl", self._llama_cpp_ngl(),
                "-fa", "1" if self.flash_attn else "0", "-ctk", self.type_k, "-ctv", self.type_v,
                "-b", str(self.n_batch), "-ub", str(self.n_ubatch), "-ncmoe", str(self.n_cpu_moe)]

    def cli_args(self, names: Iterable[str] | None = None) -> list[str]:
        """Flags of the kit's own CLI (`python -m qwenkit serve|bench|fit|summarize`), one
        spelling each (--n-ctx 8192). `names`: these fields, in this order (default: the model
        and every field that differs from its default). A None value is left out."""
        if names is None:
            names = [f.name for f in dataclasses.fields(self)
                     if f.name == "model" or getattr(self, f.name) != _field_default(f)]
        args: list[str] = []
        for name in names:
            value = getattr(self, name)
            if value is not None:
                s = setting(name)
                args += [s.flag, s.render(value)]
        return args

    def _llama_cpp_ngl(self) -> str:
        # llama.cpp's tools have no "all layers" value: 999 is more layers than any model has
        return str(999 if self.n_gpu_layers < 0 else self.n_gpu_layers)

    def summary(self) -> str:
        moe = f" n_cpu_moe={self.n_cpu_moe}" if self.n_cpu_moe else ""
        moe += f" parallel={self.parallel}" if self.parallel else ""
        return (f"{Path(self.model).name}: n_ctx={self.n_ctx} KV {self.type_k}/{self.type_v} "
                f"flash_attn={'on' if self.flash_attn else 'off'} n_gpu_layers={self.n_gpu_layers}"
                f"{moe} threads={self.n_threads}")

    def __str__(self) -> str:
        return self.summary()

    # ---- files ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}",
                              f"valid settings: {', '.join(sorted(known))}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(p)  # never leave a half-written config where a good one was
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunConfig":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist",
                              "save one from the tuning panel or with RunConfig.save()") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {p} is not valid JSON ({e})", "fix or re-save it") from None
        return cls.from_dict(data)


# ---- the command line's view of the fields ---------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One RunConfig field as a command line sees it: `flag` is its one spelling (--n-ctx),
    `aliases` the older ones still accepted (llama_cpp.server's --n_ctx, llama.cpp's -c, the
    recipe's --cache_type_k)."""

    name: str
    flag: str
    aliases: tuple[str, ...]
    kind: type                      # bool, int or str
    optional: bool                  # None is allowed (the build or the model decides)
    help: str
    default: Any                    # dataclasses.MISSING: required, or computed (default_text)
    default_text: str | None
    choices: tuple[str, ...] | None
    negation: str | None            # a value-less flag that sets a bool false (--no-flash-attn)
    convert: Callable[[Any], Any] | None = None

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.flag, *self.aliases)

    def parse(self, text: str, flag: str | None = None) -> Any:
        """Field value of a command-line word; ConfigError naming `flag` when it is not one."""
        flag = flag or self.flag
        if self.kind is bool:
            value: Any = _parse_bool(text, flag)
        elif self.kind is int:
            try:
                value = int(str(text).strip())
            except ValueError:
                raise ConfigError(f"{flag} expects an integer, got {text!r}",
                                  f"write {flag} {self.default if isinstance(self.default, int) else 8}") from None
        else:
            value = str(text)
        return self.convert(value) if self.convert else value

    def render(self, value: Any) -> str:
        """The command-line word for a field value (the inverse of `parse`)."""
        if self.kind is bool:
            return "true" if value else "false"
        return str(value)


@functools.cache
def settings() -> tuple[Setting, ...]:
    """Every RunConfig field as a `Setting`, in field order: what the CLI's model options
    and `from_recipe_flags` are generated from."""
    hints = typing.get_type_hints(RunConfig)
    out = []
    for f in dataclasses.fields(RunConfig):
        kinds = [t for t in typing.get_args(hints[f.name]) if t is not type(None)] or [hints[f.name]]
        meta = f.metadata
        underscore = (f"--{f.name}",) if "_" in f.name else ()
        out.append(Setting(
            name=f.name, flag="--" + f.name.replace("_", "-"), aliases=underscore + tuple(meta.get("aliases", ())),
            kind=kinds[0], optional=type(None) in typing.get_args(hints[f.name]), help=meta.get("help", ""),
            default=f.default, default_text=meta.get("default_text"), choices=meta.get("choices"),
            negation=meta.get("negation"), convert=meta.get("convert")))
    return tuple(out)


def setting(name: str) -> Setting:
    """The Setting of one RunConfig field; ConfigError listing the fields when there is none."""
    for s in settings():
        if s.name == name:
            return s
    raise ConfigError(f"RunConfig has no field {name!r}",
                      f"use one of: {', '.join(s.name for s in settings())}")


def spelling_note(flag: str, name: str, value: Any) -> str | None:
    """Why a recipe spelling was translated (the recipe's --cache_type_k does not exist in
    llama_cpp.server), or None for a spelling that needs no word."""
    if flag.startswith("--cache") and name in ("type_k", "type_v"):
        return (f"{flag} {value} is not a llama_cpp.server flag; it becomes "
                f"--{name} {KV_TYPES[kv_type_name(value)]} (GGML type id)")
    return None


# ---- the blog recipe's server flags -----------------------------------------------------
# The recipe runs `python -m llama_cpp.server --cache_type_k q8_0 --n_gpu_layers -1
# --flash_attn True --n_ctx 8192 ...`. `--cache_type_k` does not exist (the server's
# `--cache_type` is the prompt cache, ram|disk); KV types are `--type_k/--type_v` with ids.
# Every spelling a Setting knows is read (the same table the kit's CLI is generated from).
_SERVER_ONLY_FLAGS = {"--host", "--port", "--api_key"}


def _parse_bool(text: str, flag: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "on", "yes"):
        return True
    if t in ("0", "false", "off", "no"):
        return False
    raise ConfigError(f"{flag} expects true/false, got {text!r}", f"write {flag} true")


def from_recipe_flags(argv: str | Iterable[str], **defaults: Any) -> tuple[RunConfig, dict[str, str], list[str]]:
    """Translate the recipe's (or llama.cpp's) server flags into a RunConfig.

    Returns (config, server_only, notes): server_only holds --host/--port/--api_key for the
    launcher; notes says what was translated and why."""
    tokens = shlex.split(argv) if isinstance(argv, str) else list(argv)
    spellings = {flag: s for s in settings() for flag in s.flags}
    values: dict[str, Any] = dict(defaults)
    server_only: dict[str, str] = {}
    notes: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        flag, _, inline = tok.partition("=")
        if flag not in spellings and flag not in _SERVER_ONLY_FLAGS:
            raise ConfigError(f"unrecognised flag {tok!r}",
                              f"known flags: {', '.join(sorted(set(spellings) | _SERVER_ONLY_FLAGS))}")
        if inline:
            val = inline
            i += 1
        elif i + 1 < len(tokens):
            val = tokens[i + 1]
            i += 2
        else:
            raise ConfigError(f"{flag} has no value", f"write {flag} VALUE")
        if flag in _SERVER_ONLY_FLAGS:
            server_only[flag.lstrip("-")] = val
            continue
        s = spellings[flag]
        values[s.name] = s.parse(val, flag)
        note = spelling_note(flag, s.name, val)
        if note:
            notes.append(note)
    if "model" not in values:
        raise ConfigError("no --model given", "add --model PATH.gguf")
    return RunConfig(**values), server_only, notes
