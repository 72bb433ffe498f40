"""Term/definition entries read from source documents, with how many each file gave. No dagster import here.

Formats, by suffix: ``.json`` (an array of objects, one object, or a ``{term: definition}``
mapping), ``.jsonl`` (one object a line), ``.csv``/``.tsv`` (a header row), ``.md``/``.txt``
(``Term: definition`` lines; headings, blank lines and lines without ``": "`` are not entries).
Objects and rows hold the term and definition under configured keys, else ``term``/``definition``
or ``question``/``answer`` (case-insensitive); a table with neither takes its first column as the
term and the other columns' values as the definition (unless keys are configured). No key or
column name enters the text.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_KEYS = (("term", "definition"), ("question", "answer"))
TABLES = {".csv": ",", ".tsv": "\t"}
TEXTS = (".md", ".markdown", ".txt")
_LIST_MARKER = re.compile(r"^(?:[-*+]|\d+[.)])\s+")


@dataclass(frozen=True)
class Fields:
    """Which keys (JSON) or header names (CSV) hold the term and the definition; None: the defaults."""

    term: str | None = None
    definition: str | None = None

    def candidates(self) -> tuple[tuple[str, str], ...]:
        """Return the (term, definition) key pairs to try, in order."""
        if self.term is None and self.definition is None:
            return DEFAULT_KEYS
        return ((self.term or "term", self.definition or "definition"),)


def _text(value: Any) -> str:
    return (value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False)).strip()


def _pair(record: Mapping[str, Any], fields: Fields) -> tuple[str, str] | None:
    """Return the (term, definition) of ``record`` under the first key pair it holds, matched case-insensitively."""
    keys = {str(k).strip().lower(): k for k in record}
    for term, definition in fields.candidates():
        if term.lower() in keys and definition.lower() in keys:
            return _text(record[keys[term.lower()]]), _text(record[keys[definition.lower()]])
    return None


def _from_objects(objects: Iterable[Any], fields: Fields) -> Iterator[tuple[str, str]]:
    for item in objects:
        if isinstance(item, dict) and (pair := _pair(item, fields)):
            yield pair


def _from_json(text: str, fields: Fields) -> Iterator[tuple[str, str]]:
    data = json.loads(text)
    if isinstance(data, dict) and _pair(data, fields) is None and all(isinstance(v, str) for v in data.values()):
        yield from ((_text(term), _text(definition)) for term, definition in data.items())
    else:
        yield from _from_objects(data if isinstance(data, list) else [data], fields)


def _from_jsonl(text: str, fields: Fields) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        try:
            yield from _from_objects([json.loads(line)], fields)
        except json.JSONDecodeError:
            continue


def _from_table(text: str, delimiter: str, fields: Fields) -> Iterator[tuple[str, str]]:
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if not rows:
        return
    header = [name.strip().lower() for name in rows[0]]
    named = [(header.index(t.lower()), [header.index(d.lower())]) for t, d in fields.candidates()
             if t.lower() in header and d.lower() in header]  # fmt: skip
    if not named and fields != Fields():
        return
    term, definition = named[0] if named else (0, list(range(1, len(header))))
    for row in rows[1:]:
        values = [row[i].strip() for i in definition if i < len(row) and row[i].strip()]
        yield (row[term].strip() if term < len(row) else ""), "; ".join(values)


def _from_markdown(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or ": " not in stripped:
            continue
        term, definition = _LIST_MARKER.sub("", stripped).split(": ", 1)
        yield term.strip("*_` "), definition.strip()


def _pairs(path: Path, fields: Fields) -> Iterator[tuple[str, str]]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _from_json(text, fields)
    if suffix == ".jsonl":
        return _from_jsonl(text, fields)
    if suffix in TABLES:
        return _from_table(text, TABLES[suffix], fields)
    if suffix in TEXTS:
        return _from_markdown(text)
    raise ValueError(f"unsupported format {suffix or '(no suffix)'}: use .json, .jsonl, .csv, .tsv, .md or .txt")


def read_entries(
    paths: Sequence[Path], root: Path, fields: Fields = Fields()
) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Return the entries of the files (``document``, ``term``, ``definition``) and one report row per file.

    A report row holds ``file``, ``entries`` and a ``problem`` (empty when the file gave entries).
    """
    entries, report = [], []
    for path in paths:
        name = path.relative_to(root).as_posix()
        try:
            pairs = [(t, d) for t, d in _pairs(path, fields) if t and d]
            problem = "" if pairs else "no term/definition entry found (check the format and the key names)"
        except (ValueError, csv.Error) as error:  # json.JSONDecodeError is a ValueError
            pairs, problem = [], str(error)
        entries += [{"document": name, "term": term, "definition": definition} for term, definition in pairs]
        report.append({"file": name, "entries": len(pairs), "problem": problem})
    return entries, report
