"""Participants' keys: one line per person in a plain text file of mode 0600.

    # name   key                 (a line starting with # is ignored; delete or comment a line to revoke)
    alice    qkr-3hT...
    bob      qkr-Zp9...

The room's router reads this file whenever it changes (no restart), so revoking a key is
editing the file, or `python -m qwenkit room revoke NAME`. Keys are random, so a key proves
who sent a request; the servers' own key never appears here.
"""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from qwenkit.errors import RoomError

__all__ = ["KEY_PREFIX", "Participant", "RoomError", "add_participants", "check_private", "new_key", "numbered_names",
           "read_keys", "render", "revoke", "table", "write_private"]

KEY_PREFIX = "qkr-"  # "qwenkit room": easy to tell apart from a server's "qk-" key
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_KEY = re.compile(r"^[A-Za-z0-9_-]{16,128}$")  # no quotes, spaces or ';': safe in nginx's map file


@dataclass(frozen=True)
class Participant:
    name: str
    key: str


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def check_private(path: Path) -> None:
    """Refuse a key file that others can read: its keys would be everyone's."""
    mode = Path(path).stat().st_mode & 0o777
    if mode & 0o077:
        raise RoomError(f"{path} is readable by other users (mode {mode:04o}): its keys are not secret",
                        f"chmod 600 {path}")


def read_keys(path: Path) -> list[Participant]:
    """The file's participants; raises RoomError naming the line of anything malformed."""
    path = Path(path)
    check_private(path)
    out: list[Participant] = []
    names, keys = set(), set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not _NAME.match(parts[0]) or not _KEY.match(parts[1]):
            raise RoomError(f"{path}, line {n}: expected 'NAME KEY' (name of letters, digits, ._@-; "
                            f"key of 16-128 letters, digits, - or _), got {line[:40]!r}",
                            "fix or delete the line (python -m qwenkit room keys --add NAME makes a valid one)")
        if parts[0] in names or parts[1].lower() in keys:  # the router compares keys case-blind
            raise RoomError(f"{path}, line {n}: {'name' if parts[0] in names else 'key'} used twice",
                            "give every participant a name and key of their own")
        names.add(parts[0])
        keys.add(parts[1].lower())
        out.append(Participant(parts[0], parts[1]))
    return out


def render(participants: list[Participant]) -> str:
    width = max([len(p.name) for p in participants] + [4])
    lines = ["# qwenkit room keys: NAME KEY per line. Delete (or #) a line to revoke it; the router",
             "# re-reads this file within a second, without a restart. Keep it mode 0600."]
    lines += [f"{p.name:<{width}}  {p.key}" for p in participants]
    return "\n".join(lines) + "\n"


def add_participants(path: Path, names: list[str]) -> list[Participant]:
    """Append new participants with fresh keys (the file is created if missing); returns them."""
    path = Path(path)
    have = read_keys(path) if path.exists() else []
    taken = {p.name for p in have}
    new = []
    for name in names:
        if not _NAME.match(name):
            raise RoomError(f"participant name {name!r} is not allowed",
                            "use letters, digits and . _ @ - (at most 64 characters)")
        if name in taken:
            raise RoomError(f"participant {name!r} already has a key in {path}",
                            f"pick another name, or revoke it first: python -m qwenkit room keys --revoke {name}")
        taken.add(name)
        new.append(Participant(name, new_key()))
    write_private(path, render(have + new))
    return new


def numbered_names(count: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(1, count + 1)]


def revoke(path: Path, names: list[str]) -> list[str]:
    """Remove these participants' lines; returns the names that were there."""
    have = read_keys(path)
    gone = [p.name for p in have if p.name in names]
    missing = sorted(set(names) - set(gone))
    if missing:
        raise RoomError(f"no participant named {', '.join(missing)} in {path}",
                        "python -m qwenkit room keys lists them")
    write_private(path, render([p for p in have if p.name not in names]))
    return gone


def table(participants: list[Participant]) -> str:
    """The table to hand out (one row per person)."""
    width = max([len(p.name) for p in participants] + [11])
    rows = [f"{'participant':<{width}}  key", f"{'-' * width}  {'-' * 36}"]
    rows += [f"{p.name:<{width}}  {p.key}" for p in participants]
    return "\n".join(rows)
