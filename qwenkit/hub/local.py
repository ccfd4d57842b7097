"""Models on disk: the kit's models folder (with each file's verification state), partial
downloads, GGUFs in huggingface_hub's cache; finding, removing and re-verifying them."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qwenkit.errors import DownloadError, QwenkitError
from qwenkit.gguf_info import split_parts
from qwenkit.hub.api import repo_files
from qwenkit.hub.manifest import (
    STATE_HF_CACHE,
    STATE_INCOMPLETE,
    STATE_MODIFIED,
    STATE_UNVERIFIED,
    STATE_VERIFIED,
    Manifest,
)
from qwenkit.hub.quants import RemoteFile, is_model_gguf, quant_name
from qwenkit.hub.sizes import human_size
from qwenkit.hub.store import INCOMPLETE, models_dir, repo_dirname
from qwenkit.hub.transfer import progress_bar
from qwenkit.hub.verify import sha256_file

__all__ = ["LocalModel", "find_local", "local_models", "model_on_disk", "models_table", "remove_model",
           "verify_model"]


@dataclass
class LocalModel:
    """A model on disk: one GGUF or all parts of a split one."""
    name: str                     # quant name (or file stem when the name shows none)
    path: Path                    # the file llama.cpp loads (the first part)
    files: list[Path]
    size: int
    state: str                    # verified / modified since verification / unverified / incomplete / hf cache
    repo: str | None = None
    revision: str | None = None
    sha256: list[str | None] = field(default_factory=list)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return f"{self.name}  {human_size(self.size)}  {self.state}  {self.path}"


def model_on_disk(repo_dir: Path | None, name: str, files: list[Path], manifest: Manifest | None,
                 repo: str | None) -> LocalModel:
    states, shas, revs, size = [], [], set(), 0
    for p in files:
        rel = p.relative_to(repo_dir).as_posix() if repo_dir is not None else p.name
        if p.exists():
            size += p.stat().st_size
            states.append(manifest.state(rel, p) if manifest is not None else STATE_UNVERIFIED)
        else:
            states.append(STATE_INCOMPLETE)
        e = manifest.files.get(rel, {}) if manifest is not None else {}
        shas.append(e.get("sha256"))
        if e.get("revision"):
            revs.add(e["revision"])
    for s in (STATE_INCOMPLETE, STATE_MODIFIED, STATE_UNVERIFIED, STATE_VERIFIED):
        if s in states:
            state = s
            break
    else:  # pragma: no cover
        state = STATE_UNVERIFIED
    return LocalModel(name, files[0], files, size, state, repo, revs.pop() if len(revs) == 1 else None, shas)


def _group_local(paths: list[Path]) -> list[tuple[str, list[Path]]]:
    groups: dict[tuple[Path, str], list[Path]] = {}
    for p in paths:
        sp = split_parts(p.name)
        if sp:
            stem, _, count = sp
            files = [p.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
            groups[(p.parent, stem)] = files
        else:
            groups[(p.parent, p.name)] = [p]
    return [(quant_name(str(fs[0])) or fs[0].name[:-5], fs) for fs in groups.values()]


def _hf_cache_root() -> Path:
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                     "huggingface")
    return Path(home).expanduser() / "hub"


def _hf_cache_models(repo: str | None = None, revision: str | None = None) -> list[LocalModel]:
    root = _hf_cache_root()
    out = []
    dirs = [root / f"models--{repo.replace('/', '--')}"] if repo else sorted(root.glob("models--*"))
    for d in dirs:
        rid = d.name[len("models--"):].replace("--", "/", 1)
        snaps = d / "snapshots"
        if not snaps.is_dir():
            continue
        commits = [p.name for p in snaps.iterdir() if p.is_dir()]
        if revision:
            ref = d / "refs" / revision
            commits = [ref.read_text().strip()] if ref.is_file() else [c for c in commits if c == revision]
        for c in commits:
            paths = [p for p in (snaps / c).rglob("*.gguf") if is_model_gguf(p.name)]
            for name, fs in _group_local(paths):
                size = sum(p.stat().st_size for p in fs if p.exists())
                state = STATE_HF_CACHE if all(p.exists() for p in fs) else STATE_INCOMPLETE
                out.append(LocalModel(name, fs[0], fs, size, state, rid, c, [None] * len(fs)))
    return out


def local_models(dest: str | os.PathLike | None = None, *, include_hf_cache: bool = True,
                 include_incomplete: bool = True) -> list[LocalModel]:
    """GGUF models on disk: the kit's models folder (with verification state), partial
    downloads, and (optionally) GGUFs in huggingface_hub's cache."""
    root = models_dir(dest)
    out: list[LocalModel] = []
    for repo_dir in sorted([root] + [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]):
        manifest = Manifest(repo_dir)
        repo = manifest.data.get("repo") or (repo_dir.name.replace("--", "/", 1) if repo_dir != root else None)
        if repo_dir == root:
            paths = [p for p in root.glob("*.gguf") if is_model_gguf(p.name)]
        else:
            paths = [p for p in repo_dir.rglob("*.gguf")
                     if is_model_gguf(p.name) and INCOMPLETE not in p.relative_to(repo_dir).parts]
        for name, fs in _group_local(paths):
            out.append(model_on_disk(repo_dir, name, fs, manifest, repo))
        if include_incomplete and repo_dir != root and (repo_dir / INCOMPLETE).is_dir():
            for part in (repo_dir / INCOMPLETE).rglob("*.part"):
                rel = part.relative_to(repo_dir / INCOMPLETE).as_posix()[:-5]
                try:
                    m = json.loads(part.with_name(part.name[:-5] + ".json").read_text())
                    total = f" of {human_size(m['size'])}"
                except (FileNotFoundError, ValueError, KeyError):
                    total = ""
                got = part.stat().st_size
                out.append(LocalModel(quant_name(rel) or Path(rel).name, part, [part], got,
                                      f"{STATE_INCOMPLETE} ({human_size(got)}{total}; run download again to resume)",
                                      repo))
    if include_hf_cache:
        out.extend(_hf_cache_models())
    return out


