"""`<repo>/<model>/config.yaml`: the per-model configuration, every field documented.

Unknown keys are rejected with their name. A model folder without `config.yaml` uses `ModelConfig()`'s
defaults, completed from the graph by the runtime (inputs, outputs, batching dimension).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inferd.configfile import load_yaml, parse

CONFIG_FILE = "config.yaml"
FailurePolicy = Literal["reload", "stay_down"]


@dataclass
class DynamicBatchingConfig:
    """How requests for one model version are gathered into batches."""

    max_queue_delay_ms: float = 0.0
    """Longest time the oldest queued request waits for others to join its batch."""
    preferred_batch_sizes: list[int] = field(default_factory=list)
    """Batch sizes (rows) to dispatch at as soon as they are reached, without waiting for the delay."""
    max_queue_size: int = 0
    """Requests that may wait in the queue; beyond it requests are refused at once (0 = unbounded)."""
    default_timeout_ms: float = 0.0
    """Timeout for requests that carry none; an expired request fails before it runs (0 = none)."""
    priority_levels: int = 1
    """Number of priority levels; level 1 is served first."""
    default_priority_level: int = 0
    """Level of requests that name none (0 = the middle level, rounded up)."""

    def __post_init__(self) -> None:
        if self.max_queue_delay_ms < 0:
            raise ValueError("max_queue_delay_ms must be >= 0")
        if any(s <= 0 for s in self.preferred_batch_sizes):
            raise ValueError("preferred_batch_sizes must be positive")
        if self.max_queue_size < 0 or self.priority_levels < 1:
            raise ValueError("max_queue_size must be >= 0 and priority_levels >= 1")
        if not 0 <= self.default_priority_level <= self.priority_levels:
            raise ValueError("default_priority_level must be within 0..priority_levels")


@dataclass
class VersionPolicyConfig:
    """Which versions of a model are served. Give exactly one of the three."""

    latest: int | None = None
    """Serve the N highest-numbered versions."""
    all: bool | None = None
    """Serve every version."""
    specific: list[int] | None = None
    """Serve exactly these versions."""

    def __post_init__(self) -> None:
        given = [k for k in ("latest", "all", "specific") if getattr(self, k) not in (None, False)]
        if len(given) > 1:
            raise ValueError(f"version_policy takes one of latest, all, specific; got {', '.join(given)}")
        if self.latest is not None and self.latest < 1:
            raise ValueError("version_policy.latest must be >= 1")

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve out of those present."""
        ordered = sorted(versions)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1) :]


@dataclass
class TensorConfig:
    """A declared input or output; checked against the graph at load."""

    name: str
    datatype: str
    """V2 datatype name (FP32, INT64, BYTES, ...)."""
    dims: list[int]
    """Shape without the batch dimension; -1 for a variable dimension."""


@dataclass
class WarmupConfig:
    """Requests run once at load, before the version is reported ready."""

    batch_sizes: list[int] = field(default_factory=lambda: [1])
    """Batch sizes to run (ignored when the model has no batching dimension)."""
    data: Literal["zero", "random"] = "zero"
    """Input contents."""


@dataclass
class ModelConfig:
    """The configuration of one model (all its versions)."""

    runtime: Literal["onnx", "embedding"] = "onnx"
    """Which runtime serves the model: `onnx` (`<version>/model.onnx`) or `embedding` (a sentence-transformers
    folder as `<version>/`: input `text` BYTES, outputs `embedding` FP32 and `num_tokens` INT64). LLMs use
    `runtime: llm` with their own keys (inferd/runtimes/llm.py)."""
    max_batch_size: int | None = None
    """Largest batch in rows; 0 = the model has no batching dimension. Unset: derived from the graph."""
    dynamic_batching: DynamicBatchingConfig | None = None
    """Enables the dynamic batcher; absent, each request runs on its own."""
    instances: int = 1
    """Batches of this model that may run at the same time."""
    intra_op_threads: int = 0
    """ONNX Runtime threads inside one operator (0 = runtime default)."""
    inter_op_threads: int = 0
    """ONNX Runtime threads across operators (0 = runtime default)."""
    execution_provider: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` uses CUDA when ONNX Runtime has it, else the CPU."""
    version_policy: VersionPolicyConfig = field(default_factory=VersionPolicyConfig)
    """Which versions are served (default: the latest one)."""
    inputs: list[TensorConfig] | None = None
    """Declared inputs; when absent they are read from the graph."""
    outputs: list[TensorConfig] | None = None
    """Declared outputs; when absent they are read from the graph."""
    warmup: WarmupConfig | None = None
    """Warm-up requests run at load."""
    max_concurrent_requests: int = 0
    """Requests of this model (all versions) in flight at once, queued or running; beyond it requests are
    refused at once with 429 / RESOURCE_EXHAUSTED (0 = no cap)."""
    execution_timeout_s: float = 0.0
    """Longest one batch may run; a batch past it fails its requests, and the version is taken out of
    service (unready, with the reason) and handled by `on_failure` (0 = no timeout)."""
    on_failure: FailurePolicy = "reload"
    """What follows a version's fault (execution timeout, out of memory): `reload` the model (at most
    `max_reloads` times) or `stay_down` until an explicit load."""
    max_reloads: int = 3
    """Reloads `on_failure: reload` attempts before the model stays down (counted since the last explicit
    load)."""

    def __post_init__(self) -> None:
        if self.max_batch_size is not None and self.max_batch_size < 0:
            raise ValueError("max_batch_size must be >= 0")
        if self.max_concurrent_requests < 0 or self.max_reloads < 0:
            raise ValueError("max_concurrent_requests and max_reloads must be >= 0")
        if self.execution_timeout_s < 0:
            raise ValueError("execution_timeout_s must be >= 0")
        if self.instances < 1:
            raise ValueError("instances must be >= 1")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0")


def configured_runtime(model_dir: Path) -> str:
    """The `runtime` key of the model's `config.yaml` (`onnx` when absent), read before the whole file is
    parsed by that runtime's config class."""
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return "onnx"
    return str(load_yaml(path).get("runtime", "onnx"))


def load_model_config(model_dir: Path) -> ModelConfig:
    """The model's config from `config.yaml`, or the defaults when the file is absent."""
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return ModelConfig()
    return parse(ModelConfig, load_yaml(path), f"{model_dir.name}/{CONFIG_FILE}")
