"""Incremental detokenization and stop strings, the chat template sandbox, and the LLM config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from inferd.configfile import ConfigError, load_yaml, parse
from inferd.engine.chat_template import ChatTemplate
from inferd.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from inferd.errors import InvalidInput
from inferd.runtimes.llm import LLMModelConfig

WORDS = ["[UNK]", "</s>", "ka", "lo", "mi", "nu", "re"]


def tokenizer() -> Tokenizer:
    tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # type: ignore[assignment]
    tok.add_special_tokens(["</s>"])
    return Tokenizer(tok, eos_token="</s>")


def stream(detok: IncrementalDetokenizer, ids: list[int]) -> tuple[list[str], str | None]:
    pieces = []
    for token in ids:
        delta = detok.add([token])
        pieces.append(delta.text)
        if delta.stop is not None:
            return pieces, delta.stop
    pieces.append(detok.flush().text)
    return pieces, None


def test_deltas_add_up_to_the_full_text() -> None:
    tok = tokenizer()
    ids = [2, 3, 4, 1, 5, 6, 2, 3, 4, 5, 6]
    pieces, stop = stream(IncrementalDetokenizer(tok), ids)
    assert stop is None
    assert "".join(pieces) == tok.decode(ids)


def test_stop_string_is_never_streamed() -> None:
    tok = tokenizer()
    ids = [2, 3, 4, 5, 6]  # "ka lo mi nu re"
    pieces, stop = stream(IncrementalDetokenizer(tok, ["mi n"]), ids)
    assert stop == "mi n"
    assert "".join(pieces) == "ka lo "
    assert all("m" not in p for p in pieces)


def test_chat_template_is_sandboxed_and_can_refuse() -> None:
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        "{{ bos_token }}{{ messages[0]['content'] }}",
        bos_token="<s>",
    )
    assert template.render([{"role": "user", "content": "hi"}]) == "<s>hi"
    with pytest.raises(InvalidInput, match="user first"):
        template.render([{"role": "system", "content": "hi"}])
    unsafe = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidInput):
        unsafe.render([{"role": "user", "content": "x"}])


def test_llm_config_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("runtime: llm\ndtype: float32\nmax_num_seqs: 4\nkv_cache_memory: 0.1\n")
    config = parse(LLMModelConfig, load_yaml(path), "m/config.yaml")
    assert config.engine_config().scheduler.max_num_seqs == 4
    path.write_text("runtime: llm\nmax_batch_size: 4\n")
    with pytest.raises(ConfigError, match="max_batch_size"):
        parse(LLMModelConfig, load_yaml(path), "m/config.yaml")
    path.write_text("runtime: llm\nmax_queue_wait_ms: 40\n")
    assert parse(LLMModelConfig, load_yaml(path), "m").engine_config().scheduler.max_queue_wait_ms == 40
    path.write_text("runtime: llm\nmax_queue_wait_ms: 0\n")
    with pytest.raises(ConfigError, match="max_queue_wait_ms must be"):
        parse(LLMModelConfig, load_yaml(path), "m/config.yaml")
    path.write_text("runtime: llm\ndtype: int8\n")
    with pytest.raises(ConfigError, match="int8"):
        parse(LLMModelConfig, load_yaml(path), "m/config.yaml")
