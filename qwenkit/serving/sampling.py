"""Per-request sampling settings for the scheduler, and the sampler of one slot.

`SlotSampler` is `qwenkit.fastgen.Sampler` (llama.cpp's native chain in llama-server's order,
or a numpy argmax over llama.cpp's logits buffer for plain greedy requests) built from a
request's SamplingParams. `sample(ctx, i)` reads the logits of batch position i, so every
sequence of a batched decode samples from its own row."""
from __future__ import annotations

from dataclasses import dataclass, field

from qwenkit.fastgen import Sampler

__all__ = ["SamplingParams", "SlotSampler", "check_grammar"]


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
    from qwenkit.llama_api import C as lc
    g = lc.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not g:
        raise ValueError("the grammar does not parse (GBNF with a 'root' rule)")
    lc.llama_sampler_free(g)


class SlotSampler(Sampler):
    """The sampler of one scheduler slot: a request's SamplingParams as a fastgen.Sampler."""

    def __init__(self, n_vocab: int, params: SamplingParams, vocab=None):
        # a negative temperature is greedy here (llama-server), dist-only in fastgen (llama-cpp-python)
        super().__init__(n_vocab=n_vocab, vocab=vocab, temperature=0.0 if params.greedy else params.temperature,
                         top_k=params.top_k, top_p=params.top_p, min_p=params.min_p,
                         repeat_penalty=params.repeat_penalty, frequency_penalty=params.frequency_penalty,
                         presence_penalty=params.presence_penalty, penalty_last_n=params.penalty_last_n,
                         seed=params.seed, logit_bias=params.logit_bias, grammar=params.grammar,
                         dry_multiplier=params.dry_multiplier, dry_base=params.dry_base,
                         dry_allowed_length=params.dry_allowed_length, dry_penalty_last_n=params.dry_penalty_last_n,
                         dry_sequence_breakers=params.dry_sequence_breakers)
        self.params = params

    def accept_prompt(self, tokens) -> None:
        """Penalties (and DRY) look at the prompt's last penalty_last_n tokens too, as in llama-server."""
        if self._history:
            super().accept_prompt(tokens[-max(1, self.params.penalty_last_n):])
