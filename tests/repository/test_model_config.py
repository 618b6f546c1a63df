"""config.yaml parsing: documented fields, unknown keys rejected by name, policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.configfile import ConfigError
from inferd.repository.model_config import ModelConfig, VersionPolicyConfig, load_model_config


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "config.yaml").write_text(text)
    return tmp_path


def test_defaults_without_a_file(tmp_path: Path) -> None:
    assert load_model_config(tmp_path) == ModelConfig()


def test_full_config(tmp_path: Path) -> None:
    cfg = load_model_config(
        write(
            tmp_path,
            """
runtime: onnx
max_batch_size: 16
dynamic_batching:
  max_queue_delay_ms: 2.5
  preferred_batch_sizes: [4, 8]
  max_queue_size: 100
  default_timeout_ms: 50
  priority_levels: 3
instances: 2
intra_op_threads: 1
version_policy: {specific: [1, 3]}
warmup: {batch_sizes: [1, 16]}
""",
        )
    )
    assert cfg.max_batch_size == 16 and cfg.instances == 2
    assert cfg.dynamic_batching is not None and cfg.dynamic_batching.preferred_batch_sizes == [4, 8]
    assert cfg.version_policy.select([1, 2, 3, 4]) == [1, 3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_bach_size: 4\n", "unknown key 'max_bach_size'"),
        ("dynamic_batching:\n  max_delay: 1\n", "unknown key 'max_delay'"),
        ("max_batch_size: many\n", "max_batch_size: expected an integer"),
        ("runtime: tensorflow\n", "'tensorflow' is not one of"),
        ("version_policy: {latest: 1, all: true}\n", "takes one of latest, all, specific"),
        ("instances: 0\n", "instances must be >= 1"),
        ("- a list\n", "top level must be a mapping"),
        ("max_batch_size: [\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_model_config(write(tmp_path, text))


def test_version_policies() -> None:
    assert VersionPolicyConfig().select([3, 1, 2]) == [3]
    assert VersionPolicyConfig(latest=2).select([3, 1, 2]) == [2, 3]
    assert VersionPolicyConfig(all=True).select([3, 1, 2]) == [1, 2, 3]
