"""`/v1/embeddings` with the official openai client, on the real all-MiniLM-L6-v2 served by inferd."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from sentence_transformers import SentenceTransformer

from inferd.config import ServerConfig
from inferd.embedding_models import add_minilm_to_repository, minilm_l6_v2_path
from tests.conftest import RunningServer, start_server

MODEL = "all-MiniLM-L6-v2"
TEXTS = ["inferd serves models", "Ein Satz auf Deutsch.", "short", "a longer sentence " * 20]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("emb-repo")
    add_minilm_to_repository(repo, MODEL)
    state = tmp_path_factory.mktemp("emb-state")
    config = ServerConfig(
        auth=False, model_repository=str(repo), http_port=0, grpc_port=0, state_dir=str(state)
    )
    yield from start_server(config)


@pytest.fixture(scope="module")
def client(served: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{served.http_url}/v1", api_key="unused", max_retries=0)


def test_embeddings_match_sentence_transformers(client: openai.OpenAI, served: RunningServer) -> None:
    result = client.embeddings.create(model=MODEL, input=TEXTS)
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    want = SentenceTransformer(str(minilm_l6_v2_path()), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    cosines = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosines.min() >= 0.9999, cosines
    assert [d.index for d in result.data] == list(range(len(TEXTS)))
    assert result.usage.prompt_tokens > len(TEXTS) and result.usage.total_tokens == result.usage.prompt_tokens
    assert MODEL in [m.id for m in client.models.list().data]


def test_base64_encoding_and_single_string(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=MODEL, input="one text").data[0].embedding
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="one text", encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    np.testing.assert_allclose(decoded, np.array(floats, dtype=np.float32), rtol=1e-6)
    assert raw.headers["x-request-id"]


def test_bad_requests_name_the_field(client: openai.OpenAI, tmp_path: Path) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=[])
    assert err.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input=[[1, 2, 3]])
    assert "token-id" in str(err.value)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
