"""Fair sharing between tenants: the virtual token counters, and their invariants under random workloads."""

from __future__ import annotations

import os

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from inferd.engine import FairnessConfig, FairShare

from .helpers import Driver, make_request, make_scheduler

EXAMPLES = int(os.environ.get("ENGINE_EXAMPLES", "150"))


def test_charges_computed_prompt_tokens_and_sampled_tokens_by_weight() -> None:
    fair = FairShare(FairnessConfig(tenant_weights={"gold": 2.0}))
    plain = make_request("p", 10, tenant="t")
    fair.charge(plain, 0, 6)  # a chunk: 6 prompt tokens, nothing sampled
    assert fair.counter("t") == 6.0
    fair.charge(plain, 6, 4)  # the rest, and the first sample
    assert fair.counter("t") == 10.0 + 2.0
    plain.append_output_token(5)
    fair.charge(plain, 10, 1)  # a decode
    assert fair.counter("t") == 14.0
    gold = make_request("g", 10, tenant="gold")
    fair.charge(gold, 0, 10)
    assert fair.counter("gold") == (10.0 + 2.0) / 2


def test_recomputed_positions_are_free() -> None:
    fair = FairShare(FairnessConfig())
    request = make_request("r", 8, tenant="t")
    fair.charge(request, 0, 8)
    request.append_output_token(3)
    fair.charge(request, 8, 1)
    before = fair.counter("t")
    request.reset_for_recompute()
    fair.charge(request, 0, 9)  # recompute after preemption: only the new sample is charged
    assert fair.counter("t") == before + 2.0


def test_activation_lifts_to_the_least_served_active_tenant_or_the_last_served() -> None:
    fair = FairShare(FairnessConfig())
    fair.charge(make_request("a", 100, tenant="a"), 0, 100)
    fair.charge(make_request("b", 40, tenant="b"), 0, 40)
    fair.activate("c", ["a", "b"])
    assert fair.counter("c") == 42.0
    fair.activate("a", ["b", "c"])  # never lowered
    assert fair.counter("a") == 102.0
    fair.activate("d", [])  # nobody active: the counter of the tenant served last
    assert fair.counter("d") == 42.0


@pytest.mark.parametrize(
    "bad", [{"default_weight": 0.0}, {"tenant_weights": {"x": -1.0}}, {"decode_token_cost": -1}]
)
def test_config_refuses_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FairnessConfig(**bad)  # type: ignore[arg-type]


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    flood=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 12)), min_size=20, max_size=40),
    late=st.tuples(st.integers(1, 10), st.integers(1, 6)),
    arrival=st.integers(0, 10),
    max_num_seqs=st.integers(1, 4),
    budget_extra=st.integers(0, 40),
    num_blocks=st.sampled_from([16, 64]),
    preempt=st.booleans(),
)
def test_a_flooding_tenant_cannot_starve_another(
    flood: list[tuple[int, int]],
    late: tuple[int, int],
    arrival: int,
    max_num_seqs: int,
    budget_extra: int,
    num_blocks: int,
    preempt: bool,
) -> None:
    """Tenant a queues 20 to 40 requests; tenant b's one request starts within the time one of a's running
    requests needs to finish, whatever a's backlog (first come, first served: after all of it). With
    preemption, when a fills two or more slots and leaves budget and KV to spare, b starts at once."""
    s = make_scheduler(
        num_blocks,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_seqs + budget_extra,
        max_model_len=64,
        preempt_for_waiting=preempt,
    )
    for i, (prompt, max_tokens) in enumerate(flood):
        s.add_request(make_request(f"a{i}", list(range(100 + i, 100 + i + prompt)), max_tokens, tenant="a"))
    d = Driver(s)
    for _ in range(arrival):
        d.step()
    a_running = s.num_running
    s.add_request(make_request("b", late[0], late[1], tenant="b"))
    start = len(d.outputs)
    d.run(3000)
    waited = next(i for i, o in enumerate(d.outputs) if "b" in o.num_scheduled_tokens) - start
    assert len(d.tokens["b"]) == late[1]
    assert waited <= 2 * (20 + 12) + 2
    if preempt and a_running == max_num_seqs >= 2 and num_blocks == 64 and budget_extra >= 30:
        assert waited == 0
    assert all(len(d.tokens[f"a{i}"]) == max_tokens for i, (_, max_tokens) in enumerate(flood))
    event(f"b waited {min(waited, 5)}+ steps")


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    weights=st.lists(st.sampled_from([1.0, 2.0, 3.0]), min_size=2, max_size=3),
    shapes=st.lists(st.tuples(st.integers(1, 16), st.integers(1, 8)), min_size=4, max_size=12),
    max_num_seqs=st.integers(1, 6),
    preempt=st.booleans(),
)
def test_backlogged_tenants_counters_stay_within_a_bound(
    weights: list[float], shapes: list[tuple[int, int]], max_num_seqs: int, preempt: bool
) -> None:
    """While every tenant keeps requests waiting, no counter runs ahead of the lowest by more than what the
    requests running at once can add (VTC's fairness bound, per running slot)."""
    tenants = [f"t{i}" for i in range(len(weights))]
    s = make_scheduler(
        256,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_seqs + 16,
        max_model_len=64,
        preempt_for_waiting=preempt,
        tenant_weights=dict(zip(tenants, weights, strict=True)),
    )
    d = Driver(s)
    serial = 0
    biggest = max(prompt * 1.0 + max_tokens * 2.0 for prompt, max_tokens in shapes)
    bound = (max_num_seqs + 1) * biggest / min(weights)
    for _step in range(120):
        for t in tenants:  # keep every tenant backlogged: more waiting than one step can start
            while sum(1 for r in s._waiting if r.tenant == t) < max_num_seqs + 2:
                prompt, max_tokens = shapes[serial % len(shapes)]
                serial += 1
                tokens = list(range(200 + serial % 50, 200 + serial % 50 + prompt))
                s.add_request(make_request(f"{t}-{serial}", tokens, max_tokens, tenant=t))
        d.step()
        counters = [s.fair_share.counter(t) for t in tenants]
        assert max(counters) - min(counters) <= bound, (counters, bound)
    assert all(s.fair_share.counter(t) > 0 for t in tenants)
