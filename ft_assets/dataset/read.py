"""Read stage: which input files there are, what shape each is, and which byte ranges to scan.

JSONL files are scanned where they lie. A ``.json`` file holding an array of rows is written
out as JSONL (one element per line, so line N is element N-1) into a scratch folder first; one
holding a single object is one row; one that is not one JSON value but starts like JSONL is
read as JSONL. Any other file is refused with one line that says what it is. A file may be
declared a split by its name or folder (``train``, ``validation``/``valid``/``val``/``dev``,
``test``): its rows keep that split unless a row says otherwise with its own ``split`` field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

JSONL_SUFFIXES = (".jsonl",)
ARRAY_SUFFIXES = (".json",)
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
SPLIT_NAMES = {"train": 0, "validation": 1, "valid": 1, "val": 1, "dev": 1, "test": 2}
NO_SPLIT = 255


class PrepError(Exception):
    """An input cannot be read; the message says which and why."""


@dataclass(frozen=True)
class InputFile:
    """One input: the JSONL file to scan, the name outputs give it, and its declared split."""

    path: Path
    label: str
    kind: str = "jsonl"
    split: int = NO_SPLIT


def declared_split(path: Path) -> int:
    """Return the split a file is declared as by its stem or its folder's name, or ``NO_SPLIT``."""
    for name in (path.stem.lower(), path.parent.name.lower()):
        if name in SPLIT_NAMES:
            return SPLIT_NAMES[name]
    return NO_SPLIT


def binary_kind(head: bytes) -> str | None:
    """Name what a file's first bytes show it is when it is not UTF-8 text, with what to do; else None."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data (decompress it first)"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (extract it first)"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text (save it as UTF-8)"
    return None


def _describe(path: Path, head: bytes) -> str:
    """Say in a few words what a file that is not JSONL seems to be."""
    if kind := binary_kind(head):
        return kind
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if path.suffix.lower() == ".csv" or (b"," in head.split(b"\n", 1)[0] and not text.startswith((b"{", b"["))):
        return "a CSV file"
    if path.suffix.lower() in (".parquet", ".arrow") or head.startswith(b"PAR1"):
        return "a Parquet/Arrow file"
    if path.suffix.lower() in (".md", ".txt"):
        return "a text document"
    return f"a {path.suffix or 'suffix-less'} file"


def _is_data(path: Path) -> bool:
    return path.suffix.lower() in JSONL_SUFFIXES + ARRAY_SUFFIXES


def _not_read(path: Path) -> str:
    """Say why a folder's file is not read, and what to do when it is data that could be."""
    if path.suffix.lower() in COMPRESSED_SUFFIXES:
        return "compressed: decompress it to read it"
    return "not a .jsonl or .json file"


def find_files(inputs: Sequence[str | Path], skip: Path | None = None) -> tuple[list[Path], list[dict[str, str]]]:
    """Return the files named by ``inputs`` (folders give their ``*.jsonl`` and ``*.json``, sorted per folder).

    Also returns the files left out, each with why: one named a second time, one a folder holds
    inside ``skip`` (the output folder, whose files are no input), one of another kind in a
    folder, or a hidden one (its name or a folder's below the input starts with ``.``, as in
    ``.ipynb_checkpoints``; only its ``.jsonl`` and ``.json`` files are listed).
    """
    files: list[Path] = []
    ignored: list[dict[str, str]] = []
    seen: set[Path] = set()
    skip = skip.resolve() if skip is not None else None

    def add(path: Path) -> None:
        resolved = path.resolve()
        if resolved in seen:
            ignored.append({"path": str(path), "why": "named more than once"})
        else:
            seen.add(resolved)
            files.append(path)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            every, hidden = [], []
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                is_hidden = any(part.startswith(".") for part in file.relative_to(path).parts)
                (hidden if is_hidden else every).append(file)
            ignored += [{"path": str(p), "why": "hidden"} for p in hidden if _is_data(p)]
            inside = {p for p in every if skip is not None and p.resolve().is_relative_to(skip)}
            ignored += [{"path": str(p), "why": "inside the output folder"} for p in every if p in inside]
            found = [p for p in every if p not in inside and _is_data(p)]
            ignored += [{"path": str(p), "why": _not_read(p)} for p in every
                        if p not in inside and not _is_data(p)]  # fmt: skip
            if not found:
                where = " outside the output folder" if inside else ""
                raise PrepError(f"{path}: folder holds no .jsonl or .json file{where}")
            for file in found:
                add(file)
        elif path.is_file():
            add(path)
        else:
            raise PrepError(f"{path}: no such file or folder")
    return files, ignored


