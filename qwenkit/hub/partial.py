"""A download's partial file, `<repo>/.incomplete/<path>.part`, with a note beside it
(`<path>.json`: the repo, commit, size and SHA-256 its bytes belong to): opened or resumed,
grown as bytes arrive, discarded when it cannot be used, put in place once verified."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from qwenkit.hub.quants import RemoteFile
from qwenkit.hub.sizes import GiB
from qwenkit.hub.store import INCOMPLETE
from qwenkit.hub.verify import Digests

__all__ = ["PartialFile", "open_partial", "part_paths", "place", "resumable_bytes"]


def part_paths(repo_dir: Path, rel: str) -> tuple[Path, Path]:
    part = repo_dir / INCOMPLETE / (rel + ".part")
    return part, part.with_name(part.name[:-5] + ".json")


@dataclass
class PartialFile:
    """One file being downloaded: the bytes it holds (`offset`), their running hashes, and
    how many arrived in this run (`received`: what a retry counts as progress)."""
    file: RemoteFile
    repo_dir: Path
    path: Path
    meta: Path
    offset: int
    digests: Digests
    received: int = 0

    def append(self, out: BinaryIO, chunk: bytes) -> None:
        out.write(chunk)
        self.digests.update(chunk)
        self.offset += len(chunk)
        self.received += len(chunk)

    def restart(self, out: BinaryIO) -> None:
        """Back to zero bytes (a server that ignored the Range request sends the whole file)."""
        out.truncate(0)
        out.seek(0)
        self.offset = 0
        self.digests.restart()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)


def resumable_bytes(f: RemoteFile, *, repo_dir: Path) -> int:
    """Bytes of a partial download that may be resumed; a partial file of another version
    (or without its note) is deleted and counts 0."""
    part, meta = part_paths(repo_dir, f.path)
    try:
        m = json.loads(meta.read_text())
        size = part.stat().st_size
    except (FileNotFoundError, ValueError):
        part.unlink(missing_ok=True)
        return 0
    if m.get("sha256") != f.sha256 or m.get("size") != f.size or size > f.size:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return 0
    return size


def open_partial(f: RemoteFile, *, repo_dir: Path, repo: str, commit: str, bar) -> PartialFile:
    """The first step for a file: its partial file, resumed where a usable one stops (its
    bytes hashed again, so the final checksum covers them), and the note saying which
    version the bytes belong to."""
    path, meta = part_paths(repo_dir, f.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    offset = resumable_bytes(f, repo_dir=repo_dir)
    meta.write_text(json.dumps({"repo": repo, "path": f.path, "revision": commit, "sha256": f.sha256,
                                "size": f.size}))
    digests = Digests(f)
    if offset:
        bar.set_description(f"checking {offset / GiB:.2f} GiB already downloaded of {Path(f.path).name}")
        digests.update_from_file(path)
    bar.set_description(Path(f.path).name)
    return PartialFile(f, repo_dir, path, meta, offset, digests)


def place(partial: PartialFile) -> Path:
    """Give a verified download its real name in one atomic rename; tidy empty `.incomplete`
    folders. Returns the final path."""
    final = partial.repo_dir / partial.file.path
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial.path, final)
    partial.meta.unlink(missing_ok=True)
    d = partial.path.parent
    while d != partial.repo_dir and d.is_dir() and not any(d.iterdir()):  # tidy empty .incomplete folders
        d.rmdir()
        d = d.parent
    return final
