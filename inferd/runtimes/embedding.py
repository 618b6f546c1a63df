"""The embedding runtime: a sentence-transformers folder served as a tensor model.

Signature: input `text` BYTES [-1] (one UTF-8 string per row), output `embedding` FP32 [-1, dim]; batched by
the dynamic batcher like any tensor model. The pipeline follows the folder's sentence-transformers config:

- `modules.json`: a Transformer module (BERT encoder), a Pooling module, an optional Normalize module; any
  other module (Dense, ...) is refused at load rather than silently skipped.
- `sentence_bert_config.json`: `max_seq_length` (truncation) and `do_lower_case`.
- `<pooling>/config.json`: `pooling_mode_{cls_token,max_tokens,mean_tokens,mean_sqrt_len_tokens}`; several
  modes are concatenated in sentence-transformers' order.

Tokenisation uses `tokenizer.json` with `tokenizers`; texts are stripped as sentence-transformers does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from inferd import datatypes
from inferd.engine.compute_thread import ComputeThread
from inferd.engine.model.bert import BertEncoder, load_bert
from inferd.errors import InvalidInput, ModelLoadError
from inferd.repository.model_config import ModelConfig
from inferd.runtimes.base import ModelSignature
from inferd.runtimes.embedding_io import INPUT, OUTPUT, PLATFORM, TOKENS
from inferd.tensors import Array, TensorSpec

DEFAULT_MAX_BATCH_SIZE = 64
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")
"""Pooling modes we implement, in the order sentence-transformers concatenates them."""
_MODE_NAMES = {"cls": "cls_token", "max": "max_tokens", "mean": "mean_tokens", **{m: m for m in _MODES}}


@dataclass(frozen=True)
class EmbeddingPipeline:
    """What a sentence-transformers folder asks for around its encoder."""

    encoder_dir: Path
    """Folder of the Transformer module (config.json, weights, tokenizer.json)."""
    pooling_modes: tuple[str, ...]
    """Enabled pooling modes, a subset of `_MODES` in that order."""
    normalize: bool
    """L2-normalise the pooled vector."""
    max_seq_length: int
    """Tokens kept per text (special tokens included)."""
    do_lower_case: bool = False
    """Lower-case texts before tokenising."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None


