"""inferd's LLM engine: the continuous-batching scheduler, the paged KV cache and prefix caching.

Plain Python: nothing here imports torch or the web layer; only the model runner (a later module) does.
A step of the engine loop:

    output = scheduler.schedule()                          # SchedulerOutput: who computes which tokens
    result = runner.execute(output)                        # RunnerOutput: one sampled token per request
    updates = scheduler.update_from_output(output, result) # RequestUpdate per request: tokens, finish
"""

from inferd.engine.admission import DrainRate
from inferd.engine.config import (
    CacheConfig,
    EngineConfig,
    FairnessConfig,
    SchedulerConfig,
    kv_bytes_per_block,
)
from inferd.engine.errors import ContextLengthExceeded, InsufficientKVCache, KVCacheTooSmall
from inferd.engine.fairness import FairShare
from inferd.engine.kv_cache_manager import KVCacheManager, PrefixCacheStats, PrefixHit
from inferd.engine.outputs import (
    CachedRequestData,
    NewRequestData,
    RequestUpdate,
    RunnerOutput,
    SampleLogprobs,
    ScheduledRequest,
    SchedulerOutput,
    SchedulerStats,
)
from inferd.engine.policy import FewestComputedVictimPolicy, PriorityPolicy, SchedulingPolicy, WaitingQueue
from inferd.engine.request import EngineRequest, FinishReason, Priority, RequestStatus, split_samples
from inferd.engine.sampling_params import SamplingParams
from inferd.engine.scheduler import Scheduler

__all__ = [
    "CacheConfig",
    "CachedRequestData",
    "ContextLengthExceeded",
    "DrainRate",
    "EngineConfig",
    "EngineRequest",
    "FairShare",
    "FairnessConfig",
    "FewestComputedVictimPolicy",
    "FinishReason",
    "InsufficientKVCache",
    "KVCacheManager",
    "KVCacheTooSmall",
    "NewRequestData",
    "PrefixCacheStats",
    "PrefixHit",
    "Priority",
    "PriorityPolicy",
    "RequestStatus",
    "RequestUpdate",
    "RunnerOutput",
    "SampleLogprobs",
    "SamplingParams",
    "ScheduledRequest",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "SchedulerStats",
    "SchedulingPolicy",
    "WaitingQueue",
    "kv_bytes_per_block",
    "split_samples",
]
