"""The one door to what qwenkit uses of llama-cpp-python beyond its documented `Llama` API.

The kit goes below `Llama(...)` / `create_completion` in four ways, all of them listed here:

- llama.cpp's C API as llama-cpp-python binds it (ctypes functions, constants, structs): the
  server's N-sequence context, batched decode, sequence-state copies and native samplers.
  Reached as `C.llama_decode(...)`; `C` holds exactly the names of NEEDS, nothing else.
- private attributes of `Llama` and of its internal model (`_model`, `_requires_eval`,
  `_seed`, the token bookkeeping `input_ids` / `n_tokens`, the `model_params` assignment the
  expert offload hooks): reached through the functions below (`vocab(llm)`, ...).
- private modules and classes: `_ctypes_extensions.load_shared_library` (ggml's libraries),
  `llama_chat_format.Jinja2ChatFormatter` (the GGUF's chat template), `llama_grammar`'s
  JSON-schema converter: reached through `ggml()`, `chat_formatter()`, `GrammarBuilder`.
- ggml's own functions (bound by nothing in llama-cpp-python): `ggml(name)`.

Importing this module checks the installed llama-cpp-python: its version against the tested
range, and every name of NEEDS and GGML_FUNCTIONS (a function's argument count, a struct's
fields, a class's attributes). Anything missing fails here with LlamaCppError naming all of
it, instead of later and silently: a struct field that no longer exists takes an assignment
without complaint, so a renamed `tensor_buft_overrides` would quietly stop the expert offload
and run a 16 GB card out of memory. `check(package)` takes the package as a parameter, so a
test can hand it a doctored copy.

Set QWENKIT_UNTESTED_LLAMA_CPP=1 to try a version outside the tested range whose names all
exist (a warning instead of the error): the way to test an upgrade.
"""
from __future__ import annotations

import ast
import ctypes
import inspect
import os
import re
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenkit.errors import LlamaCppError

__all__ = [
    "C",
    "GGML_FUNCTIONS",
    "GrammarBuilder",
    "JSON_GBNF",
    "Llama",
    "NEEDS",
    "Need",
    "TESTED_VERSION",
    "TensorBuftOverride",
    "UNTESTED_ENV",
    "VERSION_RANGE",
    "chat_formatter",
    "check",
    "evaluated_tokens",
    "ggml",
    "internal_model",
    "is_recurrent",
    "json_schema_to_gbnf",
    "logits_all",
    "missing",
    "n_evaluated",
    "need_problems",
    "record_evaluated",
    "seed",
    "set_evaluated",
    "version_problem",
    "vocab",
]

TESTED_VERSION = "0.3.36"
VERSION_RANGE = ("0.3.36", "0.3.37")   # >= first, < second; pyproject.toml pins the same
UNTESTED_ENV = "QWENKIT_UNTESTED_LLAMA_CPP"
# README, "GPU set-up": the CUDA build; pip's wheel cache ignores CMAKE_ARGS, hence the flags
REINSTALL = ('CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=<compute capability, e.g. 89>" '
             f"pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python=={TESTED_VERSION} "
             "(without CMAKE_ARGS on a machine without an NVIDIA GPU), or `make setup`")


@dataclass(frozen=True)
class Need:
    """One thing the kit uses. `path` is dotted from the llama_cpp package; `args`: a
    callable's number of arguments; `attrs`: a struct's fields or a class's attributes."""
    path: str
    args: int | None = None
    attrs: tuple[str, ...] = ()


def _fns(args: int, *names: str) -> list[Need]:
    return [Need(n, args=args) for n in names]


