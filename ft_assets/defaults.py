"""Defaults shared by the assets and the automation that watches their sources.

No project imports, so that they keep code versions narrow.
"""

import os

BASE_MODEL_ENV = "FT_ASSETS_BASE_MODEL"  # the base model's default source, and the one automation watches
BUILTIN_SOURCE = "builtin"
RAW_FOLDER_ENV = "FT_ASSETS_RAW_FOLDER"  # raw_examples' default folder, and the one automation watches
RAW_FOLDER = "data/raw"  # ... when that variable is not set
RAW_PATTERN = "*.jsonl|*.json"
LINEAGE_DB = "data/lineage.duckdb"  # the lineage resource's default, and the CLI's --db default


def raw_folder() -> str:
    """Return the raw examples' folder: ``FT_ASSETS_RAW_FOLDER`` when set, else ``data/raw``."""
    return os.environ.get(RAW_FOLDER_ENV) or RAW_FOLDER
