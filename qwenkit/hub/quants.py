"""A repo's GGUF files as quants: the quant a file name shows, split parts grouped as one
quant, and picking the quant a caller names. No network and no disk here."""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qwenkit.errors import DownloadError
from qwenkit.gguf_info import ModelInfo, split_parts
from qwenkit.hub.fit import Verdict
from qwenkit.hub.sizes import human_size

__all__ = ["DEFAULT_QUANT", "DEFAULT_REPO", "Quant", "QuantList", "RemoteFile", "find_quant", "group_quants",
           "is_model_gguf", "quant_name"]


DEFAULT_REPO = "unsloth/Qwen3.5-35B-A3B-GGUF"   # the Qwen3.5-35B-A3B GGUF repo the recipe uses
DEFAULT_QUANT = "Q4_K_M"


# ------------------------------------------------------------------------------ names
_QUANT_RE = re.compile(
    r"(?:^|[-_.])((?:UD-)?(?:I?Q\d(?:_[0-9A-Z]+)*|TQ\d_\d|BF16|F16|F32|FP16|FP32|MXFP4(?:_MOE)?|NVFP4))$",
    re.IGNORECASE)


def quant_name(filename: str) -> str | None:
    """Quant of a GGUF file name: `Qwen3.5-35B-A3B-UD-Q4_K_XL.gguf` -> `UD-Q4_K_XL`,
    `Q8_0/Qwen3.5-35B-A3B-Q8_0-00001-of-00002.gguf` -> `Q8_0`; None if the name shows none."""
    name = Path(filename).name
    sp = split_parts(name)
    stem = sp[0] if sp else (name[:-5] if name.lower().endswith(".gguf") else name)
    m = _QUANT_RE.search(stem)
    if m:
        return m.group(1).upper().replace("UD-", "UD-")
    parent = Path(filename).parent.name
    if parent and _QUANT_RE.search("-" + parent):
        return parent.upper()
    return None


def is_model_gguf(filename: str) -> bool:
    """A language-model GGUF (not a vision projector `mmproj-*` or an imatrix)."""
    n = Path(filename).name.lower()
    return n.endswith(".gguf") and not n.startswith(("mmproj", "imatrix"))


# ------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class RemoteFile:
    path: str                     # path in the repo
    size: int
    sha256: str | None            # LFS SHA-256 (None for files not in LFS)
    blob_id: str | None = None    # git blob id (sha1 of "blob <size>\0" + content)


@dataclass
class Quant:
    name: str
    files: tuple[RemoteFile, ...]
    repo: str
    revision: str | None = None   # the commit the listing came from
    verdict: Verdict | None = None
    info: ModelInfo | None = None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def n_parts(self) -> int:
        return len(self.files)

    @property
    def first(self) -> str:
        return self.files[0].path


class QuantList(list):
    """A list of Quant that shows itself as a table in a notebook."""

    def table(self) -> str:
        rows = [("quant", "size", "files", "fit")]
        for q in self:
            rows.append((q.name, human_size(q.size), str(q.n_parts), q.verdict.text if q.verdict else ""))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]}".rstrip() for r in rows)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:  # the text a console (or a notebook's text/plain) shows: the table
        return self.table()

    def _repr_markdown_(self) -> str:
        lines = ["| quant | size | files | fit |", "| --- | ---: | ---: | --- |"]
        for q in self:
            lines.append(f"| {q.name} | {human_size(q.size)} | {q.n_parts} | {q.verdict.text if q.verdict else ''} |")
        return "\n".join(lines)

    def find(self, name: str) -> Quant | None:
        """The quant called `name` (any case), or None."""
        return next((q for q in self if q.name.lower() == name.lower()), None)

    def get(self, name: str) -> Quant:
        for q in self:
            if q.name.lower() == name.lower():
                return q
        raise DownloadError(f"no quant {name!r}", "choose one of: " + ", ".join(q.name for q in self))


# ------------------------------------------------------------------------------ grouping
def group_quants(files: Iterable[RemoteFile], repo: str, revision: str | None = None) -> QuantList:
    """Group GGUF files into quants: split parts of one model become one quant."""
    groups: dict[tuple[str, str], list[RemoteFile]] = {}
    for f in files:
        if not is_model_gguf(f.path):
            continue
        sp = split_parts(f.path)
        key = (str(Path(f.path).parent), sp[0] if sp else Path(f.path).name[:-5])
        groups.setdefault(key, []).append(f)
    out = QuantList()
    names: dict[str, int] = {}
    for (_folder, stem), fs in groups.items():
        fs.sort(key=lambda f: (split_parts(f.path) or ("", 0, 0))[1])
        name = quant_name(fs[0].path) or stem
        names[name] = names.get(name, 0) + 1
        out.append(Quant(name, tuple(fs), repo, revision))
    for q in out:  # two models in one repo with the same quant: tell them apart by file name
        if names[q.name] > 1:
            sp = split_parts(q.first)
            q.name = sp[0].rsplit("/", 1)[-1] if sp else Path(q.first).name[:-5]
    out.sort(key=lambda q: q.size)
    return out


def find_quant(quants: Sequence[Quant], quant: str, repo: str) -> Quant:
    want = quant.strip().lower()
    for q in quants:
        if q.name.lower() == want or q.first.lower() == want or Path(q.first).name.lower() == want:
            return q
    raise DownloadError(f"{repo} has no quant {quant!r}",
                        "choose one of: " + (", ".join(q.name for q in quants) or "(no GGUF files in this repo)"))
