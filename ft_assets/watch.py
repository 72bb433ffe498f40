"""What automation watches: content versions of the raw data folder and of the base model. No dagster import.

A version is a hash of content, never of modification times: touching a file changes nothing.
Reading is cheap and offline: a file's SHA-256 is computed again only when its size or
modification time changed (``HashCache``, in memory and in a small JSON file), and a hub model's
revision is read from the local Hugging Face cache, never downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_assets.artifacts import file_sha256
from ft_assets.dataset.snapshot import matching_files
from ft_assets.defaults import BUILTIN_SOURCE

VERSION_LENGTH = 16
NOT_CACHED = "not-in-local-cache"
ABSENT = "absent"


@dataclass
class HashCache:
    """SHA-256 of files keyed by (path, size, modification time); saved to ``path`` when one is given."""

    path: Path | None = None
    entries: dict[str, list[Any]] = field(default_factory=dict)
    changed: bool = False

    @classmethod
    def load(cls, path: Path | None) -> HashCache:
        """Return the cache saved at ``path`` (empty when there is none or it is unreadable)."""
        entries: dict[str, list[Any]] = {}
        if path is not None and path.is_file():
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError):
                entries = {}
        return cls(path=path, entries=entries if isinstance(entries, dict) else {})

    def digest(self, file: Path) -> str:
        """Return the file's SHA-256, hashing it only when its size or modification time changed."""
        stat = file.stat()
        name = str(file.resolve())
        known = self.entries.get(name)
        if known and known[:2] == [stat.st_size, stat.st_mtime_ns]:
            return known[2]
        digest = file_sha256(file)
        self.entries[name] = [stat.st_size, stat.st_mtime_ns, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        """Write the cache (atomically) if anything was hashed since it was loaded."""
        if self.path is None or not self.changed:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(self.entries))
        temporary.replace(self.path)
        self.changed = False


@dataclass(frozen=True)
class Observation:
    """A watched source's content version and what a user sees next to it."""

    version: str
    metadata: dict[str, Any]
    newest_mtime: float = 0.0


def content_version(entries: Iterable[tuple[str, str]]) -> str:
    """Return a short hash of (relative name, SHA-256) pairs, in name order."""
    digest = hashlib.sha256()
    for name, sha in sorted(entries):
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()[:VERSION_LENGTH]


def folder_version(folder: Path, pattern: str, cache: HashCache) -> Observation:
    """Return the content version of the files under ``folder`` matching ``pattern`` (``|``-separated globs).

    A missing folder has the version ``absent``.
    """
    if not folder.is_dir():
        return Observation(ABSENT, {"folder": str(folder), "files": 0, "content_hash": ABSENT})
    files, _ = matching_files(folder, pattern)
    entries = []
    newest = 0.0
    for path in files:
        entries.append((path.relative_to(folder).as_posix(), cache.digest(path)))
        newest = max(newest, path.stat().st_mtime)
    cache.save()
    version = content_version(entries)
    return Observation(version, {"folder": str(folder), "files": len(entries), "content_hash": version}, newest)


def base_model_version(source: str, cache: HashCache) -> Observation:
    """Return the version of a base model source: 'builtin', a local folder's content hash or a hub revision.

    A hub id's revision is the snapshot its ``main`` reference names in the local cache; a model
    absent from the cache gets the version ``not-in-local-cache`` (nothing is downloaded).
    """
    if source == BUILTIN_SOURCE:
        return Observation(BUILTIN_SOURCE, {"source": BUILTIN_SOURCE})
    local = Path(source).expanduser()
    if local.is_dir():
        found = folder_version(local, "*", cache)
        return Observation(found.version, {"source": str(local.resolve()), **found.metadata}, found.newest_mtime)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a valid hub id either (e.g. a local path that does not exist)
        cached = None
    revision = Path(cached).parent.name if isinstance(cached, str) else NOT_CACHED
    return Observation(f"{source}@{revision}", {"source": source, "revision": revision})
