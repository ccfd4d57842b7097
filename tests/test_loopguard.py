"""The loop guard: a looping stream is stopped within its stated bound with a one-line notice
and no repeat shown; a normal stream passes through untouched. Streams are cut into the
default model's own tokens; the end-to-end test runs the real summarizer on the real server."""
from __future__ import annotations

import pytest

from qwenkit.data import sample_text
from qwenkit.loopguard import LoopGuard, text_stats

INTRO = ("The document explains how a mixture-of-experts model is run on a consumer graphics card. "
         "It lists the memory consumers one by one. ")
# a sentence the 135M default model really repeated until max_tokens (make demo, before the guard)
LOOPED = "This shows that the planner's estimates are not always accurate. "


@pytest.fixture(scope="module")
def token_pieces(default_model):
    """text -> the default model's tokens as text pieces (how a server streams them)."""
    from qwenkit.llamalog import load_llama
    llm = load_llama(model_path=str(default_model), vocab_only=True, verbose=False)

    def pieces(text: str) -> list[str]:
        toks = llm.tokenize(text.encode(), add_bos=False)
        out, prev = [], ""
        for i in range(len(toks)):  # incremental detokenization, as a server does: a piece
            cur = llm.detokenize(toks[:i + 1]).decode("utf-8", "ignore")  # holds whole characters
            out.append(cur[len(prev):])
            prev = cur
        return out

    yield pieces
    llm.close()


def run(guard: LoopGuard, pieces: list[str]) -> tuple[str, int]:
    """Feed pieces until the guard stops the stream; (text shown, pieces consumed)."""
    shown = []
    for i, p in enumerate(pieces, 1):
        shown.append(guard.feed(p))
        if guard.looped:
            return "".join(shown), i
    shown.append(guard.flush())
    return "".join(shown), len(pieces)


def test_a_looping_stream_is_stopped_within_the_bound(token_pieces):
    stream = token_pieces(INTRO + LOOPED * 30)
    guard = LoopGuard.for_language("en")
    shown, consumed = run(guard, stream)
    assert guard.looped
    # the stated bound: stopped n words into the second occurrence of the repeated block
    p = text_stats(LOOPED).words            # words in the repeated block
    intro_words = text_stats(INTRO).words
    assert guard.loop is not None and guard.loop.units_seen <= intro_words + p + guard.n, guard.loop
    # in tokens: the intro, one block, n words of the next (+1: a word is final when the next
    # piece shows it has ended)
    tokens_to_bound = len(token_pieces(INTRO + LOOPED + " ".join(LOOPED.split()[:guard.n]))) + 1
    assert consumed <= tokens_to_bound < len(stream) // 5, (consumed, tokens_to_bound)
    # nothing of the repeat is shown, and the notice says what happened in one line
    assert shown.strip() == (INTRO + LOOPED).strip()
    assert guard.text == (INTRO + LOOPED).strip()
    assert "\n" not in guard.notice and guard.notice.startswith("loop guard:")
    assert "request was cancelled" in guard.notice and f"after {consumed} streamed pieces" in guard.notice


def test_a_stuck_word_is_stopped_within_2n_words(token_pieces):
    guard = LoopGuard(8)   # n = 8
    shown, consumed = run(guard, token_pieces("Summary: the the the the the the the the the the the the the the "
                                              "the the the the the the the the the the"))
    assert guard.looped and guard.loop is not None and guard.loop.units_seen <= 1 + 2 * 8
    assert text_stats(shown).words <= 2


@pytest.mark.parametrize("language", ["en", "ja"])
def test_a_normal_stream_is_untouched(token_pieces, language):
    """The bundled technical document (about 2,800 tokens) streamed token by token."""
    text = sample_text(language)
    guard = LoopGuard.for_language(language)
    shown, consumed = run(guard, token_pieces(text))
    assert not guard.looped, guard.notice
    assert shown == text and guard.text == text and guard.notice == ""


