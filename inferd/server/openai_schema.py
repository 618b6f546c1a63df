"""Parsing and validating OpenAI API request bodies into typed values; a bad field is a 400 naming it.

Fields the server does not know are ignored (clients and benchmark tools send extensions); known fields of
the wrong type or out of range are refused with `InvalidParam`, whose `param` names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from inferd.engine.sampling_params import SamplingParams
from inferd.errors import InvalidInput

MAX_STOP_STRINGS = 16
MAX_N = 128
"""Most choices per prompt (OpenAI's limit): each is a sequence the engine schedules."""
MAX_CHOICES = 2048
"""Most sequences one completions request may ask for (prompts times `n`)."""


class InvalidParam(InvalidInput):
    """A request field is missing, of the wrong type or out of range."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}" if not message.startswith(param) else message)
        self.param = param


@dataclass(frozen=True)
class OpenAIRequest:
    """A completions or chat-completions request, parsed."""

    model: str
    sampling: SamplingParams
    prompts: tuple[str | tuple[int, ...], ...] = ()
    """Completions: one entry per prompt (choices `i * n .. i * n + n - 1` belong to prompt `i`)."""
    messages: tuple[Mapping[str, Any], ...] | None = None
    """Chat: the conversation."""
    stream: bool = False
    include_usage: bool = False
    """Streaming: send a last chunk with the usage (`stream_options.include_usage`)."""
    add_generation_prompt: bool = True
    skip_special_tokens: bool = True
    user: str | None = None
    """The end user (OpenAI's field); the call's workflow when no `x-inferd-workflow` header is sent."""


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object")
    return doc


class _Fields:
    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc = doc

    def _get(self, name: str, kinds: tuple[type, ...], what: str, default: Any) -> Any:
        value = self.doc.get(name)
        if value is None:
            return default
        if isinstance(value, bool) and bool not in kinds:
            raise InvalidParam(name, f"expected {what}, got {value!r}")
        if not isinstance(value, kinds):
            raise InvalidParam(name, f"expected {what}, got {type(value).__name__}")
        return value

    def string(self, name: str, default: str | None = None) -> str | None:
        return self._get(name, (str,), "a string", default)  # type: ignore[no-any-return]

    def integer(self, name: str, default: int | None = None) -> int | None:
        return self._get(name, (int,), "an integer", default)  # type: ignore[no-any-return]

    def number(self, name: str, default: float) -> float:
        return float(self._get(name, (int, float), "a number", default))

    def boolean(self, name: str, default: bool) -> bool:
        return bool(self._get(name, (bool,), "true or false", default))


def _stop(fields: _Fields) -> tuple[str, ...]:
    value = fields.doc.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > MAX_STOP_STRINGS:
            raise InvalidParam("stop", f"at most {MAX_STOP_STRINGS} stop strings")
        return tuple(value)
    raise InvalidParam("stop", "expected a string or a list of strings")


def _token_ids(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise InvalidParam(name, "expected a list of token ids")
    return tuple(value)


def _sampling(
    fields: _Fields, *, max_tokens: int | None, logprobs: bool, top_logprobs: int
) -> SamplingParams:
    n = fields.integer("n", 1) or 1
    if not 1 <= n <= MAX_N:
        raise InvalidParam("n", f"must be in [1, {MAX_N}], got {n}")
    try:
        return SamplingParams(
            n=n,
            temperature=fields.number("temperature", 1.0),
            top_p=fields.number("top_p", 1.0),
            top_k=max(0, fields.integer("top_k", 0) or 0),
            min_p=fields.number("min_p", 0.0),
            seed=fields.integer("seed"),
            presence_penalty=fields.number("presence_penalty", 0.0),
            frequency_penalty=fields.number("frequency_penalty", 0.0),
            repetition_penalty=fields.number("repetition_penalty", 1.0),
            max_tokens=max_tokens,
            min_tokens=fields.integer("min_tokens", 0) or 0,
            stop=_stop(fields),
            stop_token_ids=_token_ids("stop_token_ids", fields.doc.get("stop_token_ids") or []),
            ignore_eos=fields.boolean("ignore_eos", False),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )
    except InvalidParam:
        raise
    except InvalidInput as exc:
        raise InvalidParam(exc.message.split(" ", 1)[0], exc.message) from None


def _common(fields: _Fields) -> tuple[str, bool, bool]:
    model = fields.string("model")
    if not model:
        raise InvalidParam("model", "is required")
    stream = fields.boolean("stream", False)
    options = fields.doc.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidParam("stream_options", "expected an object")
    if options and not stream:
        raise InvalidParam("stream_options", "is only allowed when stream is true")
    include_usage = bool(_Fields(options or {}).boolean("include_usage", False))
    for unsupported in ("logit_bias", "suffix", "tools", "functions"):
        if fields.doc.get(unsupported):
            raise InvalidParam(unsupported, "is not supported by this server")
    return model, stream, include_usage


def parse_completion(doc: Mapping[str, Any]) -> OpenAIRequest:
    """POST /v1/completions."""
    fields = _Fields(doc)
    model, stream, include_usage = _common(fields)
    prompt = doc.get("prompt")
    prompts: tuple[str | tuple[int, ...], ...]
    if isinstance(prompt, str):
        prompts = (prompt,)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = tuple(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        prompts = (_token_ids("prompt", prompt),)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        prompts = tuple(_token_ids("prompt", p) for p in prompt)
    else:
        raise InvalidParam("prompt", "expected a string, a list of strings, or token ids")
    if fields.boolean("echo", False):
        raise InvalidParam("echo", "is not supported by this server")
    best_of = fields.integer("best_of")
    if best_of is not None and best_of != (fields.integer("n", 1) or 1):
        raise InvalidParam("best_of", "must equal n (best_of sampling is not supported)")
    top = fields.integer("logprobs")
    if top is not None and not 0 <= top <= 20:
        raise InvalidParam("logprobs", "must be in [0, 20]")
    sampling = _sampling(
        fields,
        max_tokens=fields.integer("max_tokens", 16),
        logprobs=top is not None,
        top_logprobs=top or 0,
    )
    if len(prompts) * sampling.n > MAX_CHOICES:
        raise InvalidParam(
            "prompt", f"{len(prompts)} prompts times n={sampling.n} is over {MAX_CHOICES} choices"
        )
    return OpenAIRequest(
        model,
        sampling,
        prompts=prompts,
        stream=stream,
        include_usage=include_usage,
        skip_special_tokens=fields.boolean("skip_special_tokens", True),
        user=fields.string("user"),
    )


def _message(i: int, value: Any) -> Mapping[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(value, dict):
        raise InvalidParam(where, "expected an object")
    role = value.get("role")
    if not isinstance(role, str):
        raise InvalidParam(f"{where}.role", "expected a string")
    content = value.get("content")
    if isinstance(content, list):  # content parts: only text parts are understood
        texts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise InvalidParam(f"{where}.content[{j}]", "only text content parts are supported")
            texts.append(part["text"])
        content = "".join(texts)
    elif content is not None and not isinstance(content, str):
        raise InvalidParam(f"{where}.content", "expected a string or a list of content parts")
    return {**value, "content": content or ""}


def parse_chat(doc: Mapping[str, Any]) -> OpenAIRequest:
    """POST /v1/chat/completions."""
    fields = _Fields(doc)
    model, stream, include_usage = _common(fields)
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidParam("messages", "expected a non-empty list of messages")
    parsed = tuple(_message(i, m) for i, m in enumerate(messages))
    logprobs = fields.boolean("logprobs", False)
    top = fields.integer("top_logprobs", 0) or 0
    if not 0 <= top <= 20:
        raise InvalidParam("top_logprobs", "must be in [0, 20]")
    if top and not logprobs:
        raise InvalidParam("top_logprobs", "needs logprobs to be true")
    max_tokens = fields.integer("max_completion_tokens")
    if max_tokens is None:
        max_tokens = fields.integer("max_tokens")
    sampling = _sampling(fields, max_tokens=max_tokens, logprobs=logprobs, top_logprobs=top)
    return OpenAIRequest(
        model,
        sampling,
        messages=parsed,
        stream=stream,
        include_usage=include_usage,
        add_generation_prompt=fields.boolean("add_generation_prompt", True),
        skip_special_tokens=fields.boolean("skip_special_tokens", True),
        user=fields.string("user"),
    )


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A `/v1/embeddings` request, parsed."""

    model: str
    texts: tuple[str, ...]
    encoding_format: str = "float"
    """`float` (a list of numbers) or `base64` (little-endian float32 bytes)."""
    user: str | None = None


MAX_EMBEDDING_INPUTS = 2048


def parse_embeddings(doc: Mapping[str, Any]) -> EmbeddingsRequest:
    fields = _Fields(doc)
    model = fields.string("model")
    if not model:
        raise InvalidParam("model", "model is required")
    value = doc.get("input")
    if isinstance(value, str):
        texts: tuple[str, ...] = (value,)
    elif isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        texts = tuple(value)
    elif isinstance(value, list) and value and all(isinstance(t, (int, list)) for t in value):
        raise InvalidParam("input", "token-id inputs are not supported by embedding models; send text")
    else:
        raise InvalidParam("input", "expected a non-empty string or list of strings")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise InvalidParam("input", f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(texts)}")
    encoding = fields.string("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidParam("encoding_format", f"expected 'float' or 'base64', got {encoding!r}")
    if doc.get("dimensions") is not None:
        raise InvalidParam("dimensions", "this model's embeddings have a fixed size; omit dimensions")
    return EmbeddingsRequest(model, texts, str(encoding), fields.string("user"))
