"""Small builders of Dagster metadata shown in the UI, and the order an asset page is read in.

The UI shows metadata entries in the order given. ``reading_order`` puts them as a reader wants
them: the few figures that matter (plain ints, floats and short text, which the Plots tab charts
across versions), then typed tables (``table``: shown inline, schema one click away), then
pictures, then where the artifact lies and the lineage record, last.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg


def counts_table(counts: Mapping[str, int], key: str, value: str = "rows") -> dg.TableMetadataValue:
    """Return a mapping of counts as a typed two-column table (``key`` text, ``value`` int), largest first."""
    rows = [{key: str(k), value: v} for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))]
    return table(rows, {key: "string", value: "int"})


def head_jsonl(path: Path, limit: int) -> list[dict[str, Any]]:
    """Return the first ``limit`` JSON objects of a JSONL file."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if len(rows) >= limit:
                break
            rows.append(json.loads(line))
    return rows


def chat_preview(rows: Iterable[Mapping[str, Any]]) -> dg.TableMetadataValue:
    """Return chat examples as a typed table of their last user turn and assistant answer."""
    shown = []
    for row in rows:
        messages = row.get("messages") or row.get("input", {}).get("messages", [])
        user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        answer = next((m.get("content") for m in reversed(messages) if m.get("role") == "assistant"), None)
        if answer is None:
            answer = (row.get("preferred_output") or [{}])[0].get("content", "")
        shown.append({"user": user, "assistant": answer})
    return table(shown, {"user": "string", "assistant": "string"})


def image(path: Path, alt: str) -> dg.MetadataValue:
    """Return a PNG file as Markdown with the picture inline, so the UI shows it."""
    import base64

    encoded = base64.b64encode(path.read_bytes()).decode()
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{encoded})")


def rounded(value: Any, digits: int = 4) -> Any:
    """Round a float for display; leave anything else as it is."""
    return round(value, digits) if isinstance(value, float) else value


COLUMN_TYPES = ("string", "int", "float", "bool")
TABLE_TEXT_CHARS = 160
SPARK = "▁▂▃▄▅▆▇█"
SVG_SAFE = "=',/:"
INLINE_MARKDOWN_CHARS = 1000  # Dagster's UI shows shorter Markdown inline, longer behind "[Show Markdown]"


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _typed(value: Any, kind: str, max_text: int | None) -> Any:
    if value is None or value == "" or not _finite(value):  # NaN in a record would make the UI drop the row
        return None
    if kind == "float":
        return float(f"{float(value):.4g}")
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ⏎ ")
    return text if max_text is None or len(text) <= max_text else text[: max_text - 1] + "…"