def test_text_is_held_back_at_most_a_sentence(token_pieces):
    text = sample_text("en")[:2000]
    guard, held = LoopGuard(), 0
    fed = shown = 0
    for piece in token_pieces(text):
        fed += len(piece)
        shown += len(guard.feed(piece))
        held = max(held, fed - shown)
    assert held <= 400   # a long sentence plus the n-1 words; MAX_HELD bounds a run without one


def test_a_cut_answer_ends_at_its_last_whole_sentence():
    guard = LoopGuard()
    text = "The first sentence is whole. The second one was cut by max_tok"
    shown = guard.feed(text) + guard.flush(whole_sentences=True)
    assert shown == guard.text + " " and guard.text == "The first sentence is whole."


def test_text_stats_flags_what_make_demo_used_to_print():
    looped = "The document provides an explanation. " + LOOPED * 19
    st = text_stats(looped)
    assert not st.readable() and st.repeated_sentences and st.distinct < 0.6
    assert text_stats(sample_text("en")[:1500]).distinct > 0.4


@pytest.mark.slow
def test_the_summarizer_stops_a_looping_answer_on_the_real_server(served):
    """The default model echoes a repetitive document: the answer is stopped, the request cancelled
    long before max_tokens, one notice line is said, and the kept summary holds no repeat."""
    from qwenkit import summarize
    said: list[str] = []
    s = summarize.summarize("The cache holds keys and values. " * 30, served.client(), served.alias,
                            n_ctx=served.n_ctx, language="en", max_tokens=64, temperature=0.0,
                            presence_penalty=0.0, on_progress=said.append)
    first = s.calls[0]
    assert first.finish_reason == "loop" and first.completion_tokens < 64, first
    assert any(m.startswith("loop guard:") for m in said), said
    assert s.loops >= 1 and "loop guard" in str(s)
    # stopped before 40 words: asked once more, warmer (a second request), the longer answer kept
    assert any(m.startswith("the loop guard kept only") for m in said) and len(s.calls) == 2, said
    assert not text_stats(s.text).repeated_sentences, s.text
    # the server is free again: the next request is answered
    r = served.client().chat.completions.create(model=served.alias, max_tokens=4,
                                                messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].finish_reason


@pytest.mark.slow
def test_closing_the_stream_at_a_loop_stops_the_server_generating(served):
    """The guard's stop is a real cancel: the server's decode counter stops, far short of max_tokens."""
    import time

    import httpx

    from qwenkit.summarize import SYSTEM_PROMPTS, WHOLE_PROMPTS
    doc = "The cache holds keys and values. " * 30    # the default model echoes it in a loop
    messages = [{"role": "system", "content": SYSTEM_PROMPTS["en"]},
                {"role": "user", "content": WHOLE_PROMPTS["en"].format(text=doc)}]
    prompt = served.client().chat.completions.create(model=served.alias, max_tokens=1,
                                                     messages=messages).usage.prompt_tokens
    health = served.base_url.rsplit("/v1", 1)[0] + "/health"
    before = httpx.get(health).json()["decode"]["tokens"]
    guard = LoopGuard.for_language("en")
    stream = served.client().chat.completions.create(model=served.alias, max_tokens=600, temperature=0.0,
                                                     stream=True, messages=messages)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            guard.feed(chunk.choices[0].delta.content)
            if guard.looped:
                stream.close()
                break
    assert guard.looped, guard.raw
    time.sleep(1.0)      # the scheduler frees the slot at its next step
    h1 = httpx.get(health).json()
    time.sleep(1.0)
    h2 = httpx.get(health).json()
    assert h1["decode"]["tokens"] == h2["decode"]["tokens"] and h2["slots"]["busy"] == 0, (h1, h2)
    generated = h2["decode"]["tokens"] - before - prompt    # the counter counts prompt tokens too
    assert generated < 100, (prompt, before, h2)             # a few dozen tokens, not 600
