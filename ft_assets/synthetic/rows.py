"""Raw chat rows as sources of synthetic examples: usable, distinct, each with a source id and a group.

A source's group is its ``group``, else its ``id``, else ``source_group(messages)``: ``src-``
and 16 hex digits of the SHA-256 of its normalized messages (what an unlabelled source's
variants carry as ``group`` and ``source_id``). Messages are normalized as cleaning's duplicate
key does it: lower-cased, whitespace and markdown marks dropped. No dagster import here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ft_assets.dataset.formats import check_chat
from ft_assets.dataset.text import NORMALIZED_AWAY

_DROPPED = str.maketrans("", "", NORMALIZED_AWAY.decode())


def _normalized(messages: Sequence[dict[str, Any]]) -> str:
    """Return the messages as canonical JSON, each content lower-cased without whitespace and markdown marks."""
    pairs = []
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
        pairs.append([message.get("role"), text.lower().translate(_DROPPED)])
    return json.dumps(pairs, ensure_ascii=False)


def source_group(messages: Sequence[dict[str, Any]]) -> str:
    """Return the group (and source id) of a source row that has neither ``group`` nor ``id``."""
    return "src-" + hashlib.sha256(_normalized(messages).encode()).hexdigest()[:16]


def usable_examples(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], int]:
    """Return the distinct valid raw rows that end with an assistant answer, and how many duplicates were skipped.

    Each row is ``{"source_id", "group", "messages"}``; of rows with the same messages up to case,
    whitespace and markdown marks only the first is a source.
    """
    rows, seen, duplicates = [], set(), 0
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(row, dict) or "messages" not in row or check_chat(row):
                    continue
                messages = row["messages"]
                if messages[-1].get("role") != "assistant" or not isinstance(messages[-1].get("content"), str):
                    continue
                key = _normalized(messages)
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                derived = source_group(messages)
                source_id = str(row["id"]) if row.get("id") not in (None, "") else derived
                group = str(row["group"]) if row.get("group") not in (None, "") else source_id
                rows.append({"source_id": source_id, "group": group, "messages": messages})
    return rows, duplicates
