"""The repository's scripts (benchmarks/*.py, tools/*.py) imported as modules by file path:
they are not a package, and tests call their functions directly."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["ROOT", "load_script"]

ROOT = Path(__file__).resolve().parent.parent


def load_script(relpath: str, name: str | None = None) -> ModuleType:
    """Import ROOT/relpath (e.g. "benchmarks/results_md.py") as module `name` (default: the file's
    stem), registered in sys.modules so that its dataclasses and pickles resolve."""
    path = ROOT / relpath
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a module (no such file, or not Python)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
