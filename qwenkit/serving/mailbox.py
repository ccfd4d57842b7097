"""Chunks from the scheduler's thread to the event loop of one HTTP request (the server's streams).

    box = Mailbox(asyncio.get_running_loop())
    box.post(chunk)                 # from the generating thread
    chunks = await box.collect()    # on the loop: everything posted so far
"""
from __future__ import annotations

import asyncio
import collections

__all__ = ["Mailbox"]


class Mailbox:
    """Chunks from the generation thread to the event loop, waking the loop only when it waits.

    Every wake-up (call_soon_threadsafe) costs the loop thread a select return, a self-pipe
    read and a callback. Chunks posted while the loop is busy, or while the publisher pauses
    between grouped writes, are collected at its next look without one. An urgent chunk (the
    end of the stream) always wakes it, so grouping never holds back the last tokens."""

    def __init__(self, loop):
        self.loop = loop
        self.items: collections.deque = collections.deque()
        self.ready = asyncio.Event()
        self.looking = True  # True while the loop will look again without being woken

    def post(self, item, urgent: bool = False) -> None:
        """From the generation thread: append, then wake the loop if it waits (or if urgent)."""
        self.items.append(item)
        if urgent or not self.looking:
            self.looking = True
            self.loop.call_soon_threadsafe(self.ready.set)

    async def collect(self) -> list:
        """Everything posted so far; waits for at least one item."""
        while True:
            # "waiting" is said BEFORE taking: a chunk appended after the take sees
            # looking == False and wakes the loop; one appended before it is taken here
            self.ready.clear()
            self.looking = False
            out = []
            while self.items:
                out.append(self.items.popleft())
            if out:
                self.looking = True
                return out
            await self.ready.wait()

    async def pause(self, seconds: float) -> None:
        """Sleep up to `seconds` while chunks gather unannounced; an urgent one ends it early."""
        self.ready.clear()
        try:
            await asyncio.wait_for(self.ready.wait(), seconds)
        except asyncio.TimeoutError:
            pass
