"""The manifest each repo folder keeps (`.qwenkit-manifest.json`): every verified file's
SHA-256, size, commit and mtime, and the state a file on disk is in against it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

__all__ = ["MANIFEST", "STATE_HF_CACHE", "STATE_INCOMPLETE", "STATE_MODIFIED", "STATE_UNVERIFIED", "STATE_VERIFIED",
           "Manifest"]


MANIFEST = ".qwenkit-manifest.json"


STATE_VERIFIED = "verified"
STATE_MODIFIED = "modified since verification"
STATE_UNVERIFIED = "unverified"
STATE_INCOMPLETE = "incomplete"
STATE_HF_CACHE = "hf cache (size-checked only)"


class Manifest:
    def __init__(self, repo_dir: Path):
        self.path = repo_dir / MANIFEST
        try:
            self.data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            self.data = {}
        self.data.setdefault("files", {})

    @property
    def files(self) -> dict[str, dict]:
        return self.data["files"]

    def save(self) -> None:
        tmp = self.path.with_name(f"{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def state(self, rel: str, path: Path) -> str:
        e = self.files.get(rel)
        if e is None:
            return STATE_UNVERIFIED
        try:
            st = path.stat()
        except FileNotFoundError:
            return STATE_INCOMPLETE
        if st.st_size != e.get("size") or st.st_mtime_ns != e.get("mtime_ns"):
            return STATE_MODIFIED
        return STATE_VERIFIED

    def record(self, rel: str, path: Path, sha256: str, revision: str | None, repo: str | None) -> None:
        st = path.stat()
        self.files[rel] = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "revision": revision, "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if repo:
            self.data["repo"] = repo
        self.save()
