"""Prompt reuse for the scheduler's slots, hybrid (recurrent) models included.

A slot's attention KV can be cut back to any earlier token (`llama_memory_seq_rm`), a
recurrent (Gated DeltaNet) state cannot: it only moves forward. So while a prompt is
prefilled, the scheduler stops at a few positions (CHECKPOINT_OFFSETS tokens before the end
of the prompt, as llama-server does) and keeps the sequence's recurrent state there
(`llama_state_seq_get_data_ext` with LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY): a small copy, while
the attention KV stays in the context. A later request that shares the prefix up to such a
position restores that state, cuts the KV there, and prefills only the rest.

Chats also mark where their first and last user messages begin (the end of a system prompt
other chats share; the message a user edits or regenerates): checkpoints are taken there too.
A new request may take its prefix from ANOTHER slot, busy or idle (a system prompt, the
instructions every map request of a summary shares): `llama_memory_seq_cp` copies the whole
sequence (separate KV streams copy only whole buffers; a recurrent state is shared until one
side writes), the donor's checkpoint restores the recurrent state of the shared prefix, and
`llama_memory_seq_rm` cuts the KV after it.

When a slot is taken by another conversation, its whole sequence state (KV and recurrent,
flags NONE) moves to host RAM with its checkpoints, and comes back into any free slot when
that conversation returns. Everything is kept by least-recent use within a byte budget, only
in memory (never pickled or written to disk).
"""
from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from qwenkit.units import MiB

__all__ = ["Blob", "CHECKPOINT_OFFSETS", "Checkpoint", "MIN_COPY_TOKENS", "MIN_SWAP_TOKENS", "Parked", "PromptCache",
           "common_prefix"]

# positions before a prompt's end where a recurrent checkpoint is taken (llama-server takes
# 4 + n_ubatch and 4): the chat template re-renders the end of a turn (the generation prompt,
# dropped thinking), so the next turn usually shares the prompt up to a few tokens before it
CHECKPOINT_OFFSETS = (4,)
MIN_SWAP_TOKENS = 32          # shorter states are cheaper to prefill again than to keep
MIN_COPY_TOKENS = 32          # a copy from another slot must save at least this many prefill tokens

