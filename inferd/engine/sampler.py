"""Token sampling for one step: penalties, temperature, top-k, top-p, min-p, seeded draws, logprobs.

Rows are requests. All-greedy steps without penalties or logprobs take one argmax. Otherwise the batch is
processed with whole-tensor operations and one host transfer at the end; only the seeded random draws loop
over rows. A draw inverts the row's cumulative distribution at one uniform number: the first token whose
cumulative probability (summed in float64, so even a 1e-12 probability keeps its share) passes `u * total`.
That takes one random number per row; the exponential race `argmax(p / E)` needs one per vocabulary entry,
and torch draws exponentials serially: 25 ms for 32 rows of a 49k vocabulary on this CPU, about as long as
the model's whole decode step, against under 2 ms here. A seeded request's generator is re-seeded from
(seed, number of tokens generated so far) before each draw, so its tokens depend neither on the batch it
runs in nor on preemptions (which restart its runner state).

Logprobs are those of the model's distribution (log-softmax of the raw logits, before penalties and
temperature), as vLLM reports them by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from inferd.engine.outputs import SampleLogprobs
from inferd.engine.sampling_params import SamplingParams

_MASK = float("-inf")
_SEED_MIX = 0x9E3779B97F4A7C15
_SEED_MOD = 1 << 63


def step_seed(seed: int, num_generated: int) -> int:
    """The generator seed for a request's draw after `num_generated` tokens."""
    return (seed * _SEED_MIX + num_generated) % _SEED_MOD


