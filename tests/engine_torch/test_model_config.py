"""Parsing `config.json` into the architecture inferd builds."""

from __future__ import annotations

import pytest

from inferd.engine.model.config import ModelArchConfig
from inferd.errors import ModelLoadError

BASE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
}


def test_legacy_llama3_layout() -> None:
    raw = {
        **BASE,
        "architectures": ["LlamaForCausalLM"],
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "torch_dtype": "bfloat16",
        "eos_token_id": [128001, 128009],
        "tie_word_embeddings": True,
    }
    config = ModelArchConfig.from_hf_dict(raw)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling.rope_type == "llama3"
    assert config.rope_scaling.original_max_position_embeddings == 8192
    assert config.dtype == "bfloat16"
    assert config.eos_token_ids == (128001, 128009)
    assert config.tie_word_embeddings
    assert config.head_dim == 16


def test_transformers5_layout_and_flags() -> None:
    raw = {**BASE, "model_type": "qwen2", "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}
    qwen2 = ModelArchConfig.from_hf_dict(raw)
    assert qwen2.architecture == "Qwen2ForCausalLM" and qwen2.qkv_bias and not qwen2.o_bias
    assert qwen2.rope_theta == 1e6
    qwen3 = ModelArchConfig.from_hf_dict({**BASE, "architectures": ["Qwen3ForCausalLM"], "head_dim": 32})
    assert qwen3.qk_norm and qwen3.head_dim == 32 and not qwen3.qkv_bias


def test_sliding_window_caps_the_served_length() -> None:
    raw = {**BASE, "architectures": ["MistralForCausalLM"], "max_position_embeddings": 32768}
    assert ModelArchConfig.from_hf_dict({**raw, "sliding_window": 4096}).max_model_len == 4096
    assert ModelArchConfig.from_hf_dict({**raw, "sliding_window": None}).max_model_len == 32768


@pytest.mark.parametrize(
    "raw",
    [
        {**BASE, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"},
        {**BASE, "architectures": ["LlamaForCausalLM"], "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
        {**BASE, "architectures": ["LlamaForCausalLM"], "hidden_act": "gelu"},
        {"architectures": ["LlamaForCausalLM"]},
    ],
    ids=["architecture", "rope", "activation", "missing-field"],
)
def test_unsupported_configs_fail_to_load(raw: dict[str, object]) -> None:
    with pytest.raises(ModelLoadError):
        ModelArchConfig.from_hf_dict(raw)
