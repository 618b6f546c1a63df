"""The request path's compiled modules: which ones, how they are built, and whether they are current.

Governance runs on the event loop for every request (authenticate, admit, settle, the ledger line), and on a
saturated loop each microsecond it adds costs 64 at concurrency 64. `make` compiles these modules to C
extensions with mypyc (`python -m inferd.native build`), in place, next to their sources: Python imports an
extension before a source of the same name. The source stays the one implementation (mypy-checked, and run
as plain Python where no compiler is found); in process, compiling them cut governance from 25 to 14 µs
per request (session 6).

A compiled module older than any source it was built from would run old code without a word, so `stale()`
names that case: `build` rebuilds then, the test suite refuses to start, and the server warns.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "inferd.gateway.access",
    "inferd.gateway.budgets",
    "inferd.gateway.context",
    "inferd.gateway.governance",
    "inferd.gateway.keys",
    "inferd.gateway.policy",
    "inferd.gateway.ratelimit",
    "inferd.gateway.stage",
    "inferd.metrics.request_totals",
    "inferd.metrics.usage_totals",
    "inferd.server.http_headers",
    "inferd.server.usage_headers",
    "inferd.store.journal",
    "inferd.store.records",
)
"""Modules compiled. A module qualifies when mypyc supports all of it (no async generators, no subclasses
of built-in exceptions) and it sits on the per-request path."""
BUILD_DIR = ROOT / "build" / "native"
_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def source(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


LIBRARY = "inferd.request_path"
"""The group's name: mypyc builds every module of the set into one library, `inferd/request_path__mypyc`,
and each module into a small extension that loads its part of it. One library rather than one per module:
calls between the modules are direct, and the request path's code sits together (served, -4 µs of event-
loop time per governed request, every round of 5; session 7)."""


def library() -> Path:
    """The group's shared library (present or not)."""
    return ROOT / (LIBRARY.replace(".", "/") + "__mypyc" + _SUFFIX)


def artifacts(module: str) -> list[Path]:
    """The module's compiled files present: its extension and the group's library."""
    found = [source(module).with_suffix(_SUFFIX), library()]
    return [p for p in found if p.exists()]


def compiled() -> list[str]:
    """The modules whose compiled extension and library are present (what Python will import)."""
    return [m for m in MODULES if len(artifacts(m)) == 2]


def stale() -> list[str]:
    """Compiled modules older than a source of the set (mypyc compiles them together: a class's layout in
    one is built into the others) or than this file."""
    sources = [source(m) for m in MODULES] + [Path(__file__)]
    newest = max(p.stat().st_mtime for p in sources)
    return [m for m in MODULES if any(p.stat().st_mtime < newest for p in artifacts(m))]


def remove() -> None:
    """Delete every compiled file: the sources run as plain Python."""
    for module in MODULES:
        source(module).with_suffix(_SUFFIX).unlink(missing_ok=True)
    for path in (ROOT / "inferd").rglob("*__mypyc" + _SUFFIX):  # the library (and older builds' ones)
        path.unlink()


def build(force: bool = False) -> None:
    """Compile the modules unless all are present and current. Without a working compiler (or mypyc),
    remove what is there and leave the sources to run as plain Python."""
    if not force and len(compiled()) == len(MODULES) and not stale():
        return
    remove()
    shutil.rmtree(BUILD_DIR, ignore_errors=True)  # a failed build's leftovers failed the next one
    try:
        from mypyc.build import mypycify  # a test extra: absent from a plain install
        from setuptools import setup  # type: ignore[import-untyped]

        cwd = os.getcwd()
        os.chdir(ROOT)  # mypyc names modules by their path from here
        try:
            setup(
                name="inferd-native",
                ext_modules=mypycify(
                    [str(source(m).relative_to(ROOT)) for m in MODULES],
                    group_name=LIBRARY,  # one library, inside the package (no top-level module)
                    opt_level="3",
                    target_dir=str(BUILD_DIR / "c"),
                ),
                script_args=["-q", "build_ext", "--inplace", "--build-temp", str(BUILD_DIR / "temp"),
                             "--build-lib", str(BUILD_DIR / "lib")],
            )  # fmt: skip
        finally:
            os.chdir(cwd)
        # Built from the current sources now; setuptools copies an extension it did not need to recompile
        # (unchanged generated C) with its old time, which would read as stale.
        for module in MODULES:
            for path in artifacts(module):
                os.utime(path)
    except (Exception, SystemExit) as exc:  # setuptools reports a failed compiler by SystemExit
        remove()
        print(f"inferd: compiling the request path failed ({exc!r}); it runs as Python", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inferd.native", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["build", "clean", "status"])
    parser.add_argument("--force", action="store_true", help="rebuild even when current")
    args = parser.parse_args(argv)
    if args.action == "build":
        build(args.force)  # a failure leaves plain Python, which works: not an error of `make`
        print(f"inferd: {len(compiled())} of {len(MODULES)} request-path modules compiled")
        return 0
    if args.action == "clean":
        remove()
        return 0
    print(f"compiled: {', '.join(compiled()) or 'none'}")
    print(f"stale: {', '.join(stale()) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
