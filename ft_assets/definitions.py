"""The one Definitions object of ft-assets: wiring only, no heavy imports."""

from __future__ import annotations

import os

import dagster as dg

from ft_assets.dataset.assets import (
    cleaned_examples,
    raw_examples,
    source_documents,
    splits,
    splits_do_not_overlap,
    splits_format_valid,
    train_split_has_enough_examples,
)
from ft_assets.resources import ArtifactIOManager, ArtifactStore, LineageStore
from ft_assets.synthetic.assets import synthetic_examples

ARTIFACTS_ROOT = os.environ.get("FT_ASSETS_ARTIFACTS", "data/artifacts")
LINEAGE_DB = os.environ.get("FT_ASSETS_LINEAGE_DB", "data/lineage.duckdb")

main_job = dg.define_asset_job(
    "main",
    selection=dg.AssetSelection.groups("data"),
    description="Materialize the whole local graph: raw and synthetic data, cleaning and splits.",
    executor_def=dg.in_process_executor,
)

defs = dg.Definitions(
    assets=[raw_examples, source_documents, synthetic_examples, cleaned_examples, splits],
    asset_checks=[train_split_has_enough_examples, splits_do_not_overlap, splits_format_valid],
    jobs=[main_job],
    resources={
        "artifacts": ArtifactStore(root=ARTIFACTS_ROOT),
        "lineage": LineageStore(path=LINEAGE_DB),
        "io_manager": ArtifactIOManager(root=ARTIFACTS_ROOT),
    },
)