NEEDS: tuple[Need, ...] = (
    # ---- the C API (llama_cpp.llama_cpp, re-exported by the package) ----
    *_fns(0, "llama_backend_init", "llama_supports_gpu_offload", "llama_print_system_info",
          "llama_model_default_params", "llama_context_default_params", "llama_sampler_chain_default_params",
          "llama_sampler_init_greedy"),
    *_fns(1, "llama_model_free", "llama_free", "llama_model_size", "llama_model_n_params", "llama_model_n_layer",
          "llama_model_n_ctx_train", "llama_model_is_recurrent", "llama_model_is_hybrid", "llama_model_get_vocab",
          "llama_n_ctx", "llama_n_batch", "llama_get_memory", "llama_batch_free", "llama_synchronize",
          "llama_get_logits", "llama_vocab_n_tokens", "llama_vocab_bos", "llama_vocab_eos",
          "llama_vocab_get_add_bos", "llama_sampler_chain_init", "llama_sampler_init_top_k",
          "llama_sampler_init_temp", "llama_sampler_init_dist", "llama_sampler_free"),
    *_fns(2, "llama_model_load_from_file", "llama_init_from_model", "llama_memory_clear", "llama_batch_get_one",
          "llama_decode", "llama_get_logits_ith", "llama_vocab_is_eog", "llama_sampler_chain_add",
          "llama_sampler_init_typical", "llama_sampler_init_top_p", "llama_sampler_init_min_p",
          "llama_sampler_accept", "llama_state_seq_get_size", "llama_log_get", "llama_log_set"),
    *_fns(3, "llama_batch_init", "llama_sampler_init_logit_bias", "llama_sampler_init_grammar",
          "llama_sampler_sample", "llama_state_seq_get_size_ext"),
    *_fns(4, "llama_memory_seq_rm", "llama_model_meta_val_str", "llama_state_seq_get_data",
          "llama_state_seq_set_data"),
    *_fns(5, "llama_sampler_init_penalties", "llama_state_seq_get_data_ext", "llama_state_seq_set_data_ext",
          "llama_memory_seq_cp"),
    *_fns(6, "llama_token_to_piece"),
    *_fns(7, "llama_tokenize", "llama_sampler_init_dry"),
    Need("LLAMA_FLASH_ATTN_TYPE_ENABLED"), Need("LLAMA_FLASH_ATTN_TYPE_DISABLED"),
    Need("LLAMA_LOAD_MODE_NONE"), Need("LLAMA_LOAD_MODE_AUTO"),
    Need("LLAMA_STATE_SEQ_FLAGS_NONE"), Need("LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY"),
    Need("llama_token"), Need("llama_log_callback"),
    Need("llama_logit_bias", attrs=("token", "bias")),
    Need("llama_batch", attrs=("n_tokens", "token", "pos", "n_seq_id", "seq_id", "logits")),
    Need("llama_model_params", attrs=("n_gpu_layers", "load_mode", "no_alloc", "tensor_buft_overrides")),
    Need("llama_context_params", attrs=("n_ctx", "n_batch", "n_ubatch", "n_seq_max", "kv_unified", "n_threads",
                                        "n_threads_batch", "flash_attn_type", "type_k", "type_v", "no_perf")),
    # ---- Llama beyond its documented methods ----
    # model_params: engine.QwenkitLlama catches Llama.__init__'s assignment to add the overrides
    Need("Llama", attrs=("_model", "_seed", "_requires_eval", "_is_recurrent", "_is_hybrid", "_logits_all",
                         "input_ids", "n_tokens", "model_params", "ctx", "model", "cache", "draft_model",
                         "last_n_tokens_size", "n_threads", "model_path")),
    Need("_internals.LlamaModel", attrs=("vocab", "token_cls", "token_sep", "add_bos_token", "add_eos_token")),
    # ---- private modules and classes ----
    Need("_logger"),   # imported for its side effect: llama-cpp-python's default log callback
    Need("_ctypes_extensions.load_shared_library", args=2),
    Need("llama_cpp._base_path"),
    Need("llama_chat_format.Jinja2ChatFormatter", attrs=("__call__",)),
    Need("llama_chat_format.ChatFormatterResponse", attrs=("prompt", "stop")),
    Need("llama_grammar.SchemaConverter",
         attrs=("_format_literal", "_add_rule", "resolve_refs", "visit", "format_grammar")),
    Need("llama_grammar.json_schema_to_gbnf"),
    Need("llama_grammar.JSON_GBNF"),
)

