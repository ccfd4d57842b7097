"""The kit's errors: each one names the problem and the fix, so a notebook user knows what to do.

Every error class of the package is defined here (tests/test_errors_home.py checks it); a module
that raises one may re-export it under its old name (`from qwenkit.summarize import DocumentError`).
"""
from __future__ import annotations

from pathlib import Path

__all__ = [
    "BenchError", "ConfigError", "ContextOverflowError", "DocumentError", "DownloadError", "GGUFError",
    "HubUnreachable",
    "LlamaCppError", "ModelLoadError", "QualityError", "QueueFull", "QwenkitError", "RoomError", "SchedulerError",
    "ServerError",
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

    # set by qwenkit.server when the server process failed or died: its pid and log, to look further
    pid: int
    log_path: Path


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


class BenchError(QwenkitError, RuntimeError):
    """A benchmark that could not run (a tool missing, a server that did not answer)."""


class QualityError(QwenkitError, RuntimeError):
    """A quality measurement that cannot run (text too short, a context llama.cpp refused)."""


class SchedulerError(QwenkitError):
    """A request the server's scheduler cannot serve (a prompt longer than a slot, the server
    shutting down, the model failed). `status`, `code` and `retry_after` are what the HTTP API
    answers, with `problem` alone as the message of OpenAI's error object; an in-kernel caller
    (ChatSession, Scheduler.generate_many) sees the fix too."""

    def __init__(self, problem: str, fix: str | None = None, *, status: int = 500, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(problem, fix)
        self.status, self.code, self.retry_after = status, code, retry_after


class QueueFull(SchedulerError):
    """Every slot is busy and the queue is at its limit (HTTP 503 with Retry-After)."""