def find_local(repo: str, quant: str, *, dest: str | os.PathLike | None = None,
               revision: str | None = None) -> LocalModel | None:
    """A complete local copy of repo's quant: verified in the kit's folder, else in the HF cache."""
    root = models_dir(dest)
    repo_dir = root / repo_dirname(repo)
    want = quant.lower()

    def match(m: LocalModel) -> bool:
        return want in _names(m)

    if repo_dir.is_dir():
        manifest = Manifest(repo_dir)
        paths = [p for p in repo_dir.rglob("*.gguf")
                 if is_model_gguf(p.name) and INCOMPLETE not in p.relative_to(repo_dir).parts]
        for name, fs in _group_local(paths):
            m = model_on_disk(repo_dir, name, fs, manifest, repo)
            if match(m) and m.state == STATE_VERIFIED and (revision is None or m.revision == revision
                                                           or revision in ("main",)):
                return m
    for m in _hf_cache_models(repo, revision or "main"):
        if match(m) and m.state == STATE_HF_CACHE:
            return m
    return None


def _match_local(name: str, dest) -> list[LocalModel]:
    p = Path(name).expanduser()
    ms = local_models(dest, include_hf_cache=False)
    want = name.lower()
    hits = [m for m in ms if want in _names(m)
            or (p.exists() and any(f.resolve() == p.resolve() for f in m.files))]
    return hits


def _names(m: LocalModel) -> set[str]:
    """Names a local model answers to: quant, file names, model stem, owner/repo/quant."""
    names = {m.name.lower()}
    for f in m.files:
        names.add(f.name.lower())
        sp = split_parts(f.name)
        names.add((sp[0] if sp else f.name.removesuffix(".part").removesuffix(".gguf")).lower())
    if m.repo:
        names.add(f"{m.repo}/{m.name}".lower())
    return names


