"""Bundled sample documents for the summarization notebook, tests and `qwenkit summarize`.

Both are original technical texts written for this kit (no third-party material): how a
mixture-of-experts model such as Qwen3.5-35B-A3B is stored as GGUF and where its memory goes
during local inference. A few thousand tokens each.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLES", "sample_one_line", "sample_path", "sample_text"]

_HERE = Path(__file__).resolve().parent
SAMPLES = {"ja": "sample_ja.txt", "en": "sample_en.txt"}


def sample_path(language: str = "ja") -> Path:
    """Path of the bundled technical document in `language` ("ja" or "en")."""
    try:
        return _HERE / SAMPLES[language]
    except KeyError:
        raise ValueError(f"no sample document in {language!r}; use one of {', '.join(SAMPLES)}") from None


def sample_text(language: str = "ja") -> str:
    return sample_path(language).read_text(encoding="utf-8")


def sample_one_line(language: str = "ja") -> str:
    """The sample document with every run of whitespace as one space: a benchmark cuts passages
    of it at any character offset and cycles through it."""
    return " ".join(sample_text(language).split())
