"""The OpenAI load generator: SSE parsing, prompt construction, and a short run against a tiny served LLM."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from inferd.cli.main import main
from inferd.config import ServerConfig
from inferd.loadgen.openai import (
    OpenAIBenchOptions,
    RequestOutcome,
    SSEParser,
    build_prompts,
    run_openai,
)
from tests.conftest import RunningServer, start_server

VOCAB = 256


def test_sse_parser_splits_events_across_chunks() -> None:
    parser = SSEParser()
    stream = b'data: {"a": 1}\n\ndata: {"b"\r\n\r\n: comment\n\ndata:x\ndata: y\n\ndata: [DONE]\n\n'
    events: list[bytes] = []
    for i in range(0, len(stream), 3):  # awkward chunk boundaries
        events += parser.feed(stream[i : i + 3])
    assert events == [b'{"a": 1}', b'{"b"', b"x\ny", b"[DONE]"]
    assert parser.feed(b"data: partial") == []
    assert parser.feed(b"\n\n") == [b"partial"]


def test_prompts_have_exact_length_and_shared_prefix() -> None:
    prompts = build_prompts(5, 40, 100, shared_prefix_len=32, seed=3)
    assert len(prompts) == 5
    assert all(len(p) == 40 and all(0 <= t < 100 for t in p) for p in prompts)
    assert all(p[:32] == prompts[0][:32] for p in prompts)
    assert len({tuple(p[32:]) for p in prompts}) == 5
    assert build_prompts(5, 40, 100, shared_prefix_len=32, seed=3) == prompts
    unshared = build_prompts(3, 40, 100, seed=4)
    assert len({tuple(p[:8]) for p in unshared}) == 3
    with pytest.raises(ValueError):
        build_prompts(1, 4, 100, shared_prefix_len=5)


def test_outcome_metrics() -> None:
    out = RequestOutcome(sent=1.0, done=2.0, chunk_times=[1.2, 1.4, 1.6, 2.0], output_tokens=5)
    assert out.ttft == pytest.approx(0.2)
    assert out.e2e == pytest.approx(1.0)
    assert out.tpot == pytest.approx(0.8 / 4)
    assert out.itls == pytest.approx([0.2, 0.2, 0.4])
    assert math.isnan(RequestOutcome(sent=0.0, done=1.0, chunk_times=[0.5], output_tokens=1).tpot)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        OpenAIBenchOptions("u", "m", 8, 8, 1, concurrency=2, rate=1.0)
    with pytest.raises(ValueError):
        OpenAIBenchOptions("u", "m", 8, 8, 1, shared_prefix_len=9)
    for temperature in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            OpenAIBenchOptions("u", "m", 8, 8, 1, temperature=temperature)
    assert OpenAIBenchOptions("127.0.0.1:1/v1/", "m", 8, 8, 1).completions_url == (
        "http://127.0.0.1:1/v1/completions"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from tests.engine_torch.models import build_tiny_model

    repo = tmp_path_factory.mktemp("llm-repo")
    version = repo / "tiny" / "1"
    version.mkdir(parents=True)
    (repo / "tiny" / "config.yaml").write_text(
        "runtime: llm\nmax_model_len: 128\nmax_num_seqs: 4\nkv_cache_memory: 4000000\n"
    )
    build_tiny_model(version, "llama", vocab_size=VOCAB)
    _word_tokenizer(version)
    config = ServerConfig(
        auth=False,
        model_repository=str(repo),
        http_port=0,
        grpc_port=0,
        state_dir=str(tmp_path_factory.mktemp("llm-state")),
    )
    yield from start_server(config)


def _word_tokenizer(path: Path) -> None:
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))


async def test_closed_loop_run_with_shared_prefix(server: RunningServer) -> None:
    opts = OpenAIBenchOptions(
        url=f"http://{server.http_url}",
        model="tiny",
        input_len=20,
        output_len=6,
        num_requests=4,
        concurrency=2,
        shared_prefix_len=16,
        vocab_size=VOCAB,
    )
    result = await run_openai(opts)
    assert result.errors == {}
    assert len(result.ok) == 4
    assert all(o.output_tokens == 6 and o.prompt_tokens == 20 for o in result.ok)
    assert all(len(o.chunk_times) >= 1 for o in result.ok)
    assert result.output_tokens == 24 and result.output_token_rate > 0
    latencies = result.latencies()
    assert latencies["ttft"].count == 4 and latencies["e2e"].count == 4
    assert latencies["itl"].count > 0
    assert result.to_dict()["cached_tokens"] > 0  # requests after the first reuse the 16-token block


def test_cli_json(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "openai", "--url", f"http://{server.http_url}", "--model", "tiny", "--input-len", "8"]
    argv += ["--output-len", "4", "--rate", "50", "--num-requests", "3", "--vocab-size", str(VOCAB), "--json"]
    argv += ["--temperature", "0.8"]  # sampled, still exactly 4 tokens each (ignore_eos)
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] == 3 and doc["mode"] == "open" and doc["output_tokens"] == 12
    assert set(doc["ttft_ms"]) >= {"p50_ms", "p90_ms", "p99_ms"}


def test_cli_table_and_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "openai", "--url", "http://127.0.0.1:9", "--model", "m", "--input-len", "4"]
    argv += ["--output-len", "2", "--num-requests", "1", "--timeout", "5"]
    assert main(argv) == 2
    assert "failed" in capsys.readouterr().err
