"""Raw chat rows as sources of synthetic examples: usable, distinct, each with a source id and a group.

A source's id is the example id cleaning gives it (its ``id``, else a hash of its cleaned
content: ``ft_assets.dataset.validate.identify``), so a variant's ``source_id`` names its source as
the split stage sees it. Its group is its ``group``, else that id. Sources are distinct by
cleaning's duplicate key. No dagster import here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ft_assets.dataset.formats import join_content_parts
from ft_assets.dataset.validate import identify


def usable_examples(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], int]:
    """Return the distinct valid raw chat rows that end with an assistant answer, and how many duplicates were skipped.

    Each row is ``{"source_id", "group", "messages"}``; of rows equal up to case, whitespace and
    markdown marks only the first is a source.
    """
    rows, seen, duplicates = [], set(), 0
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
                    continue
                messages = row["messages"]
                if not messages or messages[-1].get("role") != "assistant":
                    continue
                identity = identify(row)
                if identity is None:
                    continue
                source_id, key = identity
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                group = str(row["group"]) if row.get("group") not in (None, "") else source_id
                # the messages as cleaning reads them: text parts joined into strings
                rows.append({"source_id": source_id, "group": group, "messages": join_content_parts(messages)[0]})
    return rows, duplicates
