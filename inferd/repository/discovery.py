"""Finding models and versions on disk, and the immutable identity of a version's files."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelDir:
    """A model folder in the repository."""

    name: str
    path: Path

    def versions(self) -> list[int]:
        """Version numbers present: sub-folders named by positive integers."""
        found = []
        for child in self.path.iterdir():
            if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
                found.append(int(child.name))
        return sorted(found)

    def fingerprint(self) -> str:
        """Changes whenever a file of the model changes (names, sizes, mtimes); used by polling."""
        h = hashlib.sha256()
        for path in sorted(_files(self.path)):
            st = path.stat()
            h.update(f"{path.relative_to(self.path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def scan(repository: Path) -> dict[str, ModelDir]:
    """Every model folder of the repository by name (hidden folders are skipped)."""
    if not repository.is_dir():
        return {}
    return {
        p.name: ModelDir(p.name, p)
        for p in sorted(repository.iterdir())
        if p.is_dir() and not p.name.startswith(".")
    }


def version_sha256(version_dir: Path) -> str:
    """sha256 over the version's files: relative paths and contents, in sorted order."""
    h = hashlib.sha256()
    for path in sorted(_files(version_dir)):
        h.update(str(path.relative_to(version_dir)).encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return out
