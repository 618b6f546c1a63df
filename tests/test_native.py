"""The request path's compiled modules: built where a compiler exists, imported instead of the sources,
never older than them."""

from __future__ import annotations

import importlib
import importlib.machinery
import shutil

import pytest

from inferd import native


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: the sources run as plain Python")
def test_with_a_compiler_every_listed_module_runs_compiled() -> None:
    assert native.compiled() == list(native.MODULES)
    assert native.stale() == []
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in native.MODULES:
        module = importlib.import_module(name)
        assert module.__file__ is not None and module.__file__.endswith(suffix), name


def test_a_source_newer_than_its_compiled_copy_is_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    if not native.compiled():
        pytest.skip("nothing compiled")
    newest = max(p.stat().st_mtime for m in native.MODULES for p in native.artifacts(m))
    real_stat = type(native.source(native.MODULES[0])).stat
    edited = native.source("inferd.gateway.ratelimit")

    def stat(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = real_stat(path, *args, **kwargs)
        if path == edited:
            return type(result)((*result[:8], int(newest) + 60, *result[9:]))
        return result

    monkeypatch.setattr(type(edited), "stat", stat)
    # Every compiled module is stale, not only the edited one's: mypyc builds the set together.
    assert native.stale() == native.compiled()
