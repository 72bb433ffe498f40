"""Defaults shared by the assets and the automation that watches their sources (no imports: narrow code versions)."""

BASE_MODEL_ENV = "FT_ASSETS_BASE_MODEL"  # the base model's default source, and the one automation watches
BUILTIN_SOURCE = "builtin"
RAW_FOLDER = "data/raw"  # raw_examples' default folder, and the one automation watches
RAW_PATTERN = "*.jsonl|*.json"
LINEAGE_DB = "data/lineage.duckdb"  # the lineage resource's default, and the CLI's --db default
