"""The model runner: executes the scheduler's plan for one step on the model and samples tokens.

It owns the model, the KV cache tensors and the per-request state the runner contract describes (see
`inferd/engine/outputs.py`): each request's block table and sampling state, keyed by request id. A step
flattens every scheduled token into one batch (decodes first, then prefill chunks), builds the slot mapping
and attention metadata once on the host, runs the model once, and samples the requests whose step reaches
their last token. The only host sync of a step is reading back the sampled tokens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from inferd.engine.config import EngineConfig, kv_bytes_per_block
from inferd.engine.model.attention import AttentionMetadata, GatherWorkspace, PrefillSpan, additive_mask
from inferd.engine.model.config import ModelArchConfig, load_arch_config
from inferd.engine.model.host_memory import keep_freed_memory
from inferd.engine.model.loader import load_model, torch_dtype
from inferd.engine.model.rope import RotaryEmbedding
from inferd.engine.model.transformer import DecoderModel, KVCache
from inferd.engine.outputs import (
    NewRequestData,
    RunnerOutput,
    SampleLogprobs,
    ScheduledRequest,
    SchedulerOutput,
)
from inferd.engine.sampler import Sampler, SamplingState
from inferd.errors import InternalError

logger = logging.getLogger(__name__)


@dataclass
class _RequestState:
    block_ids: list[int]
    sampling: SamplingState


def free_memory_bytes(device: torch.device) -> int:
    """Device memory free now (host RAM available for the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class ModelRunner:
    """Runs steps of one model; see the module docstring."""

    def __init__(
        self,
        model: DecoderModel,
        config: EngineConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | None = None,
    ) -> None:
        self.model = model
        self.arch: ModelArchConfig = model.config
        self.config = config
        self.device = torch.device(device)
        self.dtype = model.embed_tokens.weight.dtype
        self.block_size = config.cache.block_size
        self.max_model_len = config.scheduler.max_model_len
        if self.device.type == "cpu":
            keep_freed_memory()
            packed = model.prepack(config.scheduler.max_num_seqs)  # before measuring the free memory
            logger.info("prepacked %d weight matrices for oneDNN", packed)
        self.num_blocks = self._resolve_num_blocks()
        arch = self.arch
        shape = (arch.num_layers, 2, self.num_blocks, self.block_size, arch.num_kv_heads, arch.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        """Keys and values of every layer; zero-filled so padded positions are finite under the mask."""
        self.kv_caches: list[KVCache] = [(layer[0], layer[1]) for layer in self.kv_cache]
        self.rotary = RotaryEmbedding(
            arch.head_dim, self.max_model_len, arch.rope_theta, arch.rope_scaling, self.device
        )
        self.sampler = Sampler(arch.vocab_size, self.device, seed)
        self.workspace = GatherWorkspace()
        self._requests: dict[str, _RequestState] = {}
        logger.info(
            "KV cache: %d blocks x %d tokens (%.1f MiB, %s) on %s",
            self.num_blocks,
            self.block_size,
            self.kv_cache.numel() * self.kv_cache.element_size() / 2**20,
            self.dtype,
            self.device,
        )

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        config: EngineConfig,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        seed: int | None = None,
    ) -> ModelRunner:
        """A runner for the model folder `model_dir` (weights in `dtype`, default the config's)."""
        arch = load_arch_config(model_dir)
        if isinstance(dtype, str):
            dtype = torch_dtype(dtype)
        model = load_model(model_dir, device=device, dtype=dtype, config=arch)
        return cls(model, config, device=device, seed=seed)

    def _resolve_num_blocks(self) -> int:
        cache = self.config.cache
        arch = self.arch
        per_block = kv_bytes_per_block(
            num_layers=arch.num_layers,
            num_kv_heads=arch.num_kv_heads,
            head_dim=arch.head_dim,
            dtype_bytes=torch.empty((), dtype=self.dtype).element_size(),
            block_size=cache.block_size,
        )
        free = None if cache.num_blocks or cache.memory_bytes else free_memory_bytes(self.device)
        blocks = cache.resolve_num_blocks(per_block, free)
        if cache.num_blocks is None and self.device.type == "cpu":
            # Host RAM is shared with everything else: never take more than full-length sequences need.
            per_seq = -(-self.max_model_len // cache.block_size)
            blocks = min(blocks, self.config.scheduler.max_num_seqs * per_seq)
        return blocks

    # ---- the step

    @property
    def num_requests(self) -> int:
        """Requests the runner holds state for."""
        return len(self._requests)

    def execute(self, scheduler_output: SchedulerOutput) -> RunnerOutput:
        """Run one step; returns a token for every scheduled request with `sample` set."""
        self._update_states(scheduler_output)
        if scheduler_output.is_empty:
            return RunnerOutput({})
        scheduled = sorted(scheduler_output.scheduled, key=lambda r: len(r.token_ids) > 1)  # decodes first
        batch = self._prepare(scheduled)
        with torch.inference_mode():
            logits = self.model(
                batch.input_ids, batch.cos, batch.sin, self.kv_caches, batch.meta, batch.logits_indices
            )
            states = [self._requests[rid].sampling for rid in batch.sample_ids]
            try:
                rows = list(zip(batch.sample_ids, self.sampler.sample(logits, states).rows(), strict=True))
                failed: dict[str, str] = {}
            except Exception:
                rows, failed = self._sample_apart(logits, batch.sample_ids)
        sampled: dict[str, int] = {}
        logprobs: dict[str, SampleLogprobs] = {}
        for rid, (token, lp) in rows:
            self._requests[rid].sampling.append(token)
            sampled[rid] = token
            if lp is not None:
                logprobs[rid] = lp
        return RunnerOutput(sampled, logprobs, failed)

    def _sample_apart(
        self, logits: torch.Tensor, sample_ids: list[str]
    ) -> tuple[list[tuple[str, tuple[int, SampleLogprobs | None]]], dict[str, str]]:
        """Sampling the step's rows together raised: sample each alone, so the requests whose parameters
        make it fail fail alone, and the others (of every tenant) go on. Sampling touches no KV, so a
        failed row leaves nothing to repair; were the sampler broken for everyone, every request would
        fail this way, each with the error."""
        rows: list[tuple[str, tuple[int, SampleLogprobs | None]]] = []
        failed: dict[str, str] = {}
        for i, rid in enumerate(sample_ids):
            try:
                out = self.sampler.sample(logits[i : i + 1], [self._requests[rid].sampling])
            except Exception as exc:
                logger.exception("request %s: sampling failed", rid)
                failed[rid] = f"sampling failed: {type(exc).__name__}: {exc}"
                continue
            rows.append((rid, out.rows()[0]))
        return rows, failed

    def _update_states(self, out: SchedulerOutput) -> None:
        for rid in out.preempted_request_ids | out.finished_request_ids:
            self._requests.pop(rid, None)
        for new in out.new_requests:
            self._requests[new.request_id] = self._new_state(new)
        for cached in out.cached_requests:
            state = self._requests.get(cached.request_id)
            if state is None:
                raise InternalError(f"runner has no state for continuing request {cached.request_id}")
            state.block_ids.extend(cached.new_block_ids)

    def _new_state(self, new: NewRequestData) -> _RequestState:
        sampling = self.sampler.new_state(new.sampling_params, new.prompt_token_ids, new.output_token_ids)
        return _RequestState(list(new.block_ids), sampling)

    def _prepare(self, scheduled: list[ScheduledRequest]) -> _Batch:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_indices: list[int] = []
        sample_ids: list[str] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        prefills: list[PrefillSpan] = []
        for request in scheduled:
            table = self._requests[request.request_id].block_ids
            start, n = request.num_computed_tokens, len(request.token_ids)
            end = start + n
            offset = len(input_ids)
            input_ids.extend(request.token_ids)
            positions.extend(range(start, end))
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if n == 1:
                decode_tables.append(table[: -(-end // bs)])
                decode_lens.append(end)
            else:
                prefills.append(self._prefill_span(offset, start, n, table))
            if request.sample:
                logits_indices.append(offset + n - 1)
                sample_ids.append(request.request_id)
        device = self.device
        positions_t = torch.tensor(positions, dtype=torch.int64, device=device)
        cos, sin = self.rotary.lookup(positions_t, self.dtype)
        decode_table, decode_mask = self._decode_tables(decode_tables, decode_lens)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
            num_decodes=len(decode_lens),
            decode_block_table=decode_table,
            decode_mask=decode_mask,
            prefills=tuple(prefills),
            workspace=self.workspace,
        )
        return _Batch(
            input_ids=torch.tensor(input_ids, dtype=torch.int64, device=device),
            cos=cos,
            sin=sin,
            meta=meta,
            logits_indices=torch.tensor(logits_indices, dtype=torch.int64, device=device),
            sample_ids=sample_ids,
        )

    def _decode_tables(
        self, tables: list[list[int]], lengths: list[int]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Block table [n, width] and additive mask [n, 1, 1, width * block_size] of the decodes."""
        if not tables:
            return None, None
        width = max(len(t) for t in tables)
        padded = [[*t, *([0] * (width - len(t)))] for t in tables]
        table = torch.tensor(padded, dtype=torch.int64, device=self.device)  # [n, width]
        lens = torch.tensor(lengths, dtype=torch.int64, device=self.device)
        keys = torch.arange(width * self.block_size, device=self.device)
        allowed = (keys.unsqueeze(0) < lens.unsqueeze(1)).view(len(tables), 1, 1, -1)  # [n, 1, 1, L]
        return table, additive_mask(allowed, self.dtype)

    def _prefill_span(self, offset: int, start: int, n: int, table: list[int]) -> PrefillSpan:
        if start == 0:
            return PrefillSpan(offset, n, n, None, None)
        end = start + n
        blocks = torch.tensor(table[: -(-end // self.block_size)], dtype=torch.int64, device=self.device)
        keys = torch.arange(end, device=self.device).unsqueeze(0)  # [1, end]
        queries = torch.arange(start, end, device=self.device).unsqueeze(1)  # [n, 1]
        return PrefillSpan(offset, n, end, blocks, additive_mask(keys <= queries, self.dtype))


@dataclass(frozen=True)
class _Batch:
    """Device inputs of one step."""

    input_ids: torch.Tensor
    """[T] token ids."""
    cos: torch.Tensor
    """[T, 1, head_dim] rotary tables at each token's position."""
    sin: torch.Tensor
    meta: AttentionMetadata
    logits_indices: torch.Tensor
    """[S] indices of the tokens to sample from."""
    sample_ids: list[str]
    """Request ids of those rows, in order."""