@dataclass
class SamplingState:
    """What the sampler needs to know about one request across steps (owned by the runner)."""

    params: SamplingParams
    prompt_token_ids: tuple[int, ...]
    output_token_ids: list[int] = field(default_factory=list)
    """Generated so far, including tokens from before a preemption."""
    generator: torch.Generator | None = None
    """Set for seeded requests."""
    output_counts: torch.Tensor | None = None
    """[vocab] occurrences of each token in the output, kept when penalties are on."""
    prompt_mask: torch.Tensor | None = None
    """[vocab] bool, tokens of the prompt, kept when the repetition penalty is on."""

    @property
    def has_penalties(self) -> bool:
        p = self.params
        return p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 or p.repetition_penalty != 1.0

    def append(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        if self.output_counts is not None:
            self.output_counts[token_id] += 1


@dataclass(frozen=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[SampleLogprobs | None]

    def rows(self) -> list[tuple[int, SampleLogprobs | None]]:
        """(token, logprobs) of each row."""
        return list(zip(self.token_ids, self.logprobs, strict=True))


class Sampler:
    """Samples one token per row of a logits batch."""

    def __init__(self, vocab_size: int, device: torch.device, seed: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.generator = torch.Generator(device)
        """Draws of unseeded requests."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def new_state(
        self, params: SamplingParams, prompt_token_ids: tuple[int, ...], output_token_ids: Sequence[int]
    ) -> SamplingState:
        state = SamplingState(params, prompt_token_ids, list(output_token_ids))
        if params.seed is not None and not params.greedy:
            state.generator = torch.Generator(self.device)
        if state.has_penalties:
            counts = torch.zeros(self.vocab_size, dtype=torch.int64, device=self.device)
            if output_token_ids:
                ids = torch.tensor(list(output_token_ids), dtype=torch.int64, device=self.device)
                counts.index_add_(0, ids, torch.ones_like(ids))
            state.output_counts = counts
            if params.repetition_penalty != 1.0:
                mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
                mask[torch.tensor(prompt_token_ids, dtype=torch.int64, device=self.device)] = True
                state.prompt_mask = mask
        return state

    def sample(self, logits: torch.Tensor, states: Sequence[SamplingState]) -> SamplerOutput:
        """logits [S, vocab] float32, one row per state -> one token (and logprobs if asked) per row."""
        params = [s.params for s in states]
        if all(p.greedy and not p.logprobs for p in params) and not any(s.has_penalties for s in states):
            # max(-1) gives the first maximal index like argmax, in half the time on a CPU
            return SamplerOutput(logits.max(-1).indices.tolist(), [None] * len(states))
        raw = logits
        if any(s.has_penalties for s in states):
            logits = logits.clone()
            self._apply_penalties(logits, states)
        random_rows = [i for i, p in enumerate(params) if not p.greedy]
        if len(random_rows) == len(states):
            tokens = self._draw(logits, states)  # [S]
        else:
            tokens = logits.argmax(-1)  # [S]
            if random_rows:
                tokens[random_rows] = self._draw(logits[random_rows], [states[i] for i in random_rows])
        want = [i for i, p in enumerate(params) if p.logprobs]
        token_list: list[int] = tokens.tolist()
        logprobs: list[SampleLogprobs | None] = [None] * len(states)
        if want:
            wanted = self._logprobs(raw[want], tokens[want], [params[i] for i in want])
            for i, lp in zip(want, wanted, strict=True):
                logprobs[i] = lp
        return SamplerOutput(token_list, logprobs)

    def _apply_penalties(self, logits: torch.Tensor, states: Sequence[SamplingState]) -> None:
        for i, state in enumerate(states):
            if not state.has_penalties or state.output_counts is None:
                continue
            p = state.params
            row = logits[i]  # a view: edits land in `logits`
            counts = state.output_counts
            if p.repetition_penalty != 1.0:
                seen = counts > 0
                if state.prompt_mask is not None:
                    seen |= state.prompt_mask
                penalized = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
                row.copy_(torch.where(seen, penalized, row))
            if p.frequency_penalty != 0.0:
                row.sub_(p.frequency_penalty * counts.to(row.dtype))
            if p.presence_penalty != 0.0:
                row.sub_(p.presence_penalty * (counts > 0).to(row.dtype))

    def _draw(self, logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
        """Random tokens [R] for rows of logits [R, vocab] of non-greedy requests."""
        params = [s.params for s in states]
        temperature = torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=logits.device)
        logits = logits / temperature.unsqueeze(1)
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            logits = _top_k_top_p(logits, params)
        probs = logits.softmax(-1)
        if any(p.min_p > 0.0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], dtype=probs.dtype, device=probs.device)
            threshold = probs.max(-1, keepdim=True).values * min_p.unsqueeze(1)
            probs = probs.masked_fill(probs < threshold, 0.0)
        tokens = invert_cdf(probs, self._uniforms(states))
        # a row scaled to infinities (a tiny temperature or penalty) has no distribution: its largest logit
        return torch.where(tokens >= 0, tokens, logits.argmax(-1))

    def _uniforms(self, states: Sequence[SamplingState]) -> torch.Tensor:
        """One float64 uniform in [0, 1) per row: seeded rows from their own re-seeded generator."""
        uniforms = torch.rand(len(states), dtype=torch.float64, generator=self.generator, device=self.device)
        for i, state in enumerate(states):
            if state.generator is not None:
                assert state.params.seed is not None
                state.generator.manual_seed(step_seed(state.params.seed, len(state.output_token_ids)))
                generator = state.generator
                uniforms[i] = torch.rand(1, dtype=torch.float64, generator=generator, device=self.device)
        return uniforms

    def _logprobs(
        self, raw: torch.Tensor, tokens: torch.Tensor, params: Sequence[SamplingParams]
    ) -> list[SampleLogprobs]:
        logprobs = raw.log_softmax(-1)  # [R, vocab]
        chosen: list[float] = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
        k = max(p.top_logprobs for p in params)
        if k == 0:
            return [SampleLogprobs(lp) for lp in chosen]
        top = logprobs.topk(k, dim=-1)
        top_values: list[list[float]] = top.values.tolist()
        top_ids: list[list[int]] = top.indices.tolist()
        return [
            SampleLogprobs(lp, tuple(ids[: p.top_logprobs]), tuple(vals[: p.top_logprobs]))
            for lp, ids, vals, p in zip(chosen, top_ids, top_values, params, strict=True)
        ]


def _top_k_top_p(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Mask to -inf what top-k, then top-p (over the renormalized top-k), exclude; logits [R, vocab]."""
    vocab = logits.shape[1]
    sorted_logits, order = logits.sort(-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)  # [1, vocab]
    top_k = torch.tensor([p.top_k or vocab for p in params], device=logits.device).unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(ranks >= top_k, _MASK)
    top_p = torch.tensor([p.top_p for p in params], dtype=logits.dtype, device=logits.device).unsqueeze(1)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # probability mass of the more likely tokens
    sorted_logits = sorted_logits.masked_fill((before >= top_p) & (ranks > 0), _MASK)
    return torch.full_like(logits, _MASK).scatter(1, order, sorted_logits)


def invert_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Tokens [R]: row r's first index whose cumulative probability exceeds `uniforms[r]` times the row's
    total, or -1 where the total is not a finite positive number (NaN or infinite probabilities). probs
    [R, vocab] need not be normalized. A token of probability 0 is never drawn: its cumulative sum equals its
    predecessor's, so it never first exceeds."""
    cumulative = probs.to(torch.float64).cumsum_(-1)  # [R, vocab], non-decreasing
    total = cumulative[:, -1:]  # [R, 1]
    # strictly below the total, so some index exceeds it even when u * total rounds up
    targets = torch.minimum(uniforms.unsqueeze(1) * total, torch.nextafter(total, torch.zeros_like(total)))
    drawn = torch.searchsorted(cumulative, targets, right=True).squeeze(1)
    valid = (torch.isfinite(total) & (total > 0)).squeeze(1)
    return torch.where(valid, drawn.clamp_(max=probs.shape[1] - 1), -1)
