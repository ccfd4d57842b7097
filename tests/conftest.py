"""Shared fixtures: the small default model and tiny synthetic ones, small contexts."""
from __future__ import annotations

import qwenkit  # noqa: F401  first: it loads llama.cpp before numpy (see qwenkit/__init__.py)

# isort: split
import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for nbrun


@pytest.fixture(scope="session")
def default_model() -> Path:
    from qwenkit.models import default_model_path
    return default_model_path()


# Each area keeps its fixtures in tests/fixtures_<area>.py (one owner each); they are
# collected here so every test file can use them.
for _f in sorted(Path(__file__).parent.glob("fixtures_*.py")):
    _mod = importlib.import_module(_f.stem)
    globals().update({k: v for k, v in vars(_mod).items() if not k.startswith("_")})
