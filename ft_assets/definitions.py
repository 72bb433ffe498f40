"""The one Definitions object of ft-assets: wiring only, no heavy imports."""

from __future__ import annotations

import os

import dagster as dg

from ft_assets.automation import RETRAINING_TAG, WATCHED_SOURCES, automate, base_model_source, raw_data
from ft_assets.azure.assets import (
    azure_fine_tuned_model,
    azure_finetune_job,
    azure_finetune_sensor,
    azure_model_evaluation,
    azure_training_files,
)
from ft_assets.champion.assets import champion_model
from ft_assets.dataset.assets import (
    SPLIT_FORMAT_CHECKS,
    cleaned_examples,
    raw_examples,
    source_documents,
    splits,
    splits_do_not_overlap,
    train_split_has_enough_examples,
)
from ft_assets.evaluation.assets import adapter_beats_base, evaluation_table
from ft_assets.resources import ArtifactIOManager, ArtifactStore, LineageStore, LLMResource
from ft_assets.synthetic.assets import synthetic_examples
from ft_assets.training.assets import (
    TrainingLauncher,
    base_model,
    lora_adapter,
    merged_model,
    merged_model_matches_adapter,
)
from ft_assets.training.process_group import ProcessGroupPipesClient

ARTIFACTS_ROOT = os.environ.get("FT_ASSETS_ARTIFACTS", "data/artifacts")
LINEAGE_DB = os.environ.get("FT_ASSETS_LINEAGE_DB", "data/lineage.duckdb")
LOCAL_GROUPS = ("data", "training", "evaluation", "deployment")

main_job = dg.define_asset_job(
    "main",
    # Nothing that must run offline may wait for Azure: leave out what is downstream of the azure group.
    # The watched sources are observed first, so what was trained from is recorded.
    selection=(dg.AssetSelection.groups(*LOCAL_GROUPS) | WATCHED_SOURCES)
    - dg.AssetSelection.groups("azure").downstream(),
    description="Materialize the whole local graph: data, splits, base model, LoRA adapter, merged model, evaluation "
    "and the champion decision.",
    executor_def=dg.in_process_executor,
    tags={RETRAINING_TAG: "main"},  # one retraining at a time (dagster.yaml), with or without automation
)

data_job = dg.define_asset_job(
    "data",
    selection=dg.AssetSelection.groups("data") | dg.AssetSelection.assets("raw_data"),
    description="Materialize the data assets only: raw and synthetic examples, cleaning and splits.",
    executor_def=dg.in_process_executor,
)

azure_job = dg.define_asset_job(
    "azure_finetune",
    selection=dg.AssetSelection.assets("azure_training_files", "azure_finetune_job"),
    description="Upload the splits and start (or find) the Azure OpenAI fine-tuning job; the sensor follows it.",
)

defs = dg.Definitions(
    assets=[
        raw_data, base_model_source, raw_examples, source_documents, synthetic_examples, cleaned_examples, splits,
        base_model, lora_adapter, merged_model, evaluation_table, champion_model,
        azure_training_files, azure_finetune_job, azure_fine_tuned_model, azure_model_evaluation,
    ],
    asset_checks=[
        train_split_has_enough_examples, splits_do_not_overlap, *SPLIT_FORMAT_CHECKS,
        merged_model_matches_adapter, adapter_beats_base,
    ],
    jobs=[main_job, data_job, azure_job],
    sensors=[azure_finetune_sensor],
    resources={
        "artifacts": ArtifactStore(root=ARTIFACTS_ROOT),
        "lineage": LineageStore(path=LINEAGE_DB),
        "io_manager": ArtifactIOManager(root=ARTIFACTS_ROOT),
        "pipes_client": ProcessGroupPipesClient(termination_timeout_seconds=5),
        "training_launcher": TrainingLauncher(),
        "llm": LLMResource.from_environment(cache_dir=os.environ.get("FT_ASSETS_LLM_CACHE", "data/cache/llm")),
    },
)  # fmt: skip
defs = automate(defs, main_job.selection)  # retraining by itself (ft_assets/automation.py)
