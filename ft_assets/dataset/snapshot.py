"""Copy a folder of input files into an artifact folder, with a manifest of their hashes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ft_assets.artifacts import file_sha256

MANIFEST = "manifest.json"


def _count_lines(path: Path) -> int:
    lines = 0
    last = b"\n"
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


def matching_files(source: Path, pattern: str) -> tuple[list[Path], list[Path]]:
    """Return the files under ``source`` matching ``pattern`` (several separated by ``|``) and the others, sorted.

    Hidden files (a name starting with ``.``) are neither.
    """
    if not source.is_dir():
        raise FileNotFoundError(f"input folder {source} does not exist")
    candidates = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
    chosen = [p for p in candidates if any(p.match(one) for one in pattern.split("|"))]
    picked = set(chosen)
    return chosen, [p for p in candidates if p not in picked]


def snapshot(source: Path, dest: Path, pattern: str) -> dict[str, Any]:
    """Copy every file under ``source`` matching ``pattern`` (several separated by ``|``) into ``dest/files``.

    Returns (and writes as ``manifest.json``) the copied files with size, lines and SHA-256,
    and the files that were left out because they do not match.
    """
    chosen, left_out = matching_files(source, pattern)
    files = []
    for path in chosen:
        relative = path.relative_to(source).as_posix()
        target = dest / "files" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        files.append(
            {
                "name": relative,
                "bytes": target.stat().st_size,
                "lines": _count_lines(target),
                "sha256": file_sha256(target),
            }
        )
    manifest = {
        "source": str(source),
        "files": files,
        "ignored": [p.relative_to(source).as_posix() for p in left_out],
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def snapshot_files(folder: Path) -> list[Path]:
    """Return the copied files of a snapshot artifact, in manifest order."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return [folder / "files" / entry["name"] for entry in manifest["files"]]
