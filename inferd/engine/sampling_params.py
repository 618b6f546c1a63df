"""How to pick tokens for one request, validated at construction.

The scheduler reads only the stop conditions that depend on tokens alone (`max_tokens`, `stop_token_ids`,
`ignore_eos`, `min_tokens`); the rest is the runner's.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferd.errors import InvalidInput

GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling parameters of one request (the OpenAI API's, plus the common vLLM extensions)."""

    n: int = 1
    """Completions to generate for the prompt; the scheduler runs them as `n` requests sharing the prompt's
    KV blocks."""
    temperature: float = 1.0
    """Softmax temperature; 0 (or anything below `GREEDY_BELOW`) means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p` (1 = off)."""
    top_k: int = 0
    """Keep only the `top_k` most likely tokens (0 = off)."""
    min_p: float = 0.0
    """Drop tokens whose probability is below `min_p` times the most likely token's (0 = off)."""
    seed: int | None = None
    """Seed of this request's random generator, for reproducible sampling."""
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token already generated (OpenAI semantics)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was generated (OpenAI semantics)."""
    repetition_penalty: float = 1.0
    """Divides positive (multiplies negative) logits of tokens seen in the prompt or output (1 = off)."""
    max_tokens: int | None = None
    """Most tokens to generate; None means up to the model's `max_model_len`."""
    min_tokens: int = 0
    """EOS and `stop_token_ids` are ignored until this many tokens were generated."""
    stop: tuple[str, ...] = ()
    """Stop strings; matched by the detokenizer, which finishes the request through the scheduler."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that finish the request (the token is kept in the output)."""
    ignore_eos: bool = False
    """Keep generating past the model's end-of-sequence token."""
    logprobs: bool = False
    """Return the log-probability of each generated token."""
    top_logprobs: int = 0
    """With `logprobs`, also return this many most likely alternatives per position."""

    def __post_init__(self) -> None:
        checks: tuple[tuple[bool, str, str], ...] = (
            (self.n >= 1, "n", "must be >= 1"),
            (self.temperature >= 0.0, "temperature", "must be >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 disables it)"),
            (0.0 <= self.min_p <= 1.0, "min_p", "must be in [0, 1]"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]"),
            (self.repetition_penalty > 0.0, "repetition_penalty", "must be > 0"),
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be >= 1"),
            (self.min_tokens >= 0, "min_tokens", "must be >= 0"),
            (
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                "min_tokens",
                "must not exceed max_tokens",
            ),
            (self.top_logprobs >= 0, "top_logprobs", "must be >= 0"),
            (self.top_logprobs == 0 or self.logprobs, "top_logprobs", "needs logprobs"),
            (all(t >= 0 for t in self.stop_token_ids), "stop_token_ids", "must be >= 0"),
        )
        for ok, name, rule in checks:
            if not ok:
                raise InvalidInput(f"{name} {rule}; got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        """True when decoding picks the most likely token: a temperature below `GREEDY_BELOW` (as vLLM's);
        dividing float32 logits by less would overflow them to infinities."""
        return self.temperature < GREEDY_BELOW
