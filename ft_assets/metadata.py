"""Small builders of Dagster metadata shown in the UI: Markdown tables and previews."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

PREVIEW_CHARS = 120


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("|", "\\|").replace("\n", " ⏎ ")
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> dg.MetadataValue:
    """Return rows as a Markdown table (first row's keys as columns unless given)."""
    if not rows:
        return dg.MetadataValue.md("_(none)_")
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def counts_table(counts: Mapping[str, int], key: str, value: str = "rows") -> dg.MetadataValue:
    """Return a mapping of counts as a two-column Markdown table, largest first."""
    rows = [{key: k, value: v} for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return markdown_table(rows, [key, value])


def head_jsonl(path: Path, limit: int) -> list[dict[str, Any]]:
    """Return the first ``limit`` JSON objects of a JSONL file."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return rows


def chat_preview(rows: Iterable[Mapping[str, Any]]) -> dg.MetadataValue:
    """Return chat examples as a table of their last user turn and assistant answer."""
    table = []
    for row in rows:
        messages = row.get("messages") or row.get("input", {}).get("messages", [])
        user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        answer = next((m.get("content") for m in reversed(messages) if m.get("role") == "assistant"), None)
        if answer is None:
            answer = (row.get("preferred_output") or [{}])[0].get("content", "")
        table.append({"user": user, "assistant": answer})
    return markdown_table(table, ["user", "assistant"])


def image(path: Path, alt: str) -> dg.MetadataValue:
    """Return a PNG file as Markdown with the picture inline, so the UI shows it."""
    import base64

    encoded = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def rounded(value: Any, digits: int = 4) -> Any:
    """Round a float for display; leave anything else as it is."""
    return round(value, digits) if isinstance(value, float) else value
