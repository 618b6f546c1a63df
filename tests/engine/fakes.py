"""A fake model runner that checks the KV-cache contract instead of running a model.

Its "KV memory" stores, for every slot of every block, the token whose KV it holds. Before computing a
request it checks that every position the request attends to (those already computed) holds exactly that
request's token, so a wrong prefix hit, a wrongly shared block or a block reused while still in use fails
the test. Sampled tokens come from a deterministic function of the request id and position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from inferd.engine import RunnerOutput, SchedulerOutput


def default_sampler(request_id: str, tokens: list[int]) -> int:
    digest = hashlib.blake2b(f"{request_id}:{len(tokens)}".encode(), digest_size=4).digest()
    return 100 + int.from_bytes(digest, "little") % 1000


@dataclass
class _State:
    block_table: list[int]
    tokens: list[int]
    computed: int


@dataclass
class FakeRunner:
    block_size: int
    sampler: Callable[[str, list[int]], int] = default_sampler
    memory: dict[tuple[int, int], int] = field(default_factory=dict)
    """(block id, offset) → token id whose KV the slot holds."""
    states: dict[str, _State] = field(default_factory=dict)
    steps: int = 0

    def execute(self, output: SchedulerOutput) -> RunnerOutput:
        self.steps += 1
        for rid in output.preempted_request_ids | output.finished_request_ids:
            self.states.pop(rid, None)
        for new in output.new_requests:
            tokens = list(new.prompt_token_ids) + list(new.output_token_ids)
            self.states[new.request_id] = _State(list(new.block_ids), tokens, new.num_computed_tokens)
        for cached in output.cached_requests:
            state = self.states[cached.request_id]
            state.block_table.extend(cached.new_block_ids)
            assert state.computed == cached.num_computed_tokens
        sampled: dict[str, int] = {}
        for data in output.scheduled:
            state = self.states[data.request_id]
            start, inputs = data.num_computed_tokens, list(data.token_ids)
            assert inputs, "scheduled with no tokens"
            assert output.num_scheduled_tokens[data.request_id] == len(inputs)
            assert state.tokens[start : start + len(inputs)] == inputs, "inputs are not the request's tokens"
            for pos in range(start):
                assert self._slot(state, pos) == state.tokens[pos], f"{data.request_id}: bad KV at {pos}"
            for pos in range(start, start + len(inputs)):
                self.memory[self._key(state, pos)] = state.tokens[pos]
            state.computed = start + len(inputs)
            assert data.sample == (state.computed == len(state.tokens))
            if data.sample:
                token = self.sampler(data.request_id, state.tokens)
                state.tokens.append(token)
                sampled[data.request_id] = token
        return RunnerOutput(sampled)

    def _key(self, state: _State, pos: int) -> tuple[int, int]:
        return state.block_table[pos // self.block_size], pos % self.block_size

    def _slot(self, state: _State, pos: int) -> int | None:
        return self.memory.get(self._key(state, pos))
