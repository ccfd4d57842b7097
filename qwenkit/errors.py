"""The kit's errors: each one names the problem and the fix, so a notebook user knows what to do.

Every error class of the package is defined here (tests/test_errors_home.py checks it); a module
that raises one may re-export it under its old name (`from qwenkit.summarize import DocumentError`).
"""
from __future__ import annotations

__all__ = [
    "ConfigError", "ContextOverflowError", "DocumentError", "DownloadError", "GGUFError", "HubUnreachable",
    "LlamaCppError", "ModelLoadError", "QwenkitError", "RoomError", "ServerError",
]


class QwenkitError(Exception):
    """Base class. `problem` says what is wrong, `fix` what to do about it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


class ConfigError(QwenkitError, ValueError):
    """A RunConfig that cannot work (bad type name, quantized V without flash attention, ...)."""


class GGUFError(QwenkitError, ValueError):
    """A GGUF file that is missing, truncated, corrupted or not a GGUF at all."""


class ModelLoadError(QwenkitError, RuntimeError):
    """llama.cpp refused to load a model or create its context (carries llama.cpp's own reason)."""


class ServerError(QwenkitError, RuntimeError):
    """The OpenAI-compatible server could not start, died, or did not answer."""


class ContextOverflowError(QwenkitError, ValueError):
    """A prompt that does not fit the context window."""


class DownloadError(QwenkitError, RuntimeError):
    """A download that could not complete or failed verification."""


class HubUnreachable(DownloadError):
    """The hub could not be reached at all (no network, wrong HF_ENDPOINT); the fix names the
    offline ways on (HF_HUB_OFFLINE=1 with downloaded models, the practice hub)."""


class LlamaCppError(QwenkitError, RuntimeError):
    """The installed llama-cpp-python lacks a name the kit uses, or is not the tested version."""


class DocumentError(QwenkitError, ValueError):
    """A document that cannot be summarized (empty, not text, unreadable)."""


class RoomError(QwenkitError, RuntimeError):
    """The room's router could not be set up, started or reached."""