_P_SIZE = ctypes.POINTER(ctypes.c_size_t)
# ggml's own functions: library, result type, argument types
GGML_FUNCTIONS: dict[str, tuple[str, Any, list]] = {
    "ggml_backend_dev_count": ("ggml", ctypes.c_size_t, []),
    "ggml_backend_dev_get": ("ggml", ctypes.c_void_p, [ctypes.c_size_t]),
    "ggml_backend_dev_by_type": ("ggml", ctypes.c_void_p, [ctypes.c_int]),
    "ggml_backend_dev_name": ("ggml-base", ctypes.c_char_p, [ctypes.c_void_p]),
    "ggml_backend_dev_description": ("ggml-base", ctypes.c_char_p, [ctypes.c_void_p]),
    "ggml_backend_dev_type": ("ggml-base", ctypes.c_int, [ctypes.c_void_p]),
    "ggml_backend_dev_memory": ("ggml-base", None, [ctypes.c_void_p, _P_SIZE, _P_SIZE]),
    "ggml_backend_dev_buffer_type": ("ggml-base", ctypes.c_void_p, [ctypes.c_void_p]),
}
# in ggml-base on some builds, in the CPU backend's library on others (engine asks the device
# registry then): looked up, never required
_GGML_OPTIONAL: dict[str, tuple[str, Any, list]] = {"ggml_backend_cpu_buffer_type": ("ggml-base", ctypes.c_void_p, [])}


class TensorBuftOverride(ctypes.Structure):
    """llama.h's `struct llama_model_tensor_buft_override { const char * pattern;
    ggml_backend_buffer_type_t buft; }`: llama-cpp-python binds
    `llama_model_params.tensor_buft_overrides` as a bare pointer to an array of these."""
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


# ---- the check ------------------------------------------------------------------------------
def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def version_problem(version: str | None) -> str | None:
    """Why `version` is outside the tested range, or None."""
    lo, hi = VERSION_RANGE
    if version is None:
        return "llama-cpp-python does not say its version (no __version__)"
    if not _version_tuple(lo) <= _version_tuple(version) < _version_tuple(hi):
        return (f"llama-cpp-python {version} is outside the tested range >={lo},<{hi} "
                f"(qwenkit is tested with {TESTED_VERSION})")
    return None


