from __future__ import annotations

import subprocess
import sys

MODULES = [
    "inferd.engine",
    "inferd.engine.async_engine",
    "inferd.engine.chat_template",
    "inferd.engine.tokenizer",
    "inferd.engine.block_hash",
    "inferd.engine.block_pool",
    "inferd.engine.config",
    "inferd.engine.kv_cache_manager",
    "inferd.engine.outputs",
    "inferd.engine.policy",
    "inferd.engine.request",
    "inferd.engine.sampling_params",
    "inferd.engine.scheduler",
]


def test_engine_core_imports_neither_torch_nor_the_web_layer() -> None:
    code = (
        "import sys\n"
        f"for name in {MODULES!r}: __import__(name)\n"
        "banned = ('torch', 'starlette', 'uvicorn', 'grpc', 'numpy', 'onnxruntime')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in banned))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout
