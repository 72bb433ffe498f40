"""Settings as people read them: plain text without Python reprs, for metadata tables and model cards.

``None`` reads "none", a list ``q_proj, v_proj``, ``12.0`` reads ``12`` and other floats keep four significant
digits. Settings go into a two-column table of strings, so the Plots tab never charts a constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from ft_assets.metadata import table

SETTING_COLUMNS = {"setting": "string", "value": "string"}


def text(value: Any) -> str:
    """Return ``value`` as plain text: no ``None``, brackets, quotes or trailing ``.0``."""
    if value is None:
        result = "none"
    elif isinstance(value, bool):
        result = "true" if value else "false"
    elif isinstance(value, float):
        result = str(int(value)) if value.is_integer() else f"{value:.4g}"
    elif isinstance(value, list | tuple | set):
        result = ", ".join(text(v) for v in value) or "none"
    elif isinstance(value, Mapping):
        result = ", ".join(f"{k} {text(v)}" for k, v in value.items()) or "none"
    else:
        result = str(value)
    return result


def settings_table(settings: Mapping[str, Any]) -> dg.TableMetadataValue:
    """Return settings as a typed two-column table (``setting``, ``value``), every value as text."""
    return table([{"setting": str(k), "value": text(v)} for k, v in settings.items()], SETTING_COLUMNS, max_text=None)