def _resolve(package: Any, path: str) -> Any:
    obj = package
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _arg_count(obj: Any) -> int | None:
    argtypes = getattr(obj, "argtypes", None)
    if argtypes is not None:          # a ctypes function: what llama-cpp-python declared
        return len(argtypes)
    try:
        return len(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return None


def _self_assigned(cls: type) -> set[str]:
    """Attributes a class's methods assign to `self` (instance attributes are not in dir())."""
    out: set[str] = set()
    trees: dict[str, ast.Module] = {}
    for klass in cls.__mro__:
        if klass is object:
            continue
        # the module's file parsed once and the class found in it: inspect.getsource tokenizes
        # to find the class's block, which made this check cost ~0.1 s of every import
        try:
            path = inspect.getsourcefile(klass)
            if path is None:
                continue
            if path not in trees:
                trees[path] = ast.parse(Path(path).read_text(encoding="utf-8"))
        except (OSError, TypeError, SyntaxError, UnicodeDecodeError):
            continue
        found = [n for n in ast.walk(trees[path]) if isinstance(n, ast.ClassDef) and n.name == klass.__name__]
        for node in (n for c in found for n in ast.walk(c)):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
            for t in targets:
                for el in (t.elts if isinstance(t, ast.Tuple) else [t]):
                    if isinstance(el, ast.Attribute) and isinstance(el.value, ast.Name) and el.value.id == "self":
                        out.add(el.attr)
    return out


def _attributes(obj: Any, wanted: tuple[str, ...]) -> set[str]:
    if isinstance(obj, type) and issubclass(obj, ctypes.Structure):
        return {f[0] for f in getattr(obj, "_fields_", [])}
    names = set(dir(obj))
    if isinstance(obj, type):
        for klass in obj.__mro__:
            names |= set(getattr(klass, "__annotations__", {}))
        if not names.issuperset(wanted):   # reading the source costs a parse: only when needed
            names |= _self_assigned(obj)
    return names


def need_problems(package: Any, need: Need) -> list[str]:
    """What is wrong with one Need in `package` (the llama_cpp package or a stand-in)."""
    where = f"llama_cpp.{need.path}"
    try:
        obj = _resolve(package, need.path)
    except AttributeError:
        return [f"{where} is missing"]
    out = []
    if need.args is not None:
        n = _arg_count(obj)
        if n != need.args:
            out.append(f"{where} takes {n} arguments; the kit passes {need.args}")
    if need.attrs:
        have = _attributes(obj, need.attrs)
        kind = "field" if isinstance(obj, type) and issubclass(obj, ctypes.Structure) else "attribute"
        out += [f"{where} has no {kind} {a!r}" for a in need.attrs if a not in have]
    return out


def _ggml_problems(package: Any) -> list[str]:
    try:
        load = _resolve(package, "_ctypes_extensions.load_shared_library")
        base = Path(_resolve(package, "llama_cpp._base_path"))
    except (AttributeError, TypeError):
        return []   # reported as missing names already
    out, libs = [], {}
    for name, (lib, _, _) in GGML_FUNCTIONS.items():
        if lib not in libs:
            try:
                libs[lib] = load(lib, base)
            except (OSError, RuntimeError) as e:
                libs[lib] = None
                out.append(f"ggml library lib{lib} did not load from {base}: {e}")
        if libs[lib] is not None and not hasattr(libs[lib], name):
            out.append(f"{name} is missing from lib{lib}")
    return out


def missing(package: Any) -> list[str]:
    """Every name of NEEDS and GGML_FUNCTIONS that `package` lacks or declares differently."""
    out = [p for need in NEEDS for p in need_problems(package, need)]
    return out + _ggml_problems(package)


def check(package: Any, *, allow_untested: bool = False) -> None:
    """Raise LlamaCppError naming every missing name, the installed and the tested version,
    and the fix. A version outside the tested range with nothing missing raises too, unless
    `allow_untested` (then it warns)."""
    version = getattr(package, "__version__", None)
    gaps = missing(package)
    off = version_problem(version)
    if not gaps and not off:
        return
    if not gaps and allow_untested:
        warnings.warn(f"{off}; every name qwenkit uses exists ({UNTESTED_ENV}=1)", RuntimeWarning, stacklevel=2)
        return
    head = off or f"llama-cpp-python {version} (the tested version is {TESTED_VERSION})"
    problem = head if not gaps else (
        f"{head} lacks what qwenkit uses:\n" + "\n".join(f"    - {g}" for g in gaps))
    fix = f"install the tested version: {REINSTALL}"
    if not gaps:
        fix += f"; or set {UNTESTED_ENV}=1 to try this version anyway"
    raise LlamaCppError(problem, fix)


def _import_checked() -> types.ModuleType:
    try:
        import llama_cpp
        import llama_cpp._logger  # installs llama-cpp-python's default log callback first
    except ImportError as e:
        raise LlamaCppError(f"llama-cpp-python is not installed or its library did not load ({e})",
                            f"install it: {REINSTALL}") from e
    check(llama_cpp, allow_untested=os.environ.get(UNTESTED_ENV) == "1")
    return llama_cpp


_lc = _import_checked()

# The C API: exactly the checked names (an unlisted one is an AttributeError, not a surprise later)
C = types.SimpleNamespace(**{n.path: _resolve(_lc, n.path) for n in NEEDS if "." not in n.path and n.path != "Llama"
                             and not n.path.startswith("_")})
Llama = _lc.Llama
JSON_GBNF: str = _lc.llama_grammar.JSON_GBNF
json_schema_to_gbnf = _lc.llama_grammar.json_schema_to_gbnf


# ---- Llama's private attributes ---------------------------------------------------------------
def vocab(llm: Any) -> Any:
    """The `llama_vocab *` of a loaded Llama."""
    return llm._model.vocab


def internal_model(llm: Any) -> Any:
    """A Llama's `_internals.LlamaModel` (token_cls, token_sep, add_bos_token, add_eos_token)."""
    return llm._model


def seed(llm: Any) -> int:
    """The seed the Llama's next sampler uses (after `llm.set_seed`)."""
    return llm._seed


def is_recurrent(llm: Any) -> bool:
    """A recurrent or hybrid model (its state cannot be cut back to an earlier token)."""
    return bool(getattr(llm, "_is_recurrent", False) or getattr(llm, "_is_hybrid", False))


def logits_all(llm: Any) -> bool:
    """Loaded with logits_all=True (its own completion then fills `llm.scores`)."""
    return bool(getattr(llm, "_logits_all", False))


# The Llama's record of what its context holds (`input_ids[:n_tokens]`, `_requires_eval`):
# kept true by code that decodes on the Llama's context, so Llama.generate's prefix reuse
# keeps working between the kit's calls and its own.
def n_evaluated(llm: Any) -> int:
    """How many tokens the context holds, as the Llama records it."""
    return llm.n_tokens


def evaluated_tokens(llm: Any) -> Any:
    """The tokens the context holds, as the Llama records them (a numpy view)."""
    return llm.input_ids[:llm.n_tokens]


def set_evaluated(llm: Any, n: int) -> None:
    """The context now holds only its first `n` tokens."""
    llm.n_tokens = n


def record_evaluated(llm: Any, start: int, tokens: Any) -> None:
    """`tokens` were decoded at positions start.. and their logits are fresh."""
    end = start + len(tokens)
    llm.input_ids[start:end] = tokens
    llm.n_tokens = end
    llm._requires_eval = False


# ---- private modules --------------------------------------------------------------------------
_ggml_libs: dict[str, Any] = {}


def _ggml_lib(base: str) -> Any:
    """A ggml shared library from the directory llama-cpp-python loaded libllama from (the same
    files, so the same loaded instance and the same CPU buffer-type pointer)."""
    if base not in _ggml_libs:
        _ggml_libs[base] = _lc._ctypes_extensions.load_shared_library(base, Path(_lc.llama_cpp._base_path))
    return _ggml_libs[base]


def ggml(name: str) -> Any:
    """A ggml function with its C types declared (GGML_FUNCTIONS, or the optional
    ggml_backend_cpu_buffer_type: AttributeError when this build keeps it elsewhere)."""
    lib, restype, argtypes = GGML_FUNCTIONS.get(name) or _GGML_OPTIONAL[name]
    fn = getattr(_ggml_lib(lib), name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def chat_formatter(template: str, eos_token: str, bos_token: str) -> Any:
    """llama-cpp-python's jinja2 chat-template renderer (a sandboxed environment):
    `f(messages=..., tools=..., tool_choice=..., **kwargs)` returns `.prompt` and `.stop`."""
    return _lc.llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)


class GrammarBuilder:
    """GBNF rules from JSON schemas, literals and hand-written rules, through llama-cpp-python's
    port of llama.cpp's json-schema-to-grammar (whose rule-level methods are private)."""

    def __init__(self) -> None:
        self._conv = _lc.llama_grammar.SchemaConverter(prop_order={}, allow_fetch=False, dotall=False,
                                                       raw_pattern=False)

    def literal(self, text: str) -> str:
        """A GBNF string literal matching `text` exactly."""
        return self._conv._format_literal(text)

    def add_rule(self, name: str, rule: str) -> str:
        """Add `name ::= rule` (renamed if taken); returns the name used."""
        return self._conv._add_rule(name, rule)

    def resolve_refs(self, schema: dict, url: str) -> dict:
        return self._conv.resolve_refs(schema, url)

    def schema(self, schema: dict, name: str) -> str:
        """Rules for a (resolved) JSON schema; returns the name of its rule."""
        return self._conv.visit(schema, name)

    def grammar(self) -> str:
        return self._conv.format_grammar()
