"""Document sources: where an ingestion job finds its files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


class SourceError(Exception):
    """The source itself cannot be read (missing directory, not a directory)."""


@dataclass(frozen=True)
class SourceFile:
    """A file a source offers, named relative to the source root."""

    path: Path
    relpath: str


class DirectorySource:
    """Every regular, non-hidden file under a directory, recursively, in a stable order."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def files(self) -> list[SourceFile]:
        if not self.root.exists():
            raise SourceError(f"source directory {self.root} does not exist")
        if not self.root.is_dir():
            raise SourceError(f"source location {self.root} is not a directory")
        found = []
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            found.append(SourceFile(path=path, relpath=rel.as_posix()))
        return found


def file_hash(path: Path, salt: str) -> str:
    """sha256 of the file's bytes and of the index settings that shape its chunks (`salt`)."""
    digest = hashlib.sha256(salt.encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
