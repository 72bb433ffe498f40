"""Immutable, content-addressed artifact folders: ``<root>/<asset>/<data_version>/``.

A materialization writes into a staging folder, which is hashed and renamed into place in
one step; a folder with the same content already there is reused. Old versions are never
touched, so every path recorded in lineage stays loadable. No dagster import here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

VERSION_LENGTH = 16
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ArtifactRef:
    """A published artifact: which asset, which content version, and where it lies."""

    asset: str
    version: str
    path: str

    def file(self, name: str) -> Path:
        """Return the path of a file inside the artifact folder."""
        return Path(self.path) / name


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def folder_hash(folder: Path) -> str:
    """Return a short content hash of a folder: every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:VERSION_LENGTH]


@contextmanager
def staging(root: str | Path, asset: str) -> Iterator[Path]:
    """Yield an empty staging folder for ``asset``; it is removed if the block fails."""
    folder = Path(root) / asset / f".staging-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        if folder.exists():
            shutil.rmtree(folder)


def publish(folder: Path, asset: str) -> ArtifactRef:
    """Move a filled staging folder to its content-addressed place and return its reference."""
    version = folder_hash(folder)
    final = folder.parent / version
    if final.exists():
        shutil.rmtree(folder)
    else:
        try:
            os.rename(folder, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(folder)
    return ArtifactRef(asset=asset, version=version, path=str(final.resolve()))


def inputs_key(**parts: object) -> str:
    """Return a hash of everything an artifact is made from (input versions, config, code version)."""
    canonical = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def _index_file(root: str | Path, asset: str, key: str) -> Path:
    return Path(root) / asset / "by-inputs" / f"{key}.json"


def find_by_inputs(root: str | Path, asset: str, key: str) -> ArtifactRef | None:
    """Return the artifact already made from the inputs with this key, if it is still on disk."""
    index = _index_file(root, asset, key)
    if not index.exists():
        return None
    ref = ArtifactRef(**json.loads(index.read_text()))
    return ref if Path(ref.path).is_dir() else None


def remember_inputs(root: str | Path, asset: str, key: str, ref: ArtifactRef) -> None:
    """Note that the artifact ``ref`` was made from the inputs with this key (atomic write)."""
    index = _index_file(root, asset, key)
    index.parent.mkdir(parents=True, exist_ok=True)
    temporary = index.with_suffix(f".{uuid.uuid4().hex}.tmp")
    temporary.write_text(json.dumps({"asset": ref.asset, "version": ref.version, "path": ref.path}))
    os.replace(temporary, index)
