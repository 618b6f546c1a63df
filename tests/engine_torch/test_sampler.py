"""The sampler alone, on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.engine import SamplingParams
from inferd.engine.sampler import Sampler, SamplingState, invert_cdf

CPU = torch.device("cpu")
LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]])  # token 5 most likely, then 0, 1, 2, 3, 4
VOCAB = LOGITS.shape[1]


def sampler(seed: int = 0) -> Sampler:
    return Sampler(VOCAB, CPU, seed)


def states(
    s: Sampler, params: SamplingParams, rows: int, prompt: tuple[int, ...] = (0,)
) -> list[SamplingState]:
    return [s.new_state(params, prompt, []) for _ in range(rows)]


def draw(params: SamplingParams, rows: int = 4000, seed: int = 0) -> torch.Tensor:
    """Counts per token over `rows` independent draws."""
    s = sampler(seed)
    out = s.sample(LOGITS.expand(rows, -1).contiguous(), states(s, params, rows))
    return torch.bincount(torch.tensor(out.token_ids), minlength=VOCAB)


def test_greedy_is_argmax() -> None:
    s = sampler()
    assert s.sample(LOGITS, states(s, SamplingParams(temperature=0.0), 1)).token_ids == [5]


def test_sampling_follows_the_distribution() -> None:
    counts = draw(SamplingParams(temperature=1.0)).float() / 4000
    expected = LOGITS[0].softmax(-1)
    assert torch.allclose(counts, expected, atol=0.03)


def test_sampling_follows_a_large_vocabulary() -> None:
    """Mass on a few tokens among thousands of tiny ones: each share, and the tail's, is drawn at its rate."""
    logits = torch.full((1, 8192), -8.0)
    logits[0, [3, 5000, 8191]] = torch.tensor([2.0, 1.0, 0.0])
    rows = 2000
    s = sampler(3)
    out = s.sample(logits.expand(rows, -1).contiguous(), states(s, SamplingParams(temperature=1.0), rows))
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=8192).double() / rows
    expected = logits[0].double().softmax(-1)
    for token in (3, 5000, 8191):
        assert abs(counts[token] - expected[token]) < 0.03
    tail = 1 - expected[[3, 5000, 8191]].sum()  # about 0.2, spread over 8,189 tokens
    assert abs((1 - counts[[3, 5000, 8191]].sum()) - tail) < 0.03


def test_inverting_the_cdf_picks_the_token_whose_interval_holds_the_uniform() -> None:
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.5, 0.25, 0.0]] * 6)
    uniforms = torch.tensor([0.0, 0.2499, 0.25, 0.7499, 0.75, 1 - 2**-53], dtype=torch.float64)
    assert invert_cdf(probs, uniforms).tolist() == [1, 1, 3, 3, 4, 4]  # zero-probability tokens never
    broken = torch.tensor([[0.5, math.nan, 0.5], [math.inf, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert invert_cdf(broken, torch.tensor([0.5] * 3, dtype=torch.float64)).tolist() == [-1, -1, -1]
    unnormalized = torch.tensor([[1e-30, 0.0, 3.0]])  # the total need not be 1; a tiny share still counts
    assert invert_cdf(unnormalized, torch.tensor([0.0], dtype=torch.float64)).tolist() == [0]
    assert invert_cdf(unnormalized, torch.tensor([1e-20], dtype=torch.float64)).tolist() == [2]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1e-300),  # below GREEDY_BELOW: greedy (1e-300 is 0 in float32)
        SamplingParams(temperature=2e-5),  # logits / temperature stay finite
        SamplingParams(temperature=1.0, repetition_penalty=5e-324),  # a seen token's logit / penalty: inf
        SamplingParams(temperature=1.0, top_p=0.5, repetition_penalty=5e-324),
    ],
)
def test_infinite_scaling_draws_the_largest_logit(params: SamplingParams) -> None:
    s = sampler()
    out = s.sample(LOGITS.expand(3, -1).contiguous(), states(s, params, 3, prompt=(5,)))
    assert all(0 <= t < VOCAB for t in out.token_ids)
    if params.repetition_penalty == 1.0:
        assert out.token_ids == [5, 5, 5]  # the argmax, as greedy would


def test_temperature_sharpens() -> None:
    counts = draw(SamplingParams(temperature=0.1))
    assert counts[5] > 3900


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        (SamplingParams(top_k=1), {5}),
        (SamplingParams(top_k=2), {5, 0}),
        (SamplingParams(top_p=0.5), {5}),  # p(5) = 0.63 >= 0.5
        (SamplingParams(top_p=0.8), {5, 0}),  # 0.63 + 0.23 >= 0.8
        (SamplingParams(min_p=0.3), {5, 0}),  # p(0) / p(5) = 0.37; p(1) / p(5) = 0.14
        (SamplingParams(top_k=3, min_p=0.3), {5, 0}),
    ],
)
def test_filters(params: SamplingParams, allowed: set[int]) -> None:
    counts = draw(params, rows=2000)
    assert {i for i, c in enumerate(counts.tolist()) if c} == allowed


