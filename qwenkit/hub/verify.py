"""Checking downloaded bytes: SHA-256 of a file on disk."""
from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file"]


def sha256_file(path: Path, bar=None, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 << 20)
            if not b:
                return h
            h.update(b)
            if bar is not None:
                bar.update(len(b))
