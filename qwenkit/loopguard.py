"""Catch a generation that loops, while it streams.

Small models (the 135M default above all) often fall into repeating one sentence until
max_tokens cuts them off. The guard watches the streamed text and stops it at the first
repeated n-gram: `n` consecutive words (CJK: characters) that already occurred earlier.

    guard = LoopGuard.for_language("en")  # n = 10 words
    for piece in stream:
        show(guard.feed(piece))          # text that is safe to show (whole sentences)
        if guard.looped:
            stream.close()               # cancel the request: the server stops generating
            print(guard.notice)          # one line: what repeated, after how many words
            break
    else:
        show(guard.flush())
    text = guard.text                    # everything before the loop began

Bound: a loop whose repeated block is p words long (p >= n) is stopped n words into the
block's second occurrence, i.e. at most p + n words after the block first began; a shorter
block (the same word or phrase over and over) within 2 * n words.
Nothing of the second occurrence is ever shown: the guard holds back the last n - 1 words,
and shows whole sentences (or at most MAX_HELD characters without a sentence end); at a stop
the kept text ends at the last sentence end before the repeat, unless that would drop more
than half of it. A text without a repeated n-gram passes
through unchanged (feed + flush == the input), only held back a little.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_HELD", "N_FOR_LANGUAGE", "LoopGuard", "LoopInfo", "TextStats", "text_stats"]

# A unit is a word (letters/digits) or one CJK character; punctuation is not a unit, so
# "model." and "model," count as the same word and punctuation changes do not hide a loop.
_UNIT = re.compile(r"[^\W_]+", re.UNICODE)
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]")

# where a sentence (or a line) ends; MAX_HELD: characters held back at most when none comes
# (Japanese puts no space after 。)
_BOUNDARY = re.compile(r"(?<=[。！？])(?![。！？])|(?<=[.!?])[ \t]+|[.!?](?=\n)|\n+")
MAX_HELD = 300
_ENDS = tuple(".!?。！？")

# n per language, from the bundled technical samples: the longest word sequence that a sound
# English text repeats there is 8 words ("key value heads and a head dimension of"), the longest
# Japanese one 16 characters; n stays above both. (Japanese units are single characters.)
N_FOR_LANGUAGE = {"en": 10, "ja": 24}


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

    def __init__(self, n: int = 10):
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
        self._end: int | None = None  # where flush(whole_sentences=True) ended the text

    @classmethod
    def for_language(cls, language: str) -> "LoopGuard":
        return cls(N_FOR_LANGUAGE.get(language, N_FOR_LANGUAGE["en"]))

    @property
    def looped(self) -> bool:
        return self.loop is not None

    @property
    def cut(self) -> int:
        """Offset in `raw` where the kept text ends: at a loop, the last sentence end before the
        repeat (or the repeat's start, when that would drop more than half); else the end."""
        if self.loop is None:
            return len(self.raw) if self._end is None else self._end
        start = self._units[self.loop.repeat_unit][1]
        ends = [m.end() for m in _BOUNDARY.finditer(self.raw, 0, start)]
        end = ends[-1] if ends and ends[-1] >= start / 2 else start
        return max(end, self._shown)

    @property
    def text(self) -> str:
        """The text before the loop (all of it when none was found)."""
        return self.raw[:self.cut].rstrip() if self.loop or self._end is not None else self.raw

    @property
    def notice(self) -> str:
        """One line for the reader; empty when no loop was found."""
        if self.loop is None:
            return ""
        lp = self.loop
        words = lp.ngram.replace(" ", "") if _CJK.search(lp.ngram) else lp.ngram
        words = words if len(words) <= 60 else words[:57] + "..."
        gap = lp.repeat_unit - lp.first_unit
        unit = ("character" if _CJK.search(lp.ngram) else "word") + ("s" if gap != 1 else "")
        return (f"loop guard: the model began repeating itself (\"{words}\" again after "
                f"{gap} {unit}); generation stopped after "
                f"{self.loop.pieces_seen} streamed pieces and the request was cancelled; "
                f"the repeat is left out")

    # -- streaming ------------------------------------------------------------------------------
    def feed(self, piece: str) -> str:
        """Add a streamed piece; return the text that is now safe to show ('' once looped)."""
        if self._done or self.loop is not None:
            return ""
        self.pieces += 1
        self.raw += piece
        self._take_units(final=False)
        return self._release(final=False)

    def flush(self, whole_sentences: bool = False) -> str:
        """The stream ended: check the last word, return what was still held back.
        whole_sentences: drop an unfinished last sentence (an answer cut by max_tokens)."""
        if self._done:
            return ""
        if self.loop is None:
            self._take_units(final=True)
        if whole_sentences and self.loop is None and not self.raw.rstrip().endswith(_ENDS):
            ends = [m.end() for m in _BOUNDARY.finditer(self.raw, self._shown)]
            end = ends[-1] if ends else self._shown
            if end > 0:  # never drop the whole answer
                self._end = end
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
            end = self.cut
        else:
            # hold back the last n-1 finished words and any unfinished one: they may begin a
            # repeat; show whole sentences, so that a stop never leaves half a sentence on screen
            hold = len(self._units) - (self.n - 1)
            safe = self._units[hold][1] if hold >= 0 else 0
            ends = [m.end() for m in _BOUNDARY.finditer(self.raw, self._shown, safe)]
            end = ends[-1] if ends else (safe if safe - self._shown > MAX_HELD else self._shown)
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


# ---- after the fact: is a finished text readable? ---------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|\n+")


@dataclass
class TextStats:
    words: int
    distinct: float                 # distinct words / words (lowercased, punctuation ignored)
    repeated_sentences: list[str]   # sentences that occur more than once

    def readable(self, min_words: int = 50, min_distinct: float = 0.6) -> bool:
        return self.words >= min_words and self.distinct >= min_distinct and not self.repeated_sentences

    def __str__(self) -> str:
        rep = f"; repeated: {self.repeated_sentences[0][:60]!r}" if self.repeated_sentences else ""
        return (f"{self.words} words, {self.distinct:.0%} distinct, "
                f"{len(self.repeated_sentences)} repeated sentences{rep}")


def text_stats(text: str) -> TextStats:
    """Word count, share of distinct words and repeated sentences of a finished text."""
    words = [w.lower() for w in _UNIT.findall(text)]
    seen: dict[str, int] = {}
    for s in _SENTENCE_END.split(text):
        key = " ".join(w.lower() for w in _UNIT.findall(s))
        if len(key.split()) >= 3:  # a bullet's one-word label repeated is not a looped sentence
            seen[key] = seen.get(key, 0) + 1
    return TextStats(len(words), len(set(words)) / len(words) if words else 0.0,
                     [k for k, c in seen.items() if c > 1])