def read_pipeline(folder: Path, max_position_embeddings: int | None = None) -> EmbeddingPipeline:
    """The pipeline of a sentence-transformers folder; ModelLoadError for anything we cannot reproduce."""
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        raise ModelLoadError(f"{folder}/modules.json is not a list of modules")
    transformer: Path | None = None
    pooling: Path | None = None
    normalize = False
    for module in modules:
        kind, path = module.get("type"), folder / module.get("path", "")
        if kind == _TRANSFORMER and transformer is None and pooling is None:
            transformer = path
        elif kind == _POOLING and transformer is not None and pooling is None:
            pooling = path
        elif kind == _NORMALIZE and pooling is not None and not normalize:
            normalize = True
        else:
            raise ModelLoadError(f"{folder}/modules.json: module {kind!r} at this place is not supported")
    if transformer is None or pooling is None:
        raise ModelLoadError(f"{folder}/modules.json needs a Transformer and a Pooling module")
    pool_config = _read_json(pooling / "config.json")
    named = pool_config.get("pooling_mode")
    if isinstance(named, str):  # newer sentence-transformers name one mode
        pool_config[f"pooling_mode_{_MODE_NAMES.get(named, named)}"] = True
    unsupported = [
        k
        for k, v in pool_config.items()
        if k.startswith("pooling_mode_") and v and k.removeprefix("pooling_mode_") not in _MODES
    ]
    if unsupported:
        raise ModelLoadError(f"{pooling}/config.json: {', '.join(unsupported)} not supported")
    modes = tuple(m for m in _MODES if pool_config.get(f"pooling_mode_{m}"))
    if not modes:
        raise ModelLoadError(f"{pooling}/config.json enables no pooling mode")
    st_config_path = transformer / "sentence_bert_config.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    limit = max_position_embeddings or 512
    max_seq = int(st_config.get("max_seq_length") or limit)
    return EmbeddingPipeline(
        encoder_dir=transformer,
        pooling_modes=modes,
        normalize=normalize,
        max_seq_length=min(max_seq, limit),
        do_lower_case=bool(st_config.get("do_lower_case", False)),
    )


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """Pool token states into one vector per text, the modes concatenated in order.

    hidden [B, S, H], mask [B, S] (1 = real token) -> [B, H * len(modes)]
    """
    m = mask.to(hidden.dtype)[:, :, None]  # [B, S, 1]
    counts = m.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    parts: list[torch.Tensor] = []
    for mode in modes:
        if mode == "cls_token":
            parts.append(hidden[:, 0])
        elif mode == "max_tokens":
            parts.append(hidden.masked_fill(m == 0, -1e9).max(dim=1).values)
        elif mode == "mean_tokens":
            parts.append((hidden * m).sum(dim=1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            parts.append((hidden * m).sum(dim=1) / counts.sqrt())
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(parts, dim=-1)


class EmbeddingRuntime:
    """One sentence-transformers model; `execute` is safe to call from several threads."""

    def __init__(
        self,
        encoder: BertEncoder,
        tokenizer: Tokenizer,
        pipeline: EmbeddingPipeline,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        device: torch.device | str = "cpu",
        compute: ComputeThread | None = None,
    ) -> None:
        self._encoder = encoder
        self._compute = compute
        """Where the encoder runs (the process's torch thread); the calling thread when None."""
        self._tokenizer = tokenizer
        self.pipeline = pipeline
        self._device = torch.device(device)
        dim = encoder.config.hidden_size * len(pipeline.pooling_modes)
        self.dim = dim
        batched = max_batch_size > 0
        self._signature = ModelSignature(
            platform=PLATFORM,
            inputs=(TensorSpec(INPUT, datatypes.BY_NAME["BYTES"], () if batched else (-1,)),),
            outputs=(
                TensorSpec(OUTPUT, datatypes.BY_NAME["FP32"], (dim,) if batched else (-1, dim)),
                TensorSpec(TOKENS, datatypes.BY_NAME["INT64"], (1,) if batched else (-1, 1)),
            ),
            max_batch_size=max_batch_size,
            text_bytes=True,
            tokens_per_row=pipeline.max_seq_length,
        )

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        device: torch.device | str = "cpu",
        allow_pickle: bool = False,
        compute: ComputeThread | None = None,
    ) -> EmbeddingRuntime:
        """Load a sentence-transformers folder (the demo and tests use this directly)."""
        folder = Path(folder)
        first = read_pipeline(folder)
        encoder = load_bert(first.encoder_dir, device=device, allow_pickle=allow_pickle)
        pipeline = read_pipeline(folder, encoder.config.max_position_embeddings)
        tokenizer_path = pipeline.encoder_dir / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise ModelLoadError(f"no tokenizer.json in {pipeline.encoder_dir}")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises its own exception type
            raise ModelLoadError(f"cannot load {tokenizer_path}: {exc}") from None
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=pipeline.max_seq_length)
        pad_id = encoder.config.pad_token_id
        pad_token = tokenizer.id_to_token(pad_id) or "[PAD]"
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        return cls(
            encoder, tokenizer, pipeline, max_batch_size=max_batch_size, device=device, compute=compute
        )

    @classmethod
    def load(
        cls, version_dir: Path, config: ModelConfig, compute: ComputeThread | None = None
    ) -> EmbeddingRuntime:
        """The repository loader: `version_dir` is a sentence-transformers folder; the encoder runs on
        `compute` when given."""
        max_batch = DEFAULT_MAX_BATCH_SIZE if config.max_batch_size is None else config.max_batch_size
        device = "cuda" if config.execution_provider == "cuda" else "cpu"
        if config.execution_provider == "auto" and torch.cuda.is_available():
            device = "cuda"
        return cls.from_folder(version_dir, max_batch_size=max_batch, device=device, compute=compute)

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def embed(self, texts: Sequence[str]) -> Array:
        """FP32 embeddings [len(texts), dim]."""
        return self.embed_with_counts(texts)[0]

    def embed_with_counts(self, texts: Sequence[str]) -> tuple[Array, Array]:
        """FP32 embeddings [len(texts), dim] and INT64 token counts [len(texts), 1]."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), np.zeros((0, 1), dtype=np.int64)
        prepared = [t.strip() for t in texts]
        if self.pipeline.do_lower_case:
            prepared = [t.lower() for t in prepared]
        encodings = self._tokenizer.encode_batch(prepared)
        if self._compute is None:
            return self._encode(encodings)
        return self._compute.call(lambda: self._encode(encodings), owner=self)

    def abandon_hung_call(self) -> None:
        if self._compute is not None:
            self._compute.abandon(self)

    def _encode(self, encodings: Sequence[Any]) -> tuple[Array, Array]:
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long, device=self._device)  # [B, S]
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long, device=self._device)
        types = torch.tensor([e.type_ids for e in encodings], dtype=torch.long, device=self._device)
        with torch.inference_mode():
            hidden = self._encoder(ids, mask, types)  # [B, S, H]
            pooled = pool(hidden, mask, self.pipeline.pooling_modes)  # [B, dim]
            if self.pipeline.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        out: Array = pooled.to(torch.float32).cpu().numpy()
        counts: Array = mask.sum(dim=1, keepdim=True).cpu().numpy().astype(np.int64)
        return out, counts

    def execute(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        array = inputs[INPUT]
        texts = [_to_text(item, i) for i, item in enumerate(array.reshape(-1).tolist())]
        embeddings, counts = self.embed_with_counts(texts)
        produced = {OUTPUT: embeddings, TOKENS: counts}
        return {name: produced[name] for name in outputs}

    def unload(self) -> None:
        del self._encoder


def _to_text(item: object, index: int) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"input {INPUT!r}: element {index} is not UTF-8 text") from None
    return str(item)
