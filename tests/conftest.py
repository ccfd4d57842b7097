"""Shared fixtures: the small default model and tiny synthetic ones, small contexts."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for nbrun


@pytest.fixture(scope="session")
def default_model() -> Path:
    from qwenkit.models import default_model_path
    return default_model_path()
