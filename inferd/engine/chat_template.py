"""Chat templates: a model's Jinja template, rendered in a sandbox, turns messages into prompt text.

The template comes from `tokenizer_config.json` (`chat_template`, a string or a list of named templates of
which `default` is used) or a `chat_template.jinja` file beside it. It runs in jinja2's immutable sandbox with
the helpers Hugging Face templates expect (`raise_exception`, `bos_token`, `eos_token`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferd.engine.tokenizer import load_tokenizer_config, special_token_text
from inferd.errors import InvalidInput, ModelLoadError


class TemplateRaised(InvalidInput):
    """The template called `raise_exception` (the messages break its rules, e.g. roles must alternate)."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRaised(f"chat template: {message}")


class ChatTemplate:
    """A compiled chat template."""

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise ModelLoadError(f"invalid chat template: {exc}") from None
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""

    @classmethod
    def load(cls, model_dir: Path) -> ChatTemplate | None:
        """The model folder's template, or None when it has none."""
        config = load_tokenizer_config(model_dir)
        source: Any = config.get("chat_template")
        if isinstance(source, list):
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        jinja_file = model_dir / "chat_template.jinja"
        if source is None and jinja_file.is_file():
            source = jinja_file.read_text(encoding="utf-8")
        if source is None:
            return None
        if not isinstance(source, str):
            raise ModelLoadError(f"{model_dir.name}: chat_template must be a string")
        return cls(
            source,
            bos_token=special_token_text(config.get("bos_token")),
            eos_token=special_token_text(config.get("eos_token")),
        )

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text for `messages`. Raises InvalidInput when the template refuses them."""
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **(extra or {}),
            )
        except InvalidInput:
            raise
        except jinja2.TemplateError as exc:
            raise InvalidInput(f"chat template failed on these messages: {exc}") from None