def remove_model(name: str, dest: str | os.PathLike | None = None) -> list[Path]:
    """Delete a local model (all its parts, its partial downloads and manifest entries).
    `name`: quant name, file name, path, or `owner/repo/QUANT` when two repos share a quant."""
    hits = _match_local(name, dest)
    if not hits:
        raise QwenkitError(f"no local model {name!r}", "list them: python -m qwenkit models")
    complete = [m for m in hits if not m.state.startswith(STATE_INCOMPLETE)]
    repos = {(m.repo, m.name) for m in complete} or {(m.repo, m.name) for m in hits}
    if len(repos) > 1:
        listed = ", ".join(f"{r}/{n}" for r, n in sorted(repos, key=str))
        raise QwenkitError(f"{name!r} matches several models: {listed}",
                           "name it as owner/repo/QUANT or give the file path")
    removed = []
    root = models_dir(dest)
    for m in hits:
        for f in m.files:
            if f.exists():
                f.unlink()
                removed.append(f)
            if f.suffix == ".part":
                f.with_name(f.name[:-5] + ".json").unlink(missing_ok=True)
        repo_dir = root / repo_dirname(m.repo) if m.repo else root
        if repo_dir.is_dir():
            man = Manifest(repo_dir)
            changed = False
            for f in m.files:
                try:
                    rel = f.relative_to(repo_dir).as_posix()
                except ValueError:
                    continue
                if man.files.pop(rel, None) is not None:
                    changed = True
            if changed:
                man.save()
        # partial downloads of the same quant
        if m.repo and (repo_dir / INCOMPLETE).is_dir():
            for part in (repo_dir / INCOMPLETE).rglob("*.part"):
                rel = part.relative_to(repo_dir / INCOMPLETE).as_posix()[:-5]
                if (quant_name(rel) or "").lower() == m.name.lower():
                    part.unlink()
                    part.with_name(part.name[:-5] + ".json").unlink(missing_ok=True)
                    removed.append(part)
    for d in sorted({f.parent for f in removed}, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            if d != root and not any(d.iterdir()):
                d.rmdir()
    return removed


def verify_model(name: str, dest: str | os.PathLike | None = None, progress: bool = True) -> LocalModel:
    """Hash a local model's files again and compare with the SHA-256 recorded at download;
    a file without a record is compared with the hub (needs the network)."""
    hits = [m for m in _match_local(name, dest) if not m.state.startswith(STATE_INCOMPLETE)]
    if len(hits) != 1:
        raise QwenkitError(f"{name!r} matches {len(hits)} local models", "list them: python -m qwenkit models")
    m = hits[0]
    root = models_dir(dest)
    repo_dir = root / repo_dirname(m.repo) if m.repo else root
    man = Manifest(repo_dir)
    remote: dict[str, RemoteFile] | None = None
    bar = progress_bar(m.size, 0, f"verify {m.name}", progress)
    try:
        for f in m.files:
            rel = f.relative_to(repo_dir).as_posix()
            want = man.files.get(rel, {}).get("sha256")
            if not want and m.repo:
                if remote is None:
                    _, rf = repo_files(m.repo)
                    remote = {x.path: x for x in rf}
                want = remote[rel].sha256 if rel in remote else None
            if not want:
                raise QwenkitError(f"{f}: no SHA-256 known for it", "download it with python -m qwenkit download")
            got = sha256_file(f, bar).hexdigest()
            if got != want:
                man.files.pop(rel, None)
                man.save()
                raise DownloadError(f"{f}: SHA-256 {got} does not match {want}: the file is corrupted",
                                    f"remove it (python -m qwenkit models --remove {f.name}) and download again")
            man.record(rel, f, got, man.files.get(rel, {}).get("revision"), m.repo)
    finally:
        bar.close()
    return model_on_disk(repo_dir, m.name, m.files, man, m.repo)


def models_table(models: Sequence[LocalModel]) -> str:
    """Local models as a table: text when printed, an HTML table as a notebook cell's result."""
    from qwenkit.htmltable import Table
    if not models:
        return Table([], [], title="no local models (download one: python -m qwenkit download REPO QUANT)")
    rows = [[f"{m.repo + '/' if m.repo else ''}{m.name}", human_size(m.size), m.state, str(m.path)] for m in models]
    return Table(["model", "size", "state", "path"], rows, align="lrll")
