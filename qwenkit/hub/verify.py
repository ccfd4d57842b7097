"""Checking downloaded bytes: running hashes while they arrive, the hub's checksum and a
readable GGUF header before a download gets its real name, SHA-256 of a file on disk."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from qwenkit.errors import DownloadError, GGUFError
from qwenkit.gguf_info import read_gguf
from qwenkit.hub.quants import RemoteFile

if TYPE_CHECKING:
    from qwenkit.hub.partial import PartialFile

__all__ = ["Digests", "sha256_file", "verify_download"]


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


class Digests:
    """Running hashes of one file's bytes: SHA-256, and for a file the hub lists without an
    LFS SHA-256 its git blob id (SHA-1 of `blob <size>\\0` + the content)."""

    def __init__(self, file: RemoteFile):
        self.file = file
        self.restart()

    def restart(self) -> None:
        f = self.file
        self.sha256 = hashlib.sha256()
        # the git blob id names the content (the hub's own id for a non-LFS file): not a security check
        self.blob = (hashlib.sha1(f"blob {f.size}\0".encode(), usedforsecurity=False)
                     if f.sha256 is None and f.blob_id else None)

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        if self.blob is not None:
            self.blob.update(chunk)

    def update_from_file(self, path: Path) -> None:
        with open(path, "rb") as fh:
            for b in iter(lambda: fh.read(8 << 20), b""):
                self.update(b)

    @property
    def matches(self) -> bool:
        """Do the bytes hash to what the hub lists (its SHA-256, else its git blob id)?"""
        f = self.file
        if f.sha256:
            return self.sha256.hexdigest() == f.sha256
        return self.blob is not None and self.blob.hexdigest() == f.blob_id

    @property
    def expected(self) -> str:
        return f"SHA-256 {self.file.sha256}" if self.file.sha256 else f"git blob id {self.file.blob_id}"

    @property
    def received(self) -> str:
        if self.file.sha256:
            return self.sha256.hexdigest()
        return self.blob.hexdigest() if self.blob is not None else "?"


def verify_download(partial: PartialFile) -> None:
    """The step before placing: the received bytes match the hub's checksum and, for a GGUF,
    its header reads. A download that fails either is deleted (resuming it cannot help)."""
    f, digests = partial.file, partial.digests
    if not digests.matches:
        partial.discard()
        raise DownloadError(
            f"{f.path}: checksum mismatch: the hub lists {digests.expected}, the {f.size:,} bytes received hash to "
            f"{digests.received}. The bad download was deleted",
            "run the download again; if it fails the same way, a proxy or the disk is corrupting data")
    if f.path.lower().endswith(".gguf"):
        try:
            read_gguf(partial.path)
        except GGUFError as e:
            partial.discard()
            raise DownloadError(f"{f.path} matches the hub's checksum but is not a usable GGUF: {e.problem}",
                                "the file on the hub is broken: choose another quant or repo") from e