_clock = itertools.count(1)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i + 64 <= n and a[i:i + 64] == b[i:i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _ptr(buf: np.ndarray) -> Any:
    return buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


@dataclass(eq=False)
class Blob:
    """Bytes of a llama.cpp sequence state, owned here."""
    data: np.ndarray
    size: int
    used: int = field(default_factory=lambda: next(_clock))


@dataclass(eq=False)
class Checkpoint:
    pos: int                    # the state after decoding tokens [0, pos)
    blob: Blob


@dataclass(eq=False)
class Parked:
    """A whole sequence moved to host RAM: its tokens, its state and its checkpoints."""
    tokens: list[int]
    blob: Blob
    checkpoints: list[Checkpoint]
    prefilled: int = 0

    @property
    def size(self) -> int:
        return self.blob.size + sum(c.blob.size for c in self.checkpoints)


class PromptCache:
    """The scheduler's view: state copies per slot and parked sequences, within `budget` bytes."""

    def __init__(self, model, budget: int):
        from qwenkit.llama_api import C
        self._lc = C
        self.model = model
        self.budget = int(budget)
        self.recurrent = bool(model.recurrent)
        self.slot_ckpts: dict[int, list[Checkpoint]] = {}
        self.parked: list[Parked] = []
        # counters for /health
        self.saved = self.restored = self.parked_n = self.unparked = self.evicted = self.copied = 0

    # ---- bytes ----
    def _get(self, seq: int, partial: bool) -> Blob | None:
        lc = self._lc
        flags = lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else lc.LLAMA_STATE_SEQ_FLAGS_NONE
        size = int(lc.llama_state_seq_get_size_ext(self.model.ctx, seq, flags))
        if size <= 0:
            return None
        # numpy.empty, not a ctypes array: ctypes zero-fills (32 ms for a 63 MiB Qwen3.5 state on
        # the 2-core box, 5.7 ms allocated this way and written), on the scheduler thread
        buf = np.empty(size, dtype=np.uint8)
        n = int(lc.llama_state_seq_get_data_ext(self.model.ctx, _ptr(buf), size, seq, flags))
        return Blob(buf, n) if n > 0 else None

    def _set(self, seq: int, blob: Blob, partial: bool) -> bool:
        lc = self._lc
        flags = lc.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY if partial else lc.LLAMA_STATE_SEQ_FLAGS_NONE
        blob.used = next(_clock)
        return int(lc.llama_state_seq_set_data_ext(self.model.ctx, _ptr(blob.data), blob.size, seq, flags)) > 0

    @property
    def used(self) -> int:
        return (sum(c.blob.size for cs in self.slot_ckpts.values() for c in cs)
                + sum(p.size for p in self.parked))

    def stats(self) -> dict:
        return {"budget_mib": round(self.budget / MiB, 1), "used_mib": round(self.used / MiB, 2),
                "checkpoints": sum(len(cs) for cs in self.slot_ckpts.values()), "parked": len(self.parked),
                "saved": self.saved, "restored": self.restored, "parked_total": self.parked_n,
                "unparked": self.unparked, "evicted": self.evicted, "copied": self.copied}

    # ---- checkpoints of a live slot ----
    def checkpoint_positions(self, keep: int, n_prompt: int, marks: Sequence[int] = ()) -> list[int]:
        """Where the prefill of a prompt stops for a checkpoint (recurrent models only): a few
        tokens before its end, and at `marks` (where its user messages begin) past what is
        reused, unless a mark is too close to the start to be worth a state copy."""
        if not self.recurrent or self.budget <= 0:
            return []
        ends = {n_prompt - k for k in CHECKPOINT_OFFSETS if keep < n_prompt - k}
        extra = {m for m in marks if m >= MIN_SWAP_TOKENS and keep < m < n_prompt}
        return sorted(ends | extra)

    def save(self, seq: int, pos: int) -> None:
        blob = self._get(seq, partial=True)
        if blob is None:
            return
        cs = [c for c in self.slot_ckpts.get(seq, []) if c.pos != pos]
        cs.append(Checkpoint(pos, blob))
        cs.sort(key=lambda c: c.pos)
        self.slot_ckpts[seq] = cs
        self.saved += 1
        self._fit()

    def best_checkpoint(self, seq: int, limit: int) -> Checkpoint | None:
        usable = [c for c in self.slot_ckpts.get(seq, []) if 0 < c.pos <= limit]
        return max(usable, key=lambda c: c.pos) if usable else None

    def cut(self, seq: int, pos: int) -> None:
        """The slot's tokens from pos on are gone: checkpoints past pos no longer apply."""
        self.slot_ckpts[seq] = [c for c in self.slot_ckpts.get(seq, []) if c.pos <= pos]

    def reusable(self, cached: list[int], seq: int, prompt: list[int], prefilled: int | None = None) -> int:
        """Prompt tokens a slot holding `cached` can keep for `prompt` (at least one token of
        the prompt is always decoded again, for its logits). Only the first `prefilled`
        tokens count: those computed as a prompt. The KV of generated tokens was computed one
        token per step, and llama.cpp's one-row and many-row matrix kernels round
        differently (measured on SmolLM2: reusing them moved the next answer's logits by 0.06,
        while a prompt prefilled in two pieces gives bit-identical logits), so a reused answer
        would change the next greedy answer; it is prefilled again instead (cheap: the history
        the template re-renders is mostly prompt)."""
        limit = min(common_prefix(cached, prompt), len(prompt) - 1)
        if prefilled is not None:
            limit = min(limit, prefilled)
        if not self.recurrent or limit >= len(cached):
            return max(0, limit)
        c = self.best_checkpoint(seq, limit)
        return c.pos if c else 0

    def rewind(self, seq: int, cached: list[int], keep: int) -> int:
        """Make the slot hold cached[:keep] (keep from `reusable`); returns what it now holds."""
        lc, mem = self._lc, self.model.mem
        if keep <= 0:
            lc.llama_memory_seq_rm(mem, seq, -1, -1)
            self.slot_ckpts[seq] = []
            return 0
        if keep >= len(cached):
            return len(cached)
        if self.recurrent:
            c = self.best_checkpoint(seq, keep)
            if c is None or c.pos != keep or not self._set(seq, c.blob, partial=True):
                lc.llama_memory_seq_rm(mem, seq, -1, -1)
                self.slot_ckpts[seq] = []
                return 0
            self.restored += 1
        if not lc.llama_memory_seq_rm(mem, seq, keep, -1):
            lc.llama_memory_seq_rm(mem, seq, -1, -1)
            self.slot_ckpts[seq] = []
            return 0
        self.cut(seq, keep)
        return keep

    def copy(self, src: int, src_cached: list[int], dst: int, keep: int) -> int:
        """Make slot `dst` hold src_cached[:keep] (keep from `reusable` on the source slot)
        by copying it from slot `src`, which keeps what it holds; returns what dst now holds."""
        lc, mem = self._lc, self.model.mem
        lc.llama_memory_seq_rm(mem, dst, -1, -1)
        self.slot_ckpts[dst] = []
        if keep <= 0:
            return 0
        # the whole range: a copy between separate KV streams supports nothing else, and the
        # recurrent state is one cell (shared until either sequence decodes)
        lc.llama_memory_seq_cp(mem, src, dst, -1, -1)
        if keep < len(src_cached):
            if self.recurrent:
                c = self.best_checkpoint(src, keep)
                if c is None or c.pos != keep or not self._set(dst, c.blob, partial=True):
                    lc.llama_memory_seq_rm(mem, dst, -1, -1)
                    return 0
            if not lc.llama_memory_seq_rm(mem, dst, keep, -1):
                lc.llama_memory_seq_rm(mem, dst, -1, -1)
                return 0
        self.copied += 1
        return keep

    # ---- parking whole sequences in host RAM ----
    def park(self, seq: int, cached: list[int], prefilled: int = 0) -> None:
        """Move a slot's whole state to host RAM before another conversation takes the slot."""
        if self.budget <= 0 or len(cached) < MIN_SWAP_TOKENS:
            self.slot_ckpts[seq] = []
            return
        blob = self._get(seq, partial=False)
        if blob is None:
            return
        # the checkpoints go with it (shared: the slot may still rewind to one of them now)
        self.parked.append(Parked(list(cached), blob, list(self.slot_ckpts.get(seq, [])), prefilled))
        self.parked_n += 1
        self._fit()

    def best_parked(self, prompt: list[int]) -> tuple[Parked | None, int]:
        best, best_keep = None, 0
        for p in self.parked:
            lcp = min(common_prefix(p.tokens, prompt), len(prompt) - 1, p.prefilled)
            if lcp >= len(p.tokens) or not self.recurrent:
                keep = min(lcp, len(p.tokens))
            else:
                usable = [c.pos for c in p.checkpoints if c.pos <= lcp]
                keep = max(usable, default=0)
            if keep > best_keep:
                best, best_keep = p, keep
        return best, best_keep

    def take(self, p: Parked) -> None:
        """Hold on to a parked sequence outside the budget's reach (it is about to be unparked)."""
        if p in self.parked:
            self.parked.remove(p)

    def unpark(self, p: Parked, seq: int) -> bool:
        """Put a parked sequence into slot `seq` (whatever it held is gone)."""
        self._lc.llama_memory_seq_rm(self.model.mem, seq, -1, -1)
        self.take(p)
        if not self._set(seq, p.blob, partial=False):
            self._lc.llama_memory_seq_rm(self.model.mem, seq, -1, -1)
            self.slot_ckpts[seq] = []
            return False
        self.slot_ckpts[seq] = p.checkpoints
        self.unparked += 1
        return True

    # ---- budget ----
    def _fit(self) -> None:
        """Drop the least recently used copies until the budget holds (parked sequences first)."""
        while self.used > self.budget:
            if self.parked:
                victim = min(self.parked, key=lambda p: p.blob.used)
                self.parked.remove(victim)
            else:
                items = [(c.blob.used, seq, c) for seq, cs in self.slot_ckpts.items() for c in cs]
                if not items:
                    return
                _, seq, c = min(items, key=lambda t: t[0])
                self.slot_ckpts[seq].remove(c)
            self.evicted += 1