def _json_file(path: Path, out: Path, head: bytes) -> str:
    """Write the rows of a ``.json`` file to ``out`` as JSONL; return its kind (``json_array`` or ``jsonl``)."""
    try:
        value = orjson.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as error:
        if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":  # JSONL under a .json name: rows line by line
            return "jsonl"
        raise PrepError(f"{path}: not valid JSON ({error}); write one JSON object per line (.jsonl)") from error
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        kind = type(value).__name__.replace("str", "string")
        raise PrepError(f"{path}: a JSON {kind}, not an array of rows; write one JSON object per line (.jsonl)")
    with open(out, "wb") as handle:
        for element in value:
            handle.write(orjson.dumps(element) + b"\n")
    return "json_array"


def open_inputs(
    inputs: Sequence[str | Path], scratch: Path, labels: Sequence[str] | None = None, skip: Path | None = None
) -> tuple[list[InputFile], list[dict[str, str]]]:
    """Return every input as a JSONL file to scan (JSON arrays converted into ``scratch``), and the files left out.

    ``skip`` is the output folder: files a folder holds inside it are left out (see ``find_files``).
    """
    files, ignored = find_files(inputs, skip)
    names = list(labels) if labels is not None else [str(f) for f in files]
    if len(names) != len(files):
        raise ValueError(f"{len(names)} labels for {len(files)} input files")
    opened = []
    for number, (file, label) in enumerate(zip(files, names, strict=True)):
        try:
            with open(file, "rb") as handle:
                head = handle.read(4096)
        except OSError as error:
            raise PrepError(f"{file}: cannot be read ({error.strerror or error})") from error
        split = declared_split(file)
        suffix = file.suffix.lower()
        first_line = head.lstrip(b"\xef\xbb\xbf \t\r\n").split(b"\n", 1)[0].strip()
        # A .jsonl file may hold a JSON array written over several lines (json.dump with indent).
        pretty_array = suffix in JSONL_SUFFIXES and first_line == b"["
        if suffix in ARRAY_SUFFIXES or pretty_array or (suffix not in JSONL_SUFFIXES and first_line[:1] == b"["):
            converted = scratch / f"array-{number:04d}.jsonl"
            try:
                kind = _json_file(file, converted, head)
            except PrepError:
                if not pretty_array:
                    raise
                kind = "jsonl"  # not one JSON value after all: its lines are rows, as its name says
            opened.append(InputFile(converted if kind == "json_array" else file, label, kind, split))
        elif suffix in JSONL_SUFFIXES or head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b""):
            opened.append(InputFile(file, label, "jsonl", split))
        else:
            raise PrepError(f"{file}: {_describe(file, head)}, not JSONL (one JSON object per line) or a JSON array")
    return opened, ignored


def plan_chunks(files: Sequence[InputFile], chunk_bytes: int) -> list[tuple[int, Path, int, int]]:
    """Cut each file into byte ranges of about ``chunk_bytes`` that end on a newline."""
    chunks = []
    for index, item in enumerate(files):
        size = item.path.stat().st_size
        start = 0
        with open(item.path, "rb") as handle:
            while start < size:
                end = min(start + chunk_bytes, size)
                if end < size:
                    handle.seek(end)
                    handle.readline()
                    end = handle.tell()
                chunks.append((index, item.path, start, end))
                start = end
    return chunks
