"""A served tiny random-weight Llama with a local word-level tokenizer and a chat template (no downloads)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from inferd.config import ServerConfig
from tests.conftest import RunningServer, start_server
from tests.engine_torch.models import TinyModel, build_tiny_model

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

MODEL = "tiny-llama"
MAX_MODEL_LEN = 256
SPECIALS = ["[UNK]", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
SYLLABLES = ["ka", "lo", "mi", "nu", "re", "ta", "zo", "pe", "si", "du", "ba", "fe"]
WORDS = SYLLABLES + [a + b for a in SYLLABLES for b in SYLLABLES]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class LLMFixture:
    server: RunningServer
    tiny: TinyModel
    tokenizer: Tokenizer

    @property
    def base_url(self) -> str:
        return f"http://{self.server.http_url}/v1"


def build_tokenizer(path: Path) -> Tokenizer:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": CHAT_TEMPLATE}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


@pytest.fixture(scope="package")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMFixture]:
    repo = tmp_path_factory.mktemp("llm-repo")
    version = repo / MODEL / "1"
    version.mkdir(parents=True)
    (repo / MODEL / "config.yaml").write_text(
        f"runtime: llm\nmax_model_len: {MAX_MODEL_LEN}\nmax_num_seqs: 8\nkv_cache_memory: 4000000\n"
    )
    tiny = build_tiny_model(
        version, "llama", vocab_size=len(SPECIALS) + len(WORDS), bos_token_id=1, eos_token_id=2
    )
    tokenizer = build_tokenizer(version)
    config = ServerConfig(
        auth=False,
        model_repository=str(repo),
        http_port=0,
        grpc_port=0,
        state_dir=str(tmp_path_factory.mktemp("llm-state")),
        max_request_bytes=1 << 20,
    )
    for running in start_server(config):
        yield LLMFixture(running, tiny, tokenizer)
