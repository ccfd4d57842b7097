"""Several users at once against a running server, from a notebook: each user's time to first
token and tokens, and the aggregate rate (notebook 04, "one GPU, a room of users").

    from qwenkit import server, users
    srv = server.start(cfg.replace(parallel=4))
    users.at_once(srv, 4, max_tokens=48)          # a table: per user, and all together
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from qwenkit.htmltable import Table

__all__ = ["TOPICS", "Crowd", "UserRun", "at_once"]

TOPICS = ["the water cycle", "how a bicycle works", "why leaves change colour", "what a compiler does",
          "how bread rises", "the phases of the moon", "how vaccines work", "what a GPU is for"]


@dataclass
class UserRun:
    user: int
    ttft_s: float
    tokens: int
    total_s: float
    finish: str | None


@dataclass
class Crowd:
    users: list[UserRun]
    wall_s: float
    slots: int | None

    @property
    def tokens(self) -> int:
        return sum(u.tokens for u in self.users)

    @property
    def aggregate(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def table(self) -> Table:
        rows = [[str(u.user), f"{u.ttft_s:.2f}", str(u.tokens), f"{u.tokens / u.total_s:.1f}", u.finish or "-"]
                for u in self.users]
        rows.append(["all", f"max {max(u.ttft_s for u in self.users):.2f}", str(self.tokens),
                     f"{self.aggregate:.1f} (aggregate)", ""])
        return Table(["user", "time to first token (s)", "tokens", "tok/s", "finish"], rows)

    def __str__(self) -> str:
        return str(self.table())

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


def at_once(srv, n_users: int, max_tokens: int = 48, temperature: float = 0.0) -> Crowd:
    """n_users streamed chat requests released together (one barrier), each asking about a
    different topic; returns per-user time to first token, tokens and rate, and the aggregate."""
    client = srv.client(max_retries=0)
    gate = threading.Barrier(n_users)
    t0 = [0.0]

    def one(i: int) -> UserRun:
        gate.wait()
        start = time.perf_counter()
        t0[0] = t0[0] or start
        first, n, finish = None, 0, None
        stream = client.chat.completions.create(
            model=srv.alias, max_tokens=max_tokens, temperature=temperature, stream=True,
            messages=[{"role": "user", "content": f"Explain {TOPICS[i % len(TOPICS)]} in a few sentences."}])
        for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                first = first or time.perf_counter()
                n += 1
            if ch.choices and ch.choices[0].finish_reason:
                finish = ch.choices[0].finish_reason
        end = time.perf_counter()
        return UserRun(i + 1, (first or end) - start, n, end - start, finish)

    t_start = time.perf_counter()
    with ThreadPoolExecutor(n_users) as ex:
        runs = list(ex.map(one, range(n_users)))
    wall = time.perf_counter() - t_start
    slots = srv.health().get("slots", {}).get("total")
    return Crowd(runs, wall, slots)
