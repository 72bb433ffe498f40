"""Immutable, content-addressed artifact folders: ``<root>/<asset>/<data_version>/``.

A materialization writes into a hidden staging folder, which is hashed and renamed into place
in one step; a folder with the same content already there is reused. The version hashes what a
consumer uses; report files (timings, plots, model cards) lie in the folder but are left out of
it. Old versions are never touched, so every path recorded in lineage stays loadable.

A staging or scratch folder is held by a lock for as long as its writer lives; one whose writer
died (killed at any line) is swept by the next writer. No dagster import here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

VERSION_LENGTH = 16
_BLOCK = 1 << 20
WORK_PREFIXES = (".staging-", ".scratch-")
UNLOCKED_SWEEP_AGE_S = 24 * 3600  # without file locks (no fcntl): sweep only what is this old


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


def folder_hash(folder: Path, reports: Iterable[str] = ()) -> str:
    """Return a short content hash of a folder: every file's relative path and bytes, reports left out."""
    left_out = set(reports)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in left_out:
            continue
        digest.update(name.encode() + b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:VERSION_LENGTH]


def _lock(lock_file: Path) -> object | None:
    """Hold an exclusive lock on ``lock_file`` for as long as the returned handle is open.

    Without ``fcntl`` (Windows) the file is only created: its age tells a sweeper (None is returned).
    """
    try:
        import fcntl
    except ImportError:
        lock_file.touch()
        return None
    while True:
        handle = open(lock_file, "a")  # noqa: SIM115 - held open for the folder's lifetime
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_file).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return handle
        handle.close()  # a sweeper removed this file while we waited: lock the one now there


def _sweep_one(work: Path, lock_file: Path) -> bool:
    """Remove ``work`` and its lock when no living writer holds the lock; return whether it was removed."""
    try:
        import fcntl
    except ImportError:
        if lock_file.exists() and time.time() - lock_file.stat().st_mtime < UNLOCKED_SWEEP_AGE_S:
            return False
        shutil.rmtree(work, ignore_errors=True)
        lock_file.unlink(missing_ok=True)
        return True
    if not lock_file.exists():  # a writer locks before it makes its folder: this one's writer is gone
        shutil.rmtree(work, ignore_errors=True)
        return True
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(work, ignore_errors=True)  # removed while holding the lock: no writer can take it now
        lock_file.unlink(missing_ok=True)
    return True


def sweep(folder: Path) -> list[Path]:
    """Remove staging and scratch folders (and their locks) in ``folder`` whose writer died; return them."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        if not path.name.startswith(WORK_PREFIXES) or not path.exists():  # gone with its folder or lock
            continue
        work, lock_file = (path.with_suffix(""), path) if path.suffix == ".lock" else (path, Path(f"{path}.lock"))
        if work.exists() and path == lock_file:
            continue  # handled with its folder
        if _sweep_one(work, lock_file):
            removed.append(work)
    return removed


@contextmanager
def work_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """Yield a new hidden folder in ``parent``, locked while in use, removed when the block ends."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent)
    folder = parent / f"{prefix}{uuid.uuid4().hex}"
    lock_file = folder.with_name(folder.name + ".lock")
    handle = _lock(lock_file)  # locked before the folder exists, so a sweeper never sees it unlocked
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        lock_file.unlink(missing_ok=True)
        if handle is not None:
            handle.close()  # type: ignore[attr-defined]


@contextmanager
def staging(root: str | Path, asset: str) -> Iterator[Path]:
    """Yield an empty staging folder for ``asset``; it is removed after publishing or if the block fails."""
    with work_folder(Path(root) / asset, ".staging-") as folder:
        yield folder


def publish(folder: Path, asset: str, reports: Iterable[str] = ()) -> ArtifactRef:
    """Move a filled staging folder to its content-addressed place and return its reference.

    ``reports`` (paths relative to the folder) describe the artifact without being part of what a
    consumer uses, so they do not change the version; when that version already exists, it is kept.
    """
    version = folder_hash(folder, reports)
    final = folder.parent / version
    if not final.exists():
        try:
            os.rename(folder, final)
        except OSError:  # another writer published the same version first
            if not final.exists():
                raise
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
