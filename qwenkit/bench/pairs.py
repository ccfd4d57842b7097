"""A pair of servers for an A/B run: the kit's server and llama.cpp's `llama-server`, loaded
with the same model, build and flags and the same context PER SLOT.

The kit's n_ctx is per slot (RunConfig(n_ctx=N, parallel=U): U x N cells, unified);
llama-server's -c is the TOTAL its slots share, so it gets `-c U*N -np U --kv-unified`."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qwenkit.bench.processes import NativeServer, kit_server
from qwenkit.config import RunConfig

__all__ = ["native_pair_args", "server_pair"]


def native_pair_args(parallel: int, native_extra: Sequence[str] = ()) -> list[str]:
    """What NativeServer is given beyond cfg for `parallel` slots: it renders `-np 1`, and these
    later flags win in llama.cpp's argument parser (--kv-unified only for more than one slot)."""
    return ["-np", str(parallel)] + (["--kv-unified"] if parallel > 1 else []) + list(native_extra)


@contextlib.contextmanager
def server_pair(cfg: RunConfig, parallel: int, bin_dir: Path | None = None, *, together: bool = False,
                native_extra: Sequence[str] = (),
                ready_timeout: float | None = None) -> Iterator[tuple[Any, NativeServer]]:
    """(kit server with parallel slots of cfg.n_ctx, llama-server -c parallel x cfg.n_ctx -np
    parallel), both stopped on exit. together: load both at once (a GPU host, where the model
    file is in the page cache), else the kit's first. native_extra: more llama-server flags (an
    A/B of its defaults). ready_timeout: seconds each may take to load (default: each's own)."""
    kit_cfg = cfg.replace(parallel=parallel)
    native_cfg = cfg.replace(n_ctx=cfg.n_ctx * parallel)
    wait: dict[str, Any] = {} if ready_timeout is None else {"ready_timeout": ready_timeout}

    def native() -> NativeServer:
        return NativeServer(native_cfg, bin_dir=bin_dir, extra_args=native_pair_args(parallel, native_extra), **wait)

    with contextlib.ExitStack() as stack:
        if together:
            kit_cm = kit_server(kit_cfg, **wait)
            with cf.ThreadPoolExecutor(2) as ex:
                fk, fn = ex.submit(kit_cm.__enter__), ex.submit(native)
            # both have finished here: stop whichever started (the kit's last), then raise
            if fk.exception() is None:
                stack.push(kit_cm.__exit__)
            if fn.exception() is None:
                stack.enter_context(fn.result())
            errors = [e for e in (fk.exception(), fn.exception()) if e is not None]
            if errors:
                raise errors[0]
            kit, nat = fk.result(), fn.result()
        else:
            kit = stack.enter_context(kit_server(kit_cfg, **wait))
            nat = stack.enter_context(native())
        yield kit, nat
