"""The continuous-batching scheduler: which requests compute how many tokens in each step.

Each step: running requests first, in policy order, each getting min(its missing tokens, budget left), a
prompt chunk leaving room for the decodes after it; then, if nobody was preempted, waiting requests in fair
order (tier, then the tenant with the least service received, then policy order) while a sequence slot and
budget remain (a long prompt is prefilled in chunks over several steps). A waiting request starts from its
prefix-cache hit, or from a sibling sample's prompt blocks; admission stops at the first one that does not
fit, so a large request is not starved by smaller ones behind it. While other requests decode or wait,
prefill tokens take at most `max_prefill_share` of the step, so a long prompt cannot hold up short ones.
With `start_alone`, a waiting request of a tenant that runs nothing, and that fair order puts before every
running request, starts in a step of its own (running requests skip it, never two steps in a row): its time
to first token is one light step, not a step carrying the flooding tenant's batch.

When a running request needs a block and none is free, the policy picks a victim among the running requests
not yet scheduled this step and the request itself; the victim's blocks are freed and it waits again, to
recompute its tokens later (preemption by recompute). A waiting request that finds no slot or blocks may
likewise preempt a running request of a less important tier, or one of a tenant running more than its share
(`SchedulerConfig.preempt_for_waiting`). Admission refuses any request that could not finish even alone in
the cache, so the request first in policy order can always progress: no crash, no deadlock.

Admission control: `add_request` refuses with QueueFull when the waiting queue is at its bounds or a new
request's expected wait passes `max_queue_wait_ms`, with a Retry-After from the measured drain rate
(`inferd/engine/admission.py`). Requests still without a token at
their deadline are dropped at the next step (`take_expired`).

Not thread-safe: one engine loop calls `add_request`, `schedule`, `update_from_output` (for each output
before the next `schedule`), and `finish_requests` between steps. `check_admission` and `stats` only read,
and may be called from another thread (approximate values).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from inferd.engine.admission import DrainRate, QueueLoad, check_admission
from inferd.engine.block_pool import KVBlock
from inferd.engine.config import EngineConfig, SchedulerConfig
from inferd.engine.errors import ContextLengthExceeded, KVCacheTooSmall
from inferd.engine.fairness import FairShare
from inferd.engine.kv_cache_manager import KVCacheManager, PrefixHit
from inferd.engine.outputs import (
    CachedRequestData,
    NewRequestData,
    RequestUpdate,
    RunnerOutput,
    SchedulerOutput,
    SchedulerStats,
)
from inferd.engine.policy import PriorityPolicy, SchedulingPolicy, WaitingQueue
from inferd.engine.request import EngineRequest, FinishReason, RequestStatus, split_samples
from inferd.errors import DeadlineExceeded, InternalError, InvalidInput

logger = logging.getLogger(__name__)

RUNNING = RequestStatus.RUNNING


@dataclass
class _Plan:
    """The step being planned."""

    budget: int
    prefill_budget: int
    num_scheduled: dict[str, int] = field(default_factory=dict)
    continuing: dict[str, tuple[EngineRequest, list[KVBlock], bool]] = field(default_factory=dict)
    """Running requests scheduled, with their new blocks and whether their tokens count as prefill."""
    starting: list[EngineRequest] = field(default_factory=list)
    preempted: list[EngineRequest] = field(default_factory=list)

    def take(self, request: EngineRequest, n: int, is_prefill: bool) -> None:
        self.num_scheduled[request.request_id] = n
        self.budget -= n
        self.prefill_budget -= n if is_prefill else 0

    def undo(self, request: EngineRequest) -> None:
        """Unschedule a continuing request (it is being preempted)."""
        entry = self.continuing.pop(request.request_id, None)
        if entry is not None:
            n = self.num_scheduled.pop(request.request_id)
            self.budget += n
            self.prefill_budget += n if entry[2] else 0


class Scheduler:
    """Owns the engine's requests and their KV blocks; plans each step and applies its results."""

    def __init__(
        self,
        config: SchedulerConfig,
        kv_cache: KVCacheManager,
        *,
        policy: SchedulingPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.policy: SchedulingPolicy = policy or PriorityPolicy()
        self._clock = clock
        self._requests: dict[str, EngineRequest] = {}
        """Unfinished requests by id."""
        self._groups: dict[str, list[EngineRequest]] = {}
        """Unfinished samples of each `n > 1` request, by the request's id."""
        self._waiting = WaitingQueue(self.policy)
        self._running: list[EngineRequest] = []
        self._finished_ids: set[str] = set()
        self._step = 0
        self._admitted = 0
        self.num_preemptions = 0
        self.fair_share = FairShare(config.fairness)
        """Per-tenant service counters."""
        self._tenant_load: Counter[str] = Counter()
        """Unfinished requests per tenant (the active tenants)."""
        self.drain_rate = DrainRate()
        """Requests and tokens leaving the waiting queue per second (for Retry-After)."""
        self._drained = (0, 0)
        self._last_schedule: float | None = None
        self._backlogged = False
        self._num_deadlines = 0
        self._expired: list[str] = []
        self._tags: tuple[str, float | None] | None = None
        self._solo_last = False
        """Whether the last step started a request alone (running requests skipped it)."""
        if kv_cache.capacity_tokens + 1 < config.max_model_len:
            logger.warning(
                "KV cache holds %d tokens, less than max_model_len %d: requests that could grow past it are "
                "refused",
                kv_cache.capacity_tokens,
                config.max_model_len,
            )

    @classmethod
    def from_config(
        cls, config: EngineConfig, num_blocks: int, *, policy: SchedulingPolicy | None = None
    ) -> Scheduler:
        """A scheduler with a fresh KV cache of `num_blocks` blocks (see `CacheConfig.resolve_num_blocks`)."""
        kv_cache = KVCacheManager(
            num_blocks, config.cache.block_size, enable_prefix_caching=config.cache.enable_prefix_caching
        )
        return cls(config.scheduler, kv_cache, policy=policy)

    # ---- requests in and out

    def add_request(self, request: EngineRequest) -> list[EngineRequest]:
        """Queue `request`, or all `n` of its samples; returns the requests whose updates will follow.
        Raises (nothing queued) ContextLengthExceeded or KVCacheTooSmall when it could never finish,
        InvalidInput for an id already in use, QueueFull when the waiting queue is at its bounds, and
        DeadlineExceeded when its deadline has passed."""
        if self._tags is not None and not request.tenant and request.deadline is None:
            request.tenant, request.deadline = self._tags
        self._check_fits(request)
        if request.deadline is not None and self._clock() >= request.deadline:
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        samples = split_samples(request)
        ids = {request.request_id, *(sample.request_id for sample in samples)}
        if any(rid in self._requests or rid in self._groups for rid in ids):
            raise InvalidInput(f"request id {request.request_id!r} is already in use")
        self.check_admission(len(samples), len(samples) * request.num_prompt_tokens)
        if not self._tenant_load[request.tenant]:
            self.fair_share.activate(request.tenant, +self._tenant_load)
        for sample in samples:
            sample.admission_index = self._admitted
            self._admitted += 1
            self._requests[sample.request_id] = sample
            self._waiting.add(sample)
            self._tenant_load[sample.tenant] += 1
            self._num_deadlines += sample.deadline is not None
        if request.sampling_params.n > 1:
            self._groups[request.request_id] = list(samples)
        return samples

    @contextlib.contextmanager
    def tagging(self, *, tenant: str = "", deadline: float | None = None) -> Iterator[None]:
        """Requests added inside that carry neither a tenant nor a deadline get these (for an engine whose
        `add_request` does not take them)."""
        self._tags = (tenant, deadline)
        try:
            yield
        finally:
            self._tags = None

    def check_admission(
        self, num_requests: int, num_tokens: int, *, pending_requests: int = 0, pending_tokens: int = 0
    ) -> None:
        """Raise QueueFull if `num_requests` more requests holding `num_tokens` prompt tokens do not fit in
        the waiting queue, or would wait past `max_queue_wait_ms`, besides `pending_*` that are on their way
        to it (as many as there are free slots will start at the next step rather than wait). Only reads:
        another thread may call it to refuse early."""
        free_slots = max(0, self.config.max_num_seqs - len(self._running))
        load = QueueLoad(
            len(self._waiting) + pending_requests, self._waiting.num_tokens + pending_tokens, free_slots
        )
        check_admission(self.config, self.drain_rate, load, num_requests=num_requests, num_tokens=num_tokens)

    def take_expired(self) -> list[str]:
        """Ids of the requests dropped since the last call because their deadline passed."""
        expired, self._expired = self._expired, []
        return expired

    def finish_requests(
        self, request_ids: Iterable[str], reason: FinishReason, stop_reason: int | str | None = None
    ) -> None:
        """End requests now and free their blocks (abort, or a stop string seen by the detokenizer). An id
        of an `n > 1` request ends all its samples; unknown or finished ids are ignored."""
        for rid in request_ids:
            group = self._groups.get(rid)
            targets = (
                list(group) if group is not None else [self._requests[rid]] if rid in self._requests else []
            )
            for request in targets:
                self._finish(request, reason, stop_reason)

    def abort_request(self, request_id: str) -> None:
        self.finish_requests((request_id,), FinishReason.ABORT)

    def get_request(self, request_id: str) -> EngineRequest | None:
        return self._requests.get(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def step_index(self) -> int:
        """Steps scheduled so far."""
        return self._step

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running=len(self._running),
            num_waiting=len(self._waiting),
            kv_cache_usage=self.kv_cache.usage,
            prefix_cache_queries=self.kv_cache.stats.queries,
            prefix_cache_hits=self.kv_cache.stats.hits,
            num_preemptions=self.num_preemptions,
            num_waiting_tokens=self._waiting.num_tokens,
            step=self._step,
        )

    # ---- one step

    def schedule(self) -> SchedulerOutput:
        """Plan the next step; blocks are allocated and `num_computed_tokens` advanced as if it will run."""
        now = self._clock()
        self._measure_drain(now)
        if self._num_deadlines:
            self._expire(now)
        order = sorted(self._running, key=self.policy.sort_key)
        decodes_left = sum(1 for r in order if r.num_tokens - r.num_computed_tokens <= 1)
        # 1-token prompts start like decodes: as many as there are free slots get room too.
        starters = min(self._waiting.num_single_token, max(0, self.config.max_num_seqs - len(order)))
        contended = decodes_left + starters > 0
        budget = self.config.max_num_batched_tokens
        plan = _Plan(budget, self.config.prefill_token_budget if contended else budget)
        load = Counter(r.tenant for r in order)
        head, head_tokens = self._waiting_head(plan, load)
        solo_last, self._solo_last = self._solo_last, False
        if head is not None and not solo_last and self._starts_alone(head, order, load):
            alone = _Plan(budget, self.config.prefill_token_budget)
            self._admit(alone, only_tenant=head.tenant)
            if alone.starting:
                self._solo_last = True
                return self._finish_plan(alone)
            plan.preempted = alone.preempted
        yielded: list[EngineRequest] = []

        for i, request in enumerate(order):
            if plan.budget == 0:
                break
            if request.status is not RUNNING:  # preempted earlier in this loop
                continue
            start = request.num_computed_tokens
            head_reserve = 0
            if request.num_tokens - start <= 1:
                decodes_left -= 1
                reserve = 0
            else:  # a prompt chunk leaves room for the decodes after it, and for a waiting head before it
                if head is not None and self._rank(request, load) > self._rank(head, load):
                    head_reserve = head_tokens
                    yielded.append(request)
                reserve = decodes_left + starters + head_reserve
            n, is_prefill = self._num_new_tokens(request, start, plan, reserve, head_reserve)
            if n == 0 and head_reserve:  # yielding slows a prompt down, never stops it
                n = min(1, self._num_new_tokens(request, start, plan, reserve - head_reserve)[0])
            if n == 0:
                continue
            new_blocks = self._allocate_or_preempt(request, n, order[i + 1 :], plan.preempted)
            if new_blocks is None:
                continue
            plan.take(request, n, is_prefill)
            plan.continuing[request.request_id] = (request, new_blocks, is_prefill)

        # Admitting while blocks are short would only preempt again next step.
        if not plan.preempted:
            self._admit(plan)
        self._top_up(yielded, plan)
        return self._finish_plan(plan)

    def _finish_plan(self, plan: _Plan) -> SchedulerOutput:
        self._backlogged = len(self._waiting) > 0
        for rid, (request, _, _) in plan.continuing.items():
            self.fair_share.charge(request, request.num_computed_tokens, plan.num_scheduled[rid])
        return self._build_output(plan)

    def _starts_alone(self, head: EngineRequest, running: list[EngineRequest], load: Counter[str]) -> bool:
        """Whether the waiting head starts in a step of its own: its tenant runs nothing and fair order puts
        it before every running request (`SchedulerConfig.start_alone`)."""
        if not self.config.start_alone or not running or load[head.tenant]:
            return False
        rank = self._rank(head, load)
        return all(rank < self._rank(r, load) for r in running)

    def _admit(self, plan: _Plan, only_tenant: str | None = None) -> None:
        kv, fair = self.kv_cache, self.fair_share
        load = Counter(r.tenant for r in self._running)
        no_slot: set[str] = set()  # tenants whose head found no slot and could not make one; others may
        for request in self._waiting.fair_order(lambda t: (fair.counter(t), load[t] / fair.weight(t))):
            if plan.budget == 0:
                break
            if request.tenant in no_slot or (only_tenant is not None and request.tenant != only_tenant):
                continue
            hit = self._starting_blocks(request)
            if hit is None:  # waits for a sibling sample to compute the shared prompt
                continue
            n, is_prefill = self._num_new_tokens(request, hit.num_tokens, plan)
            if n == 0:  # the prefill budget is spent; a 1-token prompt behind may still start
                if not self._waiting.num_single_token:
                    break
                continue
            needed = kv.blocks_needed(request, n, hit)
            slot_free = len(self._running) < self.config.max_num_seqs
            if not slot_free or needed > kv.num_free_blocks:
                if not self._make_room(request, plan, needed):
                    if slot_free:  # short of blocks: wait for them, so a large request is not starved
                        break
                    no_slot.add(request.tenant)
                    if len(no_slot) >= self._waiting.num_tenants:
                        break
                    continue
                load.clear()
                load.update(r.tenant for r in self._running)
                hit = self._starting_blocks(request)  # the victims' blocks may have held part of it
                if hit is None:
                    break
                n, is_prefill = self._num_new_tokens(request, hit.num_tokens, plan)
            if n == 0 or kv.allocate_slots(request, n, hit) is None:
                break
            self._leave_waiting(request)
            self._running.append(request)
            request.status = RUNNING
            request.num_computed_tokens = hit.num_tokens
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = hit.num_tokens
            if request.first_scheduled_time is None:
                request.first_scheduled_time = self._clock()
            plan.take(request, n, is_prefill)
            plan.starting.append(request)
            load[request.tenant] += 1
            # Charge now, so that the next pick of the fair order sees this tenant's new counter.
            self.fair_share.charge(request, request.num_computed_tokens, n)

    def update_from_output(
        self, scheduler_output: SchedulerOutput, runner_output: RunnerOutput
    ) -> list[RequestUpdate]:
        """Apply a step's results: cache newly computed blocks, append sampled tokens, finish requests that
        hit a token-based stop condition (EOS, stop token, max_tokens, max_model_len) or whose sampling
        failed."""
        updates: list[RequestUpdate] = []
        for rid in scheduler_output.num_scheduled_tokens:
            request = self._requests.get(rid)
            if request is None or request.status is not RUNNING:  # finished or aborted meanwhile
                continue
            self.kv_cache.cache_computed_blocks(request)
            if request.num_computed_tokens < request.num_tokens:  # a prefill chunk: nothing to sample
                continue
            error = runner_output.failed.get(rid)
            if error is not None:
                self._finish(request, FinishReason.ABORT, None)
                updates.append(RequestUpdate(rid, (), finish_reason=FinishReason.ABORT, error=error))
                continue
            token = runner_output.sampled_token_ids.get(rid)
            if token is None:
                raise InternalError(f"the runner sampled no token for request {rid}")
            request.append_output_token(token)
            reason, stop_reason = self._check_stop(request, token)
            if reason is not None:
                self._finish(request, reason, stop_reason)
            logprobs = runner_output.logprobs.get(rid)
            updates.append(
                RequestUpdate(
                    rid,
                    (token,),
                    (logprobs,) if logprobs is not None else (),
                    reason,
                    stop_reason,
                    max(request.num_cached_tokens, 0),
                )
            )
        return updates

    # ---- helpers

    def _check_fits(self, request: EngineRequest) -> None:
        max_len = self.config.max_model_len
        prompt = request.num_prompt_tokens
        max_tokens = request.sampling_params.max_tokens
        if prompt >= max_len or (max_tokens is not None and prompt + max_tokens > max_len):
            raise ContextLengthExceeded(
                f"this model's maximum context length is {max_len} tokens, but {prompt} prompt tokens and "
                f"{max_tokens if max_tokens is not None else 'at least 1'} completion tokens were requested; "
                "shorten the prompt or lower max_tokens"
            )
        # The last sampled token is never fed back, so its KV is never needed.
        worst_case = prompt + (max_tokens if max_tokens is not None else max_len - prompt) - 1
        if self.kv_cache.blocks_for(worst_case) > self.kv_cache.num_blocks:
            raise KVCacheTooSmall(
                f"the request may need KV for {worst_case} tokens, more than the KV cache holds "
                f"({self.kv_cache.capacity_tokens} tokens); lower max_tokens or shorten the prompt"
            )

    def _num_new_tokens(
        self, request: EngineRequest, start: int, plan: _Plan, reserve: int = 0, prefill_reserve: int = 0
    ) -> tuple[int, bool]:
        """Tokens `request` computes this step from position `start`, and whether they count as prefill; a
        prefill leaves `reserve` tokens of the budget and `prefill_reserve` of the prefill budget."""
        remaining = request.num_tokens - start
        if remaining <= 1:
            return min(remaining, plan.budget), False
        cap = min(plan.budget - reserve, plan.prefill_budget - prefill_reserve)
        if self.config.long_prefill_token_threshold:
            cap = min(cap, self.config.long_prefill_token_threshold)
        return max(0, min(remaining, cap)), True

    def _top_up(self, yielded: list[EngineRequest], plan: _Plan) -> None:
        """Give running prompts that left room for the waiting head what the head did not take."""
        threshold = self.config.long_prefill_token_threshold
        for request in yielded:
            if plan.budget == 0 or plan.prefill_budget <= 0:
                return
            if request.status is not RUNNING:
                continue
            rid = request.request_id
            n = plan.num_scheduled.get(rid, 0)
            extra = self._num_new_tokens(request, request.num_computed_tokens + n, plan)[0]
            if threshold:
                extra = min(extra, threshold - n)
            if extra <= 0:
                continue
            new_blocks = self.kv_cache.allocate_slots(request, n + extra)
            if new_blocks is None:
                continue
            entry = plan.continuing.get(rid)
            if entry is None:
                plan.continuing[rid] = (request, new_blocks, True)
                plan.take(request, extra, True)
            else:
                entry[1].extend(new_blocks)
                plan.undo(request)
                plan.take(request, n + extra, True)
                plan.continuing[rid] = entry

    def _rank(self, request: EngineRequest, load: Counter[str]) -> tuple[int, float, float]:
        """Who goes first between a running prompt and a waiting request: tier, then service received,
        then requests running (per weight)."""
        fair, tenant = self.fair_share, request.tenant
        return request.priority, fair.counter(tenant), load[tenant] / fair.weight(tenant)

    def _waiting_head(self, plan: _Plan, load: Counter[str]) -> tuple[EngineRequest | None, int]:
        """The waiting request first in fair order, and the prompt tokens it could start with this step:
        running prompts of a later tier, of more served tenants or of busier ones leave it that room."""
        if not self._waiting:
            return None, 0
        fair = self.fair_share
        head = next(iter(self._waiting.fair_order(lambda t: (fair.counter(t), load[t] / fair.weight(t)))))
        tokens = min(head.num_tokens, plan.prefill_budget)
        if self.config.long_prefill_token_threshold:
            tokens = min(tokens, self.config.long_prefill_token_threshold)
        return head, tokens

    def _allocate_or_preempt(
        self,
        request: EngineRequest,
        num_new_tokens: int,
        later: list[EngineRequest],
        preempted: list[EngineRequest],
    ) -> list[KVBlock] | None:
        """Blocks for a running request, preempting victims until they fit; None if it preempted itself."""
        while True:
            new_blocks = self.kv_cache.allocate_slots(request, num_new_tokens)
            if new_blocks is not None:
                return new_blocks
            candidates = [other for other in later if other.status is RUNNING]
            candidates.append(request)
            victim = self.policy.choose_victim(candidates)
            if not any(victim is candidate for candidate in candidates):
                raise InternalError(f"the scheduling policy chose {victim.request_id}, not a candidate")
            self._preempt(victim)
            preempted.append(victim)
            if victim is request:
                return None

    def _make_room(self, request: EngineRequest, plan: _Plan, blocks_needed: int) -> bool:
        """Preempt running requests so that waiting `request` gets a slot and `blocks_needed` free blocks, if
        `preempt_for_waiting` allows victims enough; True when it did."""
        if not self.config.preempt_for_waiting:
            return False
        starting = {r.request_id for r in plan.starting}
        candidates = [r for r in self._running if r.request_id not in starting]
        load = Counter(r.tenant for r in self._running)
        free = self.kv_cache.num_free_blocks
        victims: list[EngineRequest] = []
        while len(self._running) - len(victims) >= self.config.max_num_seqs or free < blocks_needed:
            victim = self._room_victim(request, candidates, load)
            if victim is None:
                return False
            victims.append(victim)
            candidates.remove(victim)
            load[victim.tenant] -= 1
            free += self.kv_cache.num_freed_by(victim)
        for victim in victims:
            plan.undo(victim)
            self._preempt(victim)
            plan.preempted.append(victim)
        return True

    def _room_victim(
        self, request: EngineRequest, candidates: list[EngineRequest], load: Counter[str]
    ) -> EngineRequest | None:
        """A running request that waiting `request` may preempt: one of the least important tier below its
        own; else, in its tier, one of the tenant running the most requests per weight, if that tenant
        still runs as many as `request`'s would (per weight) and has received at least as much service."""
        lower = [r for r in candidates if r.priority > request.priority]
        if lower:
            worst = max(r.priority for r in lower)
            return self.policy.choose_victim([r for r in lower if r.priority == worst])
        fair = self.fair_share
        tenant = request.tenant
        own = (load[tenant] + 1) / fair.weight(tenant)
        by_tenant: dict[str, list[EngineRequest]] = {}
        for r in candidates:
            if r.priority == request.priority and r.tenant != tenant:
                by_tenant.setdefault(r.tenant, []).append(r)
        eligible = [
            t
            for t in by_tenant
            if (load[t] - 1) / fair.weight(t) >= own and fair.counter(t) >= fair.counter(tenant)
        ]
        if not eligible:
            return None
        heaviest = max(eligible, key=lambda t: (load[t] / fair.weight(t), fair.counter(t), t))
        return self.policy.choose_victim(by_tenant[heaviest])

    def _leave_waiting(self, request: EngineRequest) -> None:
        self._waiting.remove(request)
        requests, tokens = self._drained
        self._drained = (requests + 1, tokens + request.num_tokens)

    def _measure_drain(self, now: float) -> None:
        """Record what left the waiting queue since the last step, if requests waited meanwhile (an idle
        engine's time says nothing about its speed)."""
        if self._last_schedule is not None and self._backlogged:
            self.drain_rate.record(now - self._last_schedule, *self._drained)
        self._drained = (0, 0)
        self._last_schedule = now

    def _expire(self, now: float) -> None:
        """Drop the requests still without a token at their deadline."""
        for request in list(self._requests.values()):
            if request.deadline is not None and now >= request.deadline and not request.output_token_ids:
                self._finish(request, FinishReason.ABORT, None)
                self._expired.append(request.request_id)

    def _preempt(self, request: EngineRequest) -> None:
        self.kv_cache.free(request)
        self._running.remove(request)
        request.reset_for_recompute()
        self._waiting.add(request)
        self.num_preemptions += 1
        logger.debug("preempted %s (%d tokens to recompute)", request.request_id, request.num_tokens)

    def _starting_blocks(self, request: EngineRequest) -> PrefixHit | None:
        """Computed blocks a waiting request starts from; None while it should wait for a sibling sample
        that is computing their shared prompt (then it computes only the prompt's last partial block)."""
        share: PrefixHit | None = None
        if request.parent_id is not None:
            siblings = [s for s in self._groups.get(request.parent_id, ()) if s.status is RUNNING]
            shareable = min(request.num_prompt_tokens, request.num_tokens - 1)
            shareable -= shareable % self.kv_cache.block_size
            if siblings and shareable > 0:
                source = max(siblings, key=lambda s: s.num_computed_tokens)
                if source.num_computed_tokens < shareable:
                    return None
                share = self.kv_cache.share_prompt(request, source)
        cached = self.kv_cache.find_prefix_hit(request)
        return share if share is not None and share.num_tokens > cached.num_tokens else cached

    def _check_stop(self, request: EngineRequest, token: int) -> tuple[FinishReason | None, int | None]:
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if token == request.eos_token_id and not params.ignore_eos:
                return FinishReason.STOP, None
            if token in params.stop_token_ids:
                return FinishReason.STOP, token
        if params.max_tokens is not None and request.num_output_tokens >= params.max_tokens:
            return FinishReason.LENGTH, None
        if request.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH, None
        return None, None

    def _finish(self, request: EngineRequest, reason: FinishReason, stop_reason: int | str | None) -> None:
        if request.is_finished:
            return
        if request.status is RUNNING:
            self._running.remove(request)
        else:
            self._leave_waiting(request)
        self.kv_cache.free(request)
        self._tenant_load[request.tenant] -= 1
        if not self._tenant_load[request.tenant]:
            del self._tenant_load[request.tenant]
        self._num_deadlines -= request.deadline is not None
        request.status = RequestStatus.finished(reason)
        request.stop_reason = stop_reason
        del self._requests[request.request_id]
        self._finished_ids.add(request.request_id)
        if request.parent_id is not None:
            group = self._groups.get(request.parent_id)
            if group is not None:
                group.remove(request)
                if not group:
                    del self._groups[request.parent_id]

    def _build_output(self, plan: _Plan) -> SchedulerOutput:
        num_scheduled = plan.num_scheduled
        new_requests: list[NewRequestData] = []
        for request in plan.starting:
            start, n = request.num_computed_tokens, num_scheduled[request.request_id]
            new_requests.append(
                NewRequestData(
                    request_id=request.request_id,
                    prompt_token_ids=request.prompt_token_ids,
                    output_token_ids=tuple(request.output_token_ids),
                    sampling_params=request.sampling_params,
                    block_ids=tuple(self.kv_cache.block_ids(request.request_id)),
                    num_computed_tokens=start,
                    token_ids=tuple(request.all_token_ids[start : start + n]),
                    sample=start + n == request.num_tokens,
                )
            )
        cached_requests: list[CachedRequestData] = []
        for request, new_blocks, _ in plan.continuing.values():
            start, n = request.num_computed_tokens, num_scheduled[request.request_id]
            cached_requests.append(
                CachedRequestData(
                    request_id=request.request_id,
                    new_block_ids=tuple(block.block_id for block in new_blocks),
                    num_computed_tokens=start,
                    token_ids=tuple(request.all_token_ids[start : start + n]),
                    sample=start + n == request.num_tokens,
                )
            )
        for request in plan.starting:
            request.num_computed_tokens += num_scheduled[request.request_id]
        for request, _, _ in plan.continuing.values():
            request.num_computed_tokens += num_scheduled[request.request_id]
        finished = frozenset(self._finished_ids)
        self._finished_ids.clear()
        self._step += 1
        return SchedulerOutput(
            step=self._step,
            new_requests=tuple(new_requests),
            cached_requests=tuple(cached_requests),
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=sum(num_scheduled.values()),
            preempted_request_ids=frozenset(r.request_id for r in plan.preempted),
            finished_request_ids=finished,
        )
