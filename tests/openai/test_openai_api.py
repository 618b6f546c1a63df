"""The OpenAI API over a served tiny Llama, through the official `openai` client."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx
import openai
import pytest
import torch

from inferd.engine.sampler import Sampler, SamplerOutput, SamplingState
from tests.openai.conftest import MAX_MODEL_LEN, MODEL, WORDS, LLMFixture

PROMPT = "ka lo mi nu re ta"


@pytest.fixture
def client(llm: LLMFixture) -> openai.OpenAI:
    return openai.OpenAI(base_url=llm.base_url, api_key="unused", max_retries=0, timeout=30)


def expected(llm: LLMFixture, prompt: str, max_tokens: int) -> tuple[list[int], str]:
    ids = llm.tokenizer.encode(prompt).ids
    ids = [1, *ids]  # add_bos_token
    out = llm.tiny.greedy(ids, max_tokens)
    return out, llm.tokenizer.decode(out, skip_special_tokens=True)


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_completion_matches_transformers(llm: LLMFixture, client: openai.OpenAI) -> None:
    tokens, text = expected(llm, PROMPT, 12)
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0
    )
    assert raw.headers.get("x-request-id")
    result = raw.parse()
    assert result.choices[0].text == text
    assert result.usage is not None
    assert result.usage.prompt_tokens == 7
    assert result.usage.completion_tokens == len(tokens)
    assert result.usage.total_tokens == 7 + len(tokens)
    assert result.choices[0].finish_reason == ("stop" if tokens[-1] == 2 else "length")


def test_completion_token_ids_and_list_prompts(llm: LLMFixture, client: openai.OpenAI) -> None:
    ids = [1, *llm.tokenizer.encode("zo pe si").ids]
    want = llm.tokenizer.decode(llm.tiny.greedy(ids, 6))
    result = client.completions.create(model=MODEL, prompt=[ids, ids], max_tokens=6, temperature=0)
    assert [c.index for c in result.choices] == [0, 1]
    assert [c.text for c in result.choices] == [want, want]
    result = client.completions.create(model=MODEL, prompt=["zo pe si", PROMPT], max_tokens=6, temperature=0)
    assert result.choices[0].text == want


def test_completion_stream_with_usage(llm: LLMFixture, client: openai.OpenAI) -> None:
    tokens, text = expected(llm, PROMPT, 10)
    stream = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(tokens)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop" if tokens[-1] == 2 else "length"]


def test_chat_completion(llm: LLMFixture, client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "ka"}, {"role": "user", "content": "lo mi"}]
    # The chat template renders "<s><|system|> ka <|user|> lo mi <|assistant|>".
    ids = [1, 5, llm.tokenizer.token_to_id("ka"), 3, *llm.tokenizer.encode("lo mi").ids, 4]
    want = llm.tokenizer.decode(llm.tiny.greedy(ids, 8))
    result = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == want
    assert result.usage is not None and result.usage.prompt_tokens == len(ids)
    assert result.choices[0].logprobs is not None and result.choices[0].logprobs.content
    assert len(result.choices[0].logprobs.content[0].top_logprobs) == 2
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want


def test_stop_string_not_streamed_past(llm: LLMFixture, client: openai.OpenAI) -> None:
    _, text = expected(llm, PROMPT, 20)
    words = text.split()
    assert len(words) >= 4, text
    stop = " " + words[3]
    want = text[: text.index(stop)]
    result = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop], extra_body={"ignore_eos": True}
    )
    assert result.choices[0].text == want
    assert result.choices[0].finish_reason == "stop"
    stream = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=20,
        temperature=0,
        stop=[stop],
        stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces = [c.choices[0].text for c in stream]
    assert "".join(pieces) == want


def test_max_tokens_length(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=3, extra_body={"ignore_eos": True}, seed=1
    )
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 3


def test_unknown_model_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nope", prompt="ka")
    assert info.value.response.headers.get("x-request-id")


def test_prompt_longer_than_context_400(client: openai.OpenAI) -> None:
    prompt = " ".join(WORDS[i % len(WORDS)] for i in range(MAX_MODEL_LEN + 10))
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=4)
    message = str(info.value)
    assert str(MAX_MODEL_LEN) in message and str(MAX_MODEL_LEN + 11) in message


def test_bad_parameter_400_names_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="ka", temperature=-1)
    assert "temperature" in str(info.value)
    body = info.value.body
    assert isinstance(body, dict) and body.get("param") == "temperature"
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL, messages=[])


def test_disconnect_aborts(llm: LLMFixture) -> None:
    version = llm.server.server.manager.get_llm(MODEL)
    body = {
        "model": MODEL,
        "prompt": "ka",
        "max_tokens": MAX_MODEL_LEN - 8,
        "stream": True,
        "ignore_eos": True,
    }
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", f"{llm.base_url}/completions", json=body) as response,
    ):
        assert response.headers.get("x-request-id")
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
    deadline = time.monotonic() + 5
    while version.engine.num_open_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert version.engine.num_open_streams == 0
    assert version.engine.engine.scheduler.num_running == 0


def test_a_request_whose_sampling_fails_fails_alone(
    llm: LLMFixture, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose parameters make sampling raise gets a 500 naming the error; the requests sharing its
    steps go on unharmed and the model stays in service (fault injected into the sampler)."""
    real = Sampler.sample

    def sample(self: Sampler, logits: torch.Tensor, states: Sequence[SamplingState]) -> SamplerOutput:
        if any(s.params.top_k == 13 for s in states):
            raise RuntimeError("injected sampling fault")
        return real(self, logits, states)

    monkeypatch.setattr(Sampler, "sample", sample)
    long = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": 200,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    stream = client.completions.create(stream=True, **long)  # type: ignore[call-overload]
    chunks = iter(stream)
    text = next(chunks).choices[0].text  # it is running
    with pytest.raises(openai.InternalServerError) as info:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body={"top_k": 13})
    assert "sampling failed: RuntimeError: injected sampling fault" in str(info.value)
    finish = None
    for chunk in chunks:
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "length"
    assert text == client.completions.create(**long).choices[0].text  # as if it had run alone
    assert llm.server.server.manager.get_llm(MODEL).fault is None
