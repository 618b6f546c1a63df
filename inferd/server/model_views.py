"""Model metadata and configuration in the V2 / Triton shapes, shared by the REST and gRPC transports."""

from __future__ import annotations

from typing import Any

from inferd.repository.model_version import ModelVersion
from inferd.tensors import TensorSpec


def _full_shape(spec: TensorSpec, batched: bool) -> list[int]:
    return ([-1] if batched else []) + list(spec.dims)


def metadata(version: ModelVersion, versions: list[str]) -> dict[str, Any]:
    """V2 model metadata (shapes include the -1 batch dimension when the model batches)."""
    sig = version.signature
    batched = sig.max_batch_size > 0
    return {
        "name": version.name,
        "versions": versions,
        "platform": sig.platform,
        "inputs": [
            {"name": s.name, "datatype": s.datatype.name, "shape": _full_shape(s, batched)}
            for s in sig.inputs
        ],
        "outputs": [
            {"name": s.name, "datatype": s.datatype.name, "shape": _full_shape(s, batched)}
            for s in sig.outputs
        ],
        "parameters": {"sha256": version.sha256},
    }


def model_config(version: ModelVersion) -> dict[str, Any]:
    """The Triton model configuration (field names of model_config.proto) of a loaded version."""
    sig = version.signature
    cfg = version.config
    policy = version.policy
    result: dict[str, Any] = {
        "name": version.name,
        "platform": sig.platform,
        "backend": "onnxruntime",
        "max_batch_size": sig.max_batch_size,
        "input": [
            {"name": s.name, "data_type": s.datatype.config_name, "dims": list(s.dims)} for s in sig.inputs
        ],
        "output": [
            {"name": s.name, "data_type": s.datatype.config_name, "dims": list(s.dims)} for s in sig.outputs
        ],
        "instance_group": [{"name": f"{version.name}_0", "count": cfg.instances, "kind": "KIND_CPU"}],
        "version_policy": _version_policy(version),
        "parameters": {"sha256": {"string_value": version.sha256}},
    }
    if policy.batching and sig.max_batch_size > 0:
        db = cfg.dynamic_batching
        result["dynamic_batching"] = {
            "preferred_batch_size": list(policy.preferred_batch_sizes),
            "max_queue_delay_microseconds": int(policy.max_queue_delay_s * 1e6),
            "priority_levels": policy.priority_levels,
            "default_priority_level": db.default_priority_level if db else 0,
            "default_queue_policy": {
                "max_queue_size": policy.max_queue_size,
                "default_timeout_microseconds": int((db.default_timeout_ms if db else 0) * 1000),
            },
        }
    return result


def _version_policy(version: ModelVersion) -> dict[str, Any]:
    vp = version.config.version_policy
    if vp.all:
        return {"all": {}}
    if vp.specific is not None:
        return {"specific": {"versions": list(vp.specific)}}
    return {"latest": {"num_versions": vp.latest or 1}}
