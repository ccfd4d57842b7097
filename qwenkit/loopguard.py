"""Catch a generation that loops, while it streams.

Small models (the 135M default above all) often fall into repeating one sentence until
max_tokens cuts them off. The guard watches the streamed text and stops it at the first
repeated n-gram: `n` consecutive words (CJK: characters) that already occurred earlier.

    guard = LoopGuard.for_language("en")
    for piece in stream:
        show(guard.feed(piece))          # text that is safe to show (held back n-1 words)
        if guard.looped:
            stream.close()               # cancel the request: the server stops generating
            print(guard.notice)          # one line: what repeated, after how many words
            break
    else:
        show(guard.flush())
    text = guard.text                    # everything before the loop began

Bound: a loop whose repeated block is p words long is stopped at most p + n words after the
block began repeating (the first n words of its second occurrence), i.e. within
2 * p + n words of its first occurrence. Nothing of the second occurrence is ever shown,
because the guard holds back the last n - 1 words until it knows they do not repeat.
A text without a repeated n-gram passes through unchanged (feed + flush == the input).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# A unit is a word (letters/digits) or one CJK character; punctuation is not a unit, so
# "model." and "model," count as the same word and punctuation changes do not hide a loop.
_UNIT = re.compile(r"[^\W_]+", re.UNICODE)
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]")

# n per language: an 8-word sequence repeated verbatim is a loop in English prose; Japanese
# units are single characters, so it takes more of them to be as specific.
N_FOR_LANGUAGE = {"en": 8, "ja": 20}


@dataclass
class LoopInfo:
    """Where a loop was found: the repeated n-gram and where it first and next occurred."""
    ngram: str            # the repeated words, joined by spaces
    first_unit: int       # unit index of its first occurrence
    repeat_unit: int      # unit index where it occurred again (the loop starts here)
    units_seen: int       # units finalized when the guard fired
    pieces_seen: int      # stream pieces (tokens, for a token-per-chunk server) fed until then


class LoopGuard:
    """Repeated n-gram detector for a text stream; see the module docstring."""

    def __init__(self, n: int = 8):
        if n < 2:
            raise ValueError(f"n={n}: a loop guard needs n >= 2 (n is the length of the repeated sequence)")
        self.n = n
        self.raw = ""                 # everything fed
        self.pieces = 0
        self._units: list[tuple[str, int, int]] = []   # (lowercased unit, start, end) in raw
        self._scan = 0                # raw offset up to which units are final
        self._seen: dict[tuple[str, ...], int] = {}    # n-gram -> index of its first unit
        self._shown = 0               # raw offset up to which text was returned
        self.loop: LoopInfo | None = None
        self._done = False

    @classmethod
    def for_language(cls, language: str) -> "LoopGuard":
        return cls(N_FOR_LANGUAGE.get(language, 8))

    @property
    def looped(self) -> bool:
        return self.loop is not None

    @property
    def cut(self) -> int:
        """Offset in `raw` where the kept text ends (the loop's start, or the end)."""
        if self.loop is None:
            return len(self.raw)
        return self._units[self.loop.repeat_unit][1]

    @property
    def text(self) -> str:
        """The text before the loop (all of it when none was found)."""
        return self.raw[:self.cut].rstrip() if self.loop else self.raw

    @property
    def notice(self) -> str:
        """One line for the reader; empty when no loop was found."""
        if self.loop is None:
            return ""
        lp = self.loop
        words = lp.ngram.replace(" ", "") if _CJK.search(lp.ngram) else lp.ngram
        words = words if len(words) <= 60 else words[:57] + "..."
        gap = lp.repeat_unit - lp.first_unit
        return (f"[loop guard: the model began repeating itself (\"{words}\" again after "
                f"{gap} word{'s' if gap != 1 else ''}); generation stopped after "
                f"{self.loop.pieces_seen} streamed pieces and the request was cancelled; "
                f"the repeat is left out]")

    # -- streaming ------------------------------------------------------------------------------
    def feed(self, piece: str) -> str:
        """Add a streamed piece; return the text that is now safe to show ('' once looped)."""
        if self._done or self.loop is not None:
            return ""
        self.pieces += 1
        self.raw += piece
        self._take_units(final=False)
        return self._release(final=False)

    def flush(self) -> str:
        """The stream ended: check the last word, return what was still held back."""
        if self._done:
            return ""
        if self.loop is None:
            self._take_units(final=True)
        out = self._release(final=True)
        self._done = True
        return out

    def _take_units(self, final: bool) -> None:
        for m in _UNIT.finditer(self.raw, self._scan):
            if m.end() == len(self.raw) and not final:
                break  # the word may go on in the next piece
            self._scan = m.end()
            if _CJK.search(m.group()):
                words = _split_mixed(m.group(), m.start())
            else:
                words = [(m.group().lower(), m.start(), m.end())]
            for w in words:
                self._units.append(w)
                if self._check():
                    return

    def _check(self) -> bool:
        n, units = self.n, self._units
        if len(units) < n:
            return False
        start = len(units) - n
        key = tuple(u[0] for u in units[start:])
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = start
            return False
        self.loop = LoopInfo(ngram=" ".join(key), first_unit=first, repeat_unit=start,
                             units_seen=len(units), pieces_seen=self.pieces)
        return True

    def _release(self, final: bool) -> str:
        if self.loop is not None:
            end = self.cut
        elif final:
            end = len(self.raw)
        else:
            # hold back the last n-1 finished words and any unfinished one: they may begin a repeat
            hold = len(self._units) - (self.n - 1)
            end = self._units[hold][1] if hold >= 0 else 0
        if end <= self._shown:
            return ""
        out = self.raw[self._shown:end]
        self._shown = end
        return out


def _split_mixed(run: str, offset: int) -> list[tuple[str, int, int]]:
    """Split a letter run into CJK characters (one unit each) and other-letter words."""
    out: list[tuple[str, int, int]] = []
    word_start = None
    for i, c in enumerate(run + " "):
        if _CJK.match(c) or c == " ":
            if word_start is not None:
                out.append((run[word_start:i].lower(), offset + word_start, offset + i))
                word_start = None
            if c != " ":
                out.append((c, offset + i, offset + i + 1))
        elif word_start is None:
            word_start = i
    return out
