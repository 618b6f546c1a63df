"""The protocol-neutral entry point shared by every transport: inference, readiness, metadata, repository.

Transports reach it through the gateway stage; it asks the model manager for the loaded version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferd import __version__
from inferd.generation import GenerateRequest, GenerationStream
from inferd.repository.llm_version import LLMVersion
from inferd.repository.manager import IndexEntry, ModelManager
from inferd.repository.model_version import ModelVersion
from inferd.runtimes.embedding_io import PLATFORM as EMBEDDING_PLATFORM
from inferd.tensors import InferRequest, InferResponse

SERVER_NAME = "inferd"
EXTENSIONS = (
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "schedule_policy",
)


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class DataPlane:
    """Inference and model queries over the model manager."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self._ready = False

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, EXTENSIONS)

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        """The loaded version (NotFound / NotReady otherwise)."""
        return self.manager.get(name, version)

    def model_exists(self, name: str) -> bool:
        """Whether the repository has a model called `name` (loaded or not)."""
        return self.manager.exists(name)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.manager.get_any(name, version)
        except Exception:
            return False
        return True

    def model_versions(self, name: str) -> list[str]:
        return sorted((v.version for v in self.manager.ready_versions() if v.name == name), key=int)

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self.infer_on(self.manager.get(request.model, request.version), request)

    async def infer_on(self, version: ModelVersion, request: InferRequest) -> InferResponse:
        """Run `request` on an already resolved version."""
        return await version.infer(request)

    def llm(self, name: str, version: str | None = None) -> LLMVersion:
        """The loaded LLM version (NotFound for an unknown model or a tensor model; NotReady)."""
        return self.manager.get_llm(name, version)

    def embedding_versions(self) -> list[ModelVersion]:
        """Every ready embedding-model version (listed by the OpenAI API beside the LLMs)."""
        return [v for v in self.manager.ready_versions() if v.signature.platform == EMBEDDING_PLATFORM]

    def llm_versions(self) -> list[LLMVersion]:
        """Every ready LLM version (the OpenAI model list)."""
        return self.manager.llm_versions()

    async def generate(self, request: GenerateRequest) -> GenerationStream:
        """Queue a generation; the stream yields its outputs (close it early to abort)."""
        return await self.generate_on(self.llm(request.model, request.version), request)

    async def generate_on(self, version: LLMVersion, request: GenerateRequest) -> GenerationStream:
        """Queue `request` on an already resolved LLM version."""
        return await version.generate(request)

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.manager.index(ready_only)

    async def load(self, name: str) -> None:
        await self.manager.load(name)

    async def unload(self, name: str) -> None:
        await self.manager.unload(name)

    def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        """Triton-shaped statistics of the ready versions (one model, one version, or all)."""
        if name:
            versions = (
                [self.manager.get(name, version)]
                if version
                else [v for v in self.manager.ready_versions() if v.name == name]
            )
            if not versions:
                self.manager.get(name)  # raises NotFound / NotReady
        else:
            versions = self.manager.ready_versions()
        return [v.stats.as_dict(v.name, v.version) for v in versions]
