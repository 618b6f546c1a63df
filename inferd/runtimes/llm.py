"""The LLM runtime: `config.yaml` with `runtime: llm`, and loading a version folder into a served engine.

A version folder holds a Hugging Face model: `config.json`, `*.safetensors`, `tokenizer.json`,
`tokenizer_config.json` (chat template, special tokens) and optionally `generation_config.json`.
Only this module's `load_llm_version` imports torch (lazily), so the server starts without it until an LLM
model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inferd.engine.chat_template import ChatTemplate
from inferd.engine.compute_thread import ComputeThread
from inferd.engine.config import CacheConfig, EngineConfig, FairnessConfig, SchedulerConfig
from inferd.engine.tokenizer import Tokenizer
from inferd.errors import ModelLoadError
from inferd.metrics.registry import Metrics
from inferd.repository.llm_version import LLMVersion
from inferd.repository.model_config import FailurePolicy, VersionPolicyConfig


@dataclass
class LLMModelConfig:
    """`config.yaml` of an LLM model (all its versions). Defaults suit a CPU."""

    runtime: Literal["llm"] = "llm"
    """Which runtime serves the model."""
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    """Weights and KV-cache dtype; `auto` keeps the dtype of `config.json`."""
    max_model_len: int | None = None
    """Longest sequence (prompt + output) in tokens; unset: the model's context length, capped at 4096."""
    max_num_seqs: int = 16
    """Most requests running at once."""
    max_num_batched_tokens: int = 2048
    """Token budget of one engine step (prefill and decode tokens together)."""
    block_size: int = 16
    """Tokens per KV-cache block."""
    kv_cache_memory: float = 0.25
    """KV-cache size: bytes when > 1, else a fraction of the free device memory (on a CPU also capped at
    what `max_num_seqs` full-length sequences need)."""
    enable_prefix_caching: bool = True
    """Reuse the KV of earlier requests' identical prompt prefixes."""
    max_waiting_requests: int | None = 1024
    """Most requests waiting for the engine; beyond it new ones are refused at once (429, Retry-After from
    the measured drain rate). null: no bound."""
    max_waiting_tokens: int | None = None
    """Most prompt tokens waiting for the engine, likewise (null: no bound)."""
    max_queue_wait_ms: float | None = None
    """Longest a new request is expected to wait for the engine (requests and tokens ahead of it over the
    measured drain rate); beyond it new ones are refused at once, likewise (null: no bound). Admitted
    latency is then about this wait plus the service time at a full batch of `max_num_seqs`."""
    max_prefill_share: float = 1.0
    """Share of a step's token budget prompt chunks may take while other requests decode or wait, so a long
    prompt cannot hold up short ones (1 = no cap; decodes always get into every step)."""
    long_prefill_token_threshold: int = 0
    """Most prompt tokens one request prefills per step (0 = no cap): below the prefill share, several
    prompts prefill side by side."""
    preempt_for_waiting: bool = True
    """An interactive request, or one of a tenant running fewer requests than another, may preempt a running
    batch request or one of that other tenant when no slot or KV is free."""
    tenant_weights: dict[str, float] = field(default_factory=dict)
    """Fair-sharing weight of named tenants (others: 1): under contention a tenant of weight 2 gets twice
    the tokens of one of weight 1."""
    version_policy: VersionPolicyConfig = field(default_factory=VersionPolicyConfig)
    """Which versions are served (default: the latest one)."""
    default_timeout_ms: float = 0.0
    """Deadline of requests that carry none (`x-inferd-timeout-ms`): a request still without its first
    token by then is aborted with 504 (0 = none)."""
    max_concurrent_requests: int = 0
    """Requests of this model in flight at once; beyond it requests are refused at once with 429 (0 = no
    cap)."""
    execution_timeout_s: float = 0.0
    """Longest one engine step may run: past it the engine counts as hung, its requests fail and the version
    is taken out of service like after a crash (0 = no limit)."""
    on_failure: FailurePolicy = "reload"
    """After a crash or hang of the engine loop: `reload` the model (at most `max_reloads` times) or
    `stay_down`."""
    max_reloads: int = 3
    """Reloads `on_failure: reload` attempts before the model stays down."""

    def __post_init__(self) -> None:
        limits = (
            self.default_timeout_ms,
            self.execution_timeout_s,
            self.max_concurrent_requests,
            self.max_reloads,
        )
        if min(limits) < 0:
            raise ValueError("timeouts, max_concurrent_requests and max_reloads must be >= 0")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("max_model_len must be >= 2")
        if self.max_num_seqs < 1 or self.block_size < 1:
            raise ValueError("max_num_seqs and block_size must be >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs")
        if self.kv_cache_memory <= 0:
            raise ValueError("kv_cache_memory must be > 0 (bytes, or a fraction in (0, 1])")
        self.engine_config()  # the engine's own checks (prefill share, queue bounds, weights)

    def engine_config(self, default_max_len: int = 4096) -> EngineConfig:
        """The engine's configuration (`max_model_len` is lowered to the model's at load)."""
        memory = self.kv_cache_memory
        return EngineConfig(
            SchedulerConfig(
                max_model_len=self.max_model_len or default_max_len,
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=self.max_num_batched_tokens,
                long_prefill_token_threshold=self.long_prefill_token_threshold,
                max_prefill_share=self.max_prefill_share,
                max_waiting_requests=self.max_waiting_requests,
                max_waiting_tokens=self.max_waiting_tokens,
                max_queue_wait_ms=self.max_queue_wait_ms,
                preempt_for_waiting=self.preempt_for_waiting,
                fairness=FairnessConfig(tenant_weights=dict(self.tenant_weights)),
            ),
            CacheConfig(
                block_size=self.block_size,
                memory_bytes=int(memory) if memory > 1 else None,
                memory_fraction=memory if memory <= 1 else 0.9,
                enable_prefix_caching=self.enable_prefix_caching,
            ),
        )


def generation_eos_ids(version_dir: Path) -> tuple[int, ...]:
    """EOS ids of `generation_config.json` (empty when absent)."""
    path = version_dir / "generation_config.json"
    if not path.is_file():
        return ()
    try:
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"invalid generation_config.json: {exc}") from None
    return tuple(int(t) for t in (eos if isinstance(eos, list) else [] if eos is None else [eos]))


def load_llm_version(
    name: str,
    version: str,
    sha256: str,
    version_dir: Path,
    config: LLMModelConfig,
    metrics: Metrics,
    compute: ComputeThread | None = None,
) -> LLMVersion:
    """Blocking: load weights, tokenizer and chat template, and start the engine thread (its loading and
    steps on `compute`, the process's torch thread, when given)."""
    import dataclasses

    from inferd.engine.async_engine import AsyncLLMEngine
    from inferd.engine.llm_engine import LLMEngine

    tokenizer = Tokenizer.load(version_dir)
    template = ChatTemplate.load(version_dir)
    dtype = None if config.dtype == "auto" else config.dtype
    extra_eos = generation_eos_ids(version_dir)
    if tokenizer.eos_token_id is not None:
        extra_eos += (tokenizer.eos_token_id,)
    built: list[LLMEngine] = []

    def build() -> LLMEngine:  # on the engine's thread: see AsyncLLMEngine
        engine = LLMEngine.load(version_dir, config.engine_config(), dtype=dtype)
        eos = engine.arch.eos_token_ids
        merged = eos + tuple(dict.fromkeys(t for t in extra_eos if t not in eos))
        if merged != eos:
            engine.arch = dataclasses.replace(engine.arch, eos_token_ids=merged)
        built.append(engine)
        return engine

    loop = AsyncLLMEngine(None, tokenizer, build=build, name=f"{name}-{version}", compute=compute)
    served = LLMVersion(
        name, version, sha256, tokenizer, template, built[0].config.scheduler.max_model_len, metrics,
        default_timeout_s=config.default_timeout_ms / 1000.0 or None,
        max_concurrent_requests=config.max_concurrent_requests,
        execution_timeout_s=config.execution_timeout_s,
        on_failure=config.on_failure,
        max_reloads=config.max_reloads,
    )  # fmt: skip
    loop.on_step = served.on_step
    served.attach(loop)
    return served


def load_llm_versions(
    name: str,
    versions: Sequence[tuple[str, str, Path]],
    config: LLMModelConfig,
    metrics: Metrics,
    compute: ComputeThread | None = None,
) -> dict[str, LLMVersion]:
    """Blocking: load every (version, sha256, folder) of a model, or none. When one fails, the versions
    already loaded are shut down (engine threads stopped and joined, so their weights and KV caches are
    freed, and their metrics forgotten) before the error propagates: a failed reload leaks no engine."""
    loaded: dict[str, LLMVersion] = {}
    try:
        for version, sha256, version_dir in versions:
            loaded[version] = load_llm_version(name, version, sha256, version_dir, config, metrics, compute)
    except BaseException:
        for version, served in loaded.items():
            served.engine.close()
            metrics.forget_version(name, version)
        raise
    return loaded
