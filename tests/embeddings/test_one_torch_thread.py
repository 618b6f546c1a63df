"""A server hosting an embedding model and an LLM runs all their torch work on one thread.

Why it matters: each thread that runs torch on CPU keeps an OpenMP worker pool, and with more pool workers
than CPUs libgomp makes them sleep between parallel regions (a decode step then took 1.5-1.8x as long, see
`inferd/engine/compute_thread.py`). Forward hooks on the real modules record the thread of every call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
import torch

from inferd.config import ServerConfig
from inferd.embedding_models import add_minilm_to_repository
from tests.conftest import RunningServer, start_server
from tests.engine_torch.models import build_tiny_model
from tests.openai.conftest import SPECIALS, WORDS, build_tokenizer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("one-thread-repo")
    add_minilm_to_repository(repo, "minilm")
    for name in ("llm", "llm2"):
        folder = repo / name / "1"
        folder.mkdir(parents=True)
        build_tiny_model(
            folder, "llama", vocab_size=len(SPECIALS) + len(WORDS), bos_token_id=1, eos_token_id=2
        )
        build_tokenizer(folder)
        (repo / name / "config.yaml").write_text(
            "runtime: llm\nmax_model_len: 256\nkv_cache_memory: 4000000\n"
        )
    state = tmp_path_factory.mktemp("one-thread-state")
    config = ServerConfig(
        auth=False, model_repository=str(repo), http_port=0, grpc_port=0, state_dir=str(state)
    )
    yield from start_server(config)


def test_embeddings_and_two_llms_share_one_torch_thread(served: RunningServer) -> None:
    manager = served.server.manager
    modules: list[torch.nn.Module] = [
        manager.get("minilm").runtime._encoder,  # type: ignore[attr-defined]
        manager.get_llm("llm").engine.engine.runner.model,  # type: ignore[attr-defined]
        manager.get_llm("llm2").engine.engine.runner.model,  # type: ignore[attr-defined]
    ]
    seen: dict[int, set[int]] = {i: set() for i in range(len(modules))}
    hooks = [
        m.register_forward_hook(lambda *_, i=i: seen[i].add(threading.get_ident()))
        for i, m in enumerate(modules)
    ]
    base = f"http://{served.http_url}/v1"
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(2):
                r = client.post(f"{base}/embeddings", json={"model": "minilm", "input": ["a", "b c"]})
                assert r.status_code == 200, r.text
                for name in ("llm", "llm2"):
                    body = {"model": name, "prompt": "ka lo", "max_tokens": 3, "temperature": 0}
                    r = client.post(f"{base}/completions", json=body)
                    assert r.status_code == 200, r.text
    finally:
        for hook in hooks:
            hook.remove()
    threads = set().union(*seen.values())
    assert all(seen.values()), seen  # every model ran
    assert len(threads) == 1, seen
    (thread,) = threads
    names = {t.ident: t.name for t in threading.enumerate()}
    assert names[thread] == "inferd-compute"
