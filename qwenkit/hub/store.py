"""Where model files live on disk: the models folder, one folder per repo (partial files of
unfinished downloads under its `.incomplete/`), free space, and the lock that keeps two
downloads apart."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from qwenkit.errors import DownloadError
from qwenkit.hub.quants import DEFAULT_REPO

__all__ = ["INCOMPLETE", "free_bytes", "models_dir", "repo_dirname", "repo_lock"]


INCOMPLETE = ".incomplete"


def repo_dirname(repo: str) -> str:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise DownloadError(f"{repo!r} is not a hub repo id", "use owner/name, e.g. " + DEFAULT_REPO)
    return repo.replace("/", "--")


def models_dir(path: str | os.PathLike | None = None) -> Path:
    """Where downloaded models live: `path`, else $QWENKIT_MODELS, else <qwenkit cache>/models."""
    if path is None:
        env = os.environ.get("QWENKIT_MODELS")
        if env:
            path = Path(env).expanduser()
        else:
            from qwenkit.models import cache_dir
            path = cache_dir() / "models"
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def free_bytes(path: Path) -> int:
    """Free disk space at `path` (its nearest existing parent)."""
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


@contextlib.contextmanager
def repo_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:     # the lock lasts as long as the file is open
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError:
            raise DownloadError(f"another download into {path.parent} is running",
                                "wait for it to finish (or stop it); this one would write the same files") from None
        yield