def test_seeded_draws_are_reproducible_and_independent_of_the_batch() -> None:
    seeded = SamplingParams(temperature=1.0, seed=7)
    s = sampler(1)
    alone = [s.sample(LOGITS, [s.new_state(seeded, (0,), [1] * k)]).token_ids[0] for k in range(30)]
    s = sampler(2)
    batched = []
    for k in range(30):
        rows = [s.new_state(SamplingParams(temperature=1.0), (0,), []), s.new_state(seeded, (0,), [1] * k)]
        batched.append(s.sample(LOGITS.expand(2, -1).contiguous(), rows).token_ids[1])
    assert alone == batched
    other = SamplingParams(temperature=1.0, seed=8)
    assert alone != [s.sample(LOGITS, [s.new_state(other, (0,), [1] * k)]).token_ids[0] for k in range(30)]


def test_repetition_penalty_demotes_seen_tokens() -> None:
    s = sampler()
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    # token 5 seen in the prompt: 3.0 / 2 = 1.5 < 2.0 (token 0)
    assert s.sample(LOGITS, states(s, params, 1, prompt=(5,))).token_ids == [0]


def test_frequency_and_presence_penalties_count_output_tokens() -> None:
    s = sampler()
    freq = SamplingParams(temperature=0.0, frequency_penalty=0.6)
    state = s.new_state(freq, (1,), [5])  # 3.0 - 0.6 = 2.4 > 2.0
    assert s.sample(LOGITS, [state]).token_ids == [5]
    state.append(5)  # 3.0 - 1.2 = 1.8 < 2.0
    assert s.sample(LOGITS, [state]).token_ids == [0]
    presence = SamplingParams(temperature=0.0, presence_penalty=1.5)
    state = s.new_state(presence, (1,), [5, 5, 5])  # 3.0 - 1.5 < 2.0, once however often
    assert s.sample(LOGITS, [state]).token_ids == [0]


def test_logprobs_are_of_the_raw_distribution() -> None:
    s = sampler()
    params = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3, repetition_penalty=1.5)
    out = s.sample(LOGITS, states(s, params, 1))
    lp = out.logprobs[0]
    assert lp is not None
    expected = LOGITS[0].log_softmax(-1)
    assert lp.top_token_ids == (5, 0, 1)
    assert lp.top_logprobs == pytest.approx(expected[[5, 0, 1]].tolist())
    assert lp.logprob == pytest.approx(expected[out.token_ids[0]].item())
    assert math.isclose(sum(math.exp(v) for v in expected.tolist()), 1.0, rel_tol=1e-5)


def test_mixed_batch() -> None:
    s = sampler()
    rows = [
        s.new_state(SamplingParams(temperature=0.0), (0,), []),
        s.new_state(SamplingParams(temperature=1.0, top_k=1), (0,), []),
        s.new_state(SamplingParams(temperature=0.0, logprobs=True), (0,), []),
        s.new_state(SamplingParams(temperature=0.7, seed=3, top_p=0.5), (0,), []),
    ]
    out = s.sample(LOGITS.expand(4, -1).contiguous(), rows)
    assert out.token_ids == [5, 5, 5, 5]
    assert [lp is not None for lp in out.logprobs] == [False, False, True, False]


_EXTREME = st.sampled_from([0.0, 1e-300, 1e-6, 1e-5, 2e-5, 0.3, 1.0, 7.0, 1e5, 1e30, 1e300])


@settings(max_examples=150, deadline=None)
@given(
    temperature=_EXTREME,
    top_p=st.sampled_from([1e-300, 1e-6, 0.5, 0.99, 1.0]),
    top_k=st.sampled_from([0, 1, 2, 5, 10_000]),
    min_p=st.sampled_from([0.0, 1e-300, 0.5, 1.0]),
    repetition_penalty=st.sampled_from([5e-324, 1e-30, 0.5, 1.0, 2.0, 1e30, 1e308]),
    presence_penalty=st.sampled_from([-2.0, 0.0, 2.0]),
    frequency_penalty=st.sampled_from([-2.0, 0.0, 2.0]),
    seed=st.none() | st.integers(0, 2**63 - 1),
    logprobs=st.booleans(),
    scale=st.sampled_from([1e-30, 1.0, 1e4, 1e30]),
)
def test_any_valid_parameters_draw_a_token_of_the_vocabulary(
    temperature: float,
    top_p: float,
    top_k: int,
    min_p: float,
    repetition_penalty: float,
    presence_penalty: float,
    frequency_penalty: float,
    seed: int | None,
    logprobs: bool,
    scale: float,
) -> None:
    """Extreme but valid parameters and logits never crash the step or yield an id outside the vocabulary."""
    params = SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        seed=seed,
        logprobs=logprobs,
        top_logprobs=3 if logprobs else 0,
    )
    s = sampler()
    rows = [s.new_state(params, (5, 0), [5, 1, 5]), s.new_state(SamplingParams(temperature=1.0), (0,), [])]
    out = s.sample((LOGITS * scale).expand(2, -1).contiguous(), rows)
    assert all(0 <= t < VOCAB for t in out.token_ids)
