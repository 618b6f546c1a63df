"""A generation stream that also keeps its output text, for a tenant whose payload logging is `full`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from inferd.generation import GenerationChunk, GenerationStream, Usage


class CapturedStream:
    """A stream that also keeps its output text (full payload logging)."""

    def __init__(
        self, inner: GenerationStream, prompt_index: int, outputs: dict[tuple[int, int], list[str]]
    ) -> None:
        self._inner = inner
        self._index = prompt_index
        self._outputs = outputs
        self.request_id = inner.request_id
        self.model = inner.model
        self.version = inner.version
        self.prompt_token_ids = inner.prompt_token_ids
        self.usage: Usage = inner.usage

    def __aiter__(self) -> AsyncIterator[GenerationChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[GenerationChunk]:
        async for chunk in self._inner:
            self._outputs.setdefault((self._index, chunk.index), []).append(chunk.text)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