def table(
    rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str], max_text: int | None = TABLE_TEXT_CHARS
) -> dg.TableMetadataValue:
    """Return rows as a typed table (``columns``: name → string | int | float | bool); floats to 4 significant digits.

    Text longer than ``max_text`` is cut (None: never); NaN and infinities become empty cells. The UI
    shows a table inline, with its schema one click away.
    """
    unknown = {kind for kind in columns.values() if kind not in COLUMN_TYPES}
    if unknown:
        raise ValueError(f"column types {sorted(unknown)} are not among {COLUMN_TYPES}")
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()])
    records = [
        dg.TableRecord({name: _typed(row.get(name), kind, max_text) for name, kind in columns.items()}) for row in rows
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def sparkline(values: Sequence[float], width: int = 24) -> str:
    """Return a one-line picture of a series (``▁`` lowest … ``█`` highest), at most ``width`` characters.

    Values that are not finite (a NaN loss) are left out.
    """
    values = [v for v in values if _finite(v)]
    if not values:
        return ""
    step = max(1, -(-len(values) // width))
    sampled = [values[i] for i in range(0, len(values), step)]
    if sampled[-1] != values[-1]:
        sampled.append(values[-1])
    low, high = min(sampled), max(sampled)
    span = (high - low) or 1.0
    return "".join(SPARK[round((v - low) / span * (len(SPARK) - 1))] for v in sampled)


def inline_curves(series: Mapping[str, Sequence[tuple[float, float]]], alt: str) -> dg.MetadataValue:
    """Return curves as Markdown short enough to show inline: a small SVG picture plus a sparkline per curve.

    ``series`` maps a name (e.g. ``train loss``) to (x, y) points; the SVG is dropped (sparklines stay)
    when it would push the Markdown past what the UI shows inline.
    """
    from urllib.parse import quote

    series = {name: [(x, y) for x, y in points if _finite(y)] for name, points in series.items()}  # NaN losses out
    lines = []
    for name, points in series.items():
        ys = [y for _, y in points]
        if ys:
            lines.append(f"`{name}` {ys[0]:.4g} → {ys[-1]:.4g} {sparkline(ys)}")
    text = "  \n".join(lines)
    drawn = {name: points for name, points in series.items() if points}
    if not drawn:
        return dg.MetadataValue.md(text or "_(no points)_")
    xs = [x for points in drawn.values() for x, _ in points]
    ys = [y for points in drawn.values() for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    width, height, colours = 240, 80, ("#4f43dd", "#e0731f", "#2e9d5b")

    def polyline(points: Sequence[tuple[float, float]], colour: str, keep: int) -> str:
        step = max(1, -(-len(points) // keep))
        chosen = list(points[::step]) + ([points[-1]] if (len(points) - 1) % step else [])
        coords = ",".join(
            f"{round((x - x0) / ((x1 - x0) or 1) * width)},{round(height - (y - y0) / ((y1 - y0) or 1) * height)}"
            for x, y in chosen
        )
        return f"<polyline points='{coords}' fill='none' stroke='{colour}' stroke-width='2'/>"

    for keep in (40, 24, 12):
        shapes = "".join(polyline(p, c, keep) for p, c in zip(drawn.values(), colours, strict=False))
        svg = f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='-2 -2 {width + 4} {height + 4}'>{shapes}</svg>"
        markdown = f"![{alt}](data:image/svg+xml,{quote(svg, safe=SVG_SAFE)})\n\n{text}"
        if len(markdown) < INLINE_MARKDOWN_CHARS:
            return dg.MetadataValue.md(markdown)
    return dg.MetadataValue.md(text)


LINEAGE = "lineage"  # the key ``ft_assets.lineage.sync`` rebuilds the lineage database from
FLAW_MARKS = ("⟦", "⟧")


def reading_order(
    figures: Mapping[str, Any],
    tables: Mapping[str, Any] | None = None,
    pictures: Mapping[str, Any] | None = None,
    recorded: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Return an asset's metadata in reading order: figures, tables, pictures, then ``recorded``, ``lineage`` last.

    ``figures`` are the few numbers and short texts that matter (ints and floats are charted across
    versions in the Plots tab, so constants belong in a table or text, not here); ``recorded`` is
    what ``LineageStore.record`` returned. A key given twice is a mistake, so it raises ValueError.
    """
    ordered: dict[str, Any] = {}
    for part in (figures, tables or {}, pictures or {}, recorded or {}):
        twice = ordered.keys() & part.keys()
        if twice:
            raise ValueError(f"metadata keys given twice: {sorted(twice)}")
        ordered.update(part)
    if LINEAGE in ordered:
        ordered[LINEAGE] = ordered.pop(LINEAGE)
    return ordered


def excerpt(text: str, start: int, end: int | None = None, context: int = 60) -> str:
    """Return ``text`` around ``text[start:end]`` (one character when ``end`` is None), the span marked ⟦…⟧.

    Up to ``context`` characters show on either side, ``…`` where more was cut; a span at the very
    end reads ``⟦end of line⟧``.
    """
    start = max(0, min(start, len(text)))
    end = start + 1 if end is None else max(start, min(end, len(text)))
    span = text[start:end] if end > start else ""
    if not span and start >= len(text):
        span = "end of line"
    before = text[max(0, start - context) : start]
    after = text[end : end + context]
    return (
        ("…" if start > context else "")
        + before
        + FLAW_MARKS[0]
        + span
        + FLAW_MARKS[1]
        + after
        + ("…" if end + context < len(text) else "")
    )
