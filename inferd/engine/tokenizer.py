"""Text in and out of token ids: a `tokenizers` tokenizer, incremental detokenization and stop strings.

Torch-free and `transformers`-free: a model folder's `tokenizer.json` and `tokenizer_config.json` are all it
reads. The detokenizer turns a growing list of generated ids into text deltas, and holds back text that may
still turn into a stop string, so a stop string is never streamed past its match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers

from inferd.errors import ModelLoadError

REPLACEMENT_CHAR = "\ufffd"


def special_token_text(value: Any) -> str | None:
    """A special token of `tokenizer_config.json`: a string, or an AddedToken mapping with `content`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class Tokenizer:
    """A model's tokenizer: encode, decode, and its special tokens."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        add_bos_token: bool = False,
    ) -> None:
        self._tok = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos_token = add_bos_token
        self.bos_token_id = tokenizer.token_to_id(bos_token) if bos_token else None
        self.eos_token_id = tokenizer.token_to_id(eos_token) if eos_token else None

    @classmethod
    def load(cls, model_dir: Path) -> Tokenizer:
        """The tokenizer of a model folder (`tokenizer.json`, optional `tokenizer_config.json`)."""
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{model_dir.name}: no tokenizer.json")
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{model_dir.name}: invalid tokenizer.json: {exc}") from None
        config = load_tokenizer_config(model_dir)
        return cls(
            tok,
            bos_token=special_token_text(config.get("bos_token")),
            eos_token=special_token_text(config.get("eos_token")),
            add_bos_token=bool(config.get("add_bos_token", False)),
        )

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, the tokenizer's post-processor runs and the BOS
        token is prepended when `tokenizer_config.json` asks for it and the text does not start with it."""
        ids: list[int] = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if (
            add_special_tokens
            and self.add_bos_token
            and self.bos_token_id is not None
            and (not ids or ids[0] != self.bos_token_id)
        ):
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_text(self, token_id: int) -> str:
        """One token's text as OpenAI logprobs show it (the decoded token, or its vocabulary entry)."""
        text = self.decode([token_id], skip_special_tokens=False)
        if text and REPLACEMENT_CHAR not in text:
            return text
        return self._tok.id_to_token(token_id) or ""


def load_tokenizer_config(model_dir: Path) -> dict[str, Any]:
    """`tokenizer_config.json` as a mapping ({} when absent)."""
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir.name}: invalid tokenizer_config.json: {exc}") from None
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{model_dir.name}: tokenizer_config.json is not a JSON object")
    return doc


@dataclass(frozen=True, slots=True)
class TextDelta:
    """What a detokenizer step produced."""

    text: str
    """New text to stream (may be empty while text is held back)."""
    stop: str | None = None
    """The stop string matched (the text ends before it); the request must finish."""


class IncrementalDetokenizer:
    """Turns the generated ids of one request into text deltas, matching stop strings.

    Text that may be the start of a stop string, or that ends in an incomplete UTF-8 sequence, is held back
    until the next token settles it (or `flush` at the end). Decoding restarts from a few tokens back each
    step (vLLM's prefix/read offsets), so a step costs O(1) in the output length.
    """

    _CONTEXT = 6
    """Tokens decoded before the new ones, so merges and leading spaces come out as in the full text."""

    def __init__(
        self, tokenizer: Tokenizer, stop: Sequence[str] = (), *, skip_special_tokens: bool = True
    ) -> None:
        self._tok = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""
        """All text decoded so far (including held-back text)."""
        self._emitted = 0
        self.stopped: str | None = None

    def add(self, token_ids: Sequence[int]) -> TextDelta:
        """Take newly generated tokens; returns the text now safe to stream."""
        if self.stopped is not None:
            return TextDelta("", self.stopped)
        self._ids.extend(token_ids)
        self._decode(final=False)
        return self._release(final=False)

    def flush(self) -> TextDelta:
        """The request finished: release everything held back."""
        if self.stopped is None:
            self._decode(final=True)
        return self._release(final=True)

    def _decode(self, *, final: bool) -> None:
        decode, skip = self._tok.decode, self._skip
        prefix = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=skip)
        full = decode(self._ids[self._prefix_offset :], skip_special_tokens=skip)
        if len(full) > len(prefix) and (final or not full.endswith(REPLACEMENT_CHAR)):
            self.text += full[len(prefix) :]
            self._read_offset = len(self._ids)
            self._prefix_offset = max(0, self._read_offset - self._CONTEXT)

    def _release(self, *, final: bool) -> TextDelta:
        if self.stopped is not None:
            return TextDelta("", self.stopped)
        if self._stop:
            start = max(0, self._emitted - self._hold)
            hits = [(i, s) for s in self._stop if (i := self.text.find(s, start)) >= 0]
            if hits:
                index, stop = min(hits)
                self.text = self.text[:index]
                self.stopped = stop
                delta = self.text[self._emitted :]
                self._emitted = len(self.text)
                return TextDelta(delta, stop)
        end = len(self.text) if final else max(self._emitted, len(self.text) - self._hold)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return TextDelta(delta)
