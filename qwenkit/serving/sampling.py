"""Per-request token selection for the scheduler: llama.cpp's native sampler chain, or a
numpy argmax over llama.cpp's logits buffer for plain greedy requests (no copy, no chain).

The chain follows llama-server's order: logit bias, penalties (only when set), top-k, top-p,
min-p, temperature, dist(seed). `sample(ctx, i)` reads the logits of batch position i, so
every sequence of a batched decode samples from its own row."""
from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8          # llama-server's default
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0       # llama.cpp's default: off (llama_cpp.server's 1.1 costs 0.79x)
    penalty_last_n: int = 64
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None        # GBNF; constrains every token (structured output)
    # llama.cpp's DRY ("don't repeat yourself") penalty: off at 0; helps small models that loop
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", "\"", "*")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalized(self) -> bool:
        return self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


def check_grammar(vocab, grammar: str) -> None:
    """Raise ValueError when llama.cpp cannot parse a GBNF grammar."""
    import llama_cpp as lc
    g = lc.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not g:
        raise ValueError("the grammar does not parse (GBNF with a 'root' rule)")
    lc.llama_sampler_free(g)


class SlotSampler:
    def __init__(self, n_vocab: int, params: SamplingParams, vocab=None):
        import llama_cpp as lc
        self._lc = lc
        self.n_vocab = n_vocab
        self.params = params
        self.argmax = (params.greedy and not params.penalized and not params.logit_bias and not params.grammar
                       and not params.dry_multiplier)
        self.chain = None
        self._view: np.ndarray | None = None
        self._view_addr = 0
        if self.argmax:
            return
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())

        def add(s):
            lc.llama_sampler_chain_add(chain, s)

        if params.grammar:
            g = lc.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not g:
                lc.llama_sampler_free(chain)
                raise ValueError("the grammar does not parse")
            add(g)
        if params.logit_bias:
            arr = (lc.llama_logit_bias * len(params.logit_bias))()
            for i, (tok, bias) in enumerate(params.logit_bias.items()):
                arr[i].token, arr[i].bias = int(tok), float(bias)
            add(lc.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), arr))
        if params.penalized:
            add(lc.llama_sampler_init_penalties(n_vocab, int(params.penalty_last_n), float(params.repeat_penalty),
                                                float(params.frequency_penalty), float(params.presence_penalty)))
        if params.dry_multiplier > 0:
            br = params.dry_sequence_breakers
            self._breakers = (ctypes.c_char_p * len(br))(*[b.encode() for b in br])  # kept alive
            add(lc.llama_sampler_init_dry(vocab, float(params.dry_multiplier), float(params.dry_base),
                                          int(params.dry_allowed_length), int(params.dry_penalty_last_n),
                                          self._breakers, len(br)))
        if params.greedy:
            add(lc.llama_sampler_init_greedy())
        else:
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(lc.llama_sampler_init_top_k(int(params.top_k)))
            add(lc.llama_sampler_init_top_p(float(params.top_p), 1))
            add(lc.llama_sampler_init_min_p(float(params.min_p), 1))
            add(lc.llama_sampler_init_temp(float(params.temperature)))
            add(lc.llama_sampler_init_dist(int(seed) & 0xFFFFFFFF))
        self.chain = chain

    def accept_prompt(self, tokens) -> None:
        """Penalties look at the prompt's last tokens too, as in llama-server."""
        if self.chain is not None and (self.params.penalized or self.params.dry_multiplier > 0):
            for t in tokens[-max(1, self.params.penalty_last_n):]:
                self._lc.llama_sampler_accept(self.chain, int(t))

    def sample(self, ctx, i: int) -> int:
        if self.argmax:
            ptr = self._lc.llama_get_logits_ith(ctx, i)
            addr = ctypes.cast(ptr, ctypes.c_void_p).value
            if addr != self._view_addr:
                self._view = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
                self._view_addr = addr
            return int(self._view.argmax())
        return int(self._lc.llama_sampler_sample(self.chain, ctx, i))

    def close(self) -> None:
        if self.chain is not None:
            self._lc.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self) -> None:  # pragma: no cover
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
