"""The kit's errors: each one names the problem and the fix, so a notebook user knows what to do."""
from __future__ import annotations


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
