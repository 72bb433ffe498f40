"""Azure OpenAI fine-tuning assets (group ``azure``) and the sensor that follows a job.

Without credentials every asset here yields nothing and is skipped (so is everything after it),
with a message naming the environment variables to set. No run waits for a job: the job asset
creates (or finds) the job and returns; ``azure_finetune_sensor`` looks at it every minute,
streams its events into the sensor's log, and asks for ``azure_fine_tuned_model`` once the
job has finished, which records the model, its metrics and checkpoints, or fails with the
service's own message.
"""

import json
from collections.abc import Iterator
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ft_assets.artifacts import ArtifactRef
from ft_assets.code_versions import source_version
from ft_assets.metadata import image, markdown_table
from ft_assets.resources import ArtifactStore, LineageStore, LLMResource

GROUP = "azure"
AZURE_CODE = source_version("ft_assets.azure.finetune", "ft_assets.azure.assets")
TRAINING_PRICES_PER_1M = {"gpt-4o-mini": 0.30, "gpt-4o": 3.00, "gpt-35-turbo": 0.80, "gpt-3.5-turbo": 0.80}


class TrainingFilesConfig(dg.Config):
    """Cost guard of the upload."""

    model: str = Field("gpt-4o-mini-2024-07-18", description="Base model to be fine-tuned (sets the price).")
    n_epochs: int | None = Field(None, description="Epochs the job will run (None: the service's default rule).")
    price_per_1m_training_tokens: float | None = Field(None, description="Override the model's training price.")
    max_training_cost_usd: float = Field(20.0, description="Refuse to upload when the estimate is above this.")
    max_tokens_per_example: int = Field(65_536, description="Tokens of an example beyond this are not trained on.")


class FineTuneJobConfig(dg.Config):
    """The fine-tuning job."""

    model: str = Field("gpt-4o-mini-2024-07-18", description="Base model (Azure: a fine-tunable model version).")
    method: Literal["supervised", "dpo"] = Field("supervised", description="supervised (SFT) or dpo.")
    n_epochs: int | None = Field(None, description="Epochs (None: the service decides).")
    batch_size: int | None = Field(None, description="Batch size (None: the service decides).")
    learning_rate_multiplier: float | None = Field(None, description="Learning rate multiplier.")
    beta: float | None = Field(None, description="DPO beta.")
    seed: int = Field(0, description="Seed of the job.")
    suffix: str | None = Field("ft-assets", description="Suffix of the fine-tuned model's name.")
    training_type: str | None = Field(
        None, description="Azure training type, e.g. Standard, GlobalStandard, Developer."
    )


def _client(context: dg.AssetExecutionContext, llm: LLMResource, asset: str) -> Any | None:
    """Return an openai client, or None (logging which variables to set) when no credentials are set."""
    from ft_assets.llm.client import CREDENTIAL_VARIABLES, sync_client

    settings = llm.client_settings()
    if settings.provider is None:
        context.log.warning(f"{asset}: skipped: no credentials. Set {CREDENTIAL_VARIABLES} to fine-tune on Azure.")
        return None
    return sync_client(settings, max_retries=5)


def training_price(model: str, override: float | None) -> float:
    """Return the training price per million tokens of ``model`` (longest known prefix), or the override."""
    if override is not None:
        return override
    known = [name for name in TRAINING_PRICES_PER_1M if model.startswith(name)]
    if not known:
        raise dg.Failure(f"no training price known for {model}: set price_per_1m_training_tokens")
    return TRAINING_PRICES_PER_1M[max(known, key=len)]


@dg.asset(
    group_name=GROUP,
    code_version=AZURE_CODE,
    kinds={"azure", "openai"},
    output_required=False,
    description="train_split and validation_split uploaded for fine-tuning (purpose fine-tune) and processed by the "
    "service. The training cost is estimated first; above max_training_cost_usd nothing is uploaded. Skipped "
    "without Azure OpenAI / OpenAI credentials.",
)
def azure_training_files(
    context: dg.AssetExecutionContext,
    config: TrainingFilesConfig,
    train_split: ArtifactRef,
    validation_split: ArtifactRef,
    llm: LLMResource,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> Iterator[dg.Output[ArtifactRef]]:
    """Estimate the cost, then upload both splits (each once: an uploaded split version is found again)."""
    from ft_assets.azure.finetune import FineTuneError, estimate, file_name, upload
    from ft_assets.training.lora import read_rows

    client = _client(context, llm, "azure_training_files")
    if client is None:
        return
    price = training_price(config.model, config.price_per_1m_training_tokens)
    cost = estimate(read_rows(train_split.file("data.jsonl")), config.n_epochs, price, config.max_tokens_per_example)
    context.log.info(
        f"azure_training_files: estimated {cost['billed_tokens']:,} training tokens, ${cost['estimated_cost_usd']}"
    )
    if cost["estimated_cost_usd"] > config.max_training_cost_usd:
        raise dg.Failure(
            f"azure_training_files: estimated training cost ${cost['estimated_cost_usd']} is above "
            f"max_training_cost_usd ${config.max_training_cost_usd}: raise the limit or train on less data",
            metadata={"estimate": dg.MetadataValue.json(cost)},
        )
    uploaded = {}
    try:
        for name, split in (("train", train_split), ("validation", validation_split)):
            if split.file("data.jsonl").stat().st_size == 0:
                continue
            file_id, new = upload(
                client, split.file("data.jsonl"), file_name(name, split.version), log=context.log.info
            )
            uploaded[name] = {"file_id": file_id, "name": file_name(name, split.version), "uploaded_now": new}
    except FineTuneError as error:
        raise dg.Failure(f"azure_training_files: {error}") from error
    record = {"files": {k: {"file_id": v["file_id"], "name": v["name"]} for k, v in uploaded.items()}, "estimate": cost,
              "endpoint": llm.client_settings().endpoint}  # fmt: skip
    with artifacts.stage("azure_training_files") as staging:
        (staging / "files.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        ref = artifacts.publish(staging, "azure_training_files")
    recorded = lineage.record(context, ref, [train_split, validation_split], config)
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata={
            **recorded,
            "training_file": uploaded["train"]["file_id"],
            "validation_file": uploaded.get("validation", {}).get("file_id", ""),
            "uploaded_now": sum(v["uploaded_now"] for v in uploaded.values()),
            "estimated_cost_usd": cost["estimated_cost_usd"],
            "billed_tokens": cost["billed_tokens"],
            "epochs": cost["epochs"],
        },
    )


@dg.asset(
    group_name=GROUP,
    code_version=AZURE_CODE,
    kinds={"azure", "openai"},
    output_required=False,
    description="The fine-tuning job for the uploaded files: created once (a retry or a restarted run finds the job "
    "already made for the same files and settings). Returns at once; azure_finetune_sensor follows the job.",
)
def azure_finetune_job(
    context: dg.AssetExecutionContext,
    config: FineTuneJobConfig,
    azure_training_files: ArtifactRef,
    llm: LLMResource,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> Iterator[dg.Output[ArtifactRef]]:
    """Find or create the job."""
    import openai

    from ft_assets.azure.finetune import JobSettings, find_or_create_job, job_key

    client = _client(context, llm, "azure_finetune_job")
    if client is None:
        return
    files = json.loads(azure_training_files.file("files.json").read_text())["files"]
    training = files["train"]["file_id"]
    validation = files.get("validation", {}).get("file_id")
    settings = JobSettings(**config.model_dump())
    try:
        job, created = find_or_create_job(client, settings, training, validation, log=context.log.info)
    except openai.APIStatusError as error:
        raise dg.Failure(f"azure_finetune_job: the service refused the job: {error.message}") from error
    record = {"job_id": job.id, "key": job_key(settings, training, validation), "settings": config.model_dump(),
              "training_file": training, "validation_file": validation}  # fmt: skip
    with artifacts.stage("azure_finetune_job") as staging:
        (staging / "job.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        ref = artifacts.publish(staging, "azure_finetune_job")
    recorded = lineage.record(context, ref, [azure_training_files], config)
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata={**recorded, "job_id": job.id, "status": job.status, "created_now": created},
    )


@dg.asset(
    group_name=GROUP,
    code_version=AZURE_CODE,
    kinds={"azure", "openai"},
    output_required=False,
    description="The fine-tuned model of a finished job (materialized by azure_finetune_sensor): its id, per-step "
    "train/valid loss and token accuracy from results.csv (table, picture, DuckDB rows) and its checkpoints. A failed "
    "or cancelled job fails here with the service's message.",
)
def azure_fine_tuned_model(
    context: dg.AssetExecutionContext,
    azure_finetune_job: ArtifactRef,
    llm: LLMResource,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> Iterator[dg.Output[ArtifactRef]]:
    """Record the fine-tuned model once its job succeeded."""
    from ft_assets.azure.finetune import follow, results
    from ft_assets.plots import loss_curve

    client = _client(context, llm, "azure_fine_tuned_model")
    if client is None:
        return
    job_id = json.loads(azure_finetune_job.file("job.json").read_text())["job_id"]
    update = follow(client, job_id, None)
    failure = update.failure()
    if failure:
        raise dg.Failure(f"azure_fine_tuned_model: {failure}")
    if not update.finished:
        context.log.info(f"azure_fine_tuned_model: job {job_id} is {update.job.status}; the sensor will come back")
        return
    metrics, checkpoints = results(client, update.job)
    model = {"fine_tuned_model": update.job.fine_tuned_model, "job_id": job_id, "base_model": update.job.model,
             "trained_tokens": update.job.trained_tokens}  # fmt: skip
    with artifacts.stage("azure_fine_tuned_model") as staging:
        (staging / "model.json").write_text(json.dumps(model, indent=2, sort_keys=True))
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1))
        (staging / "checkpoints.json").write_text(json.dumps(checkpoints, indent=2, sort_keys=True))
        series = {
            "train": [(r["step"], r["train_loss"]) for r in metrics if r.get("train_loss") is not None],
            "validation": [(r["step"], r["valid_loss"]) for r in metrics if r.get("valid_loss") is not None],
        }
        loss_curve(series, staging / "loss_curve.png", f"Azure fine-tuning {job_id}")
        ref = artifacts.publish(staging, "azure_fine_tuned_model")
    lineage.record_fine_tune_metrics(ref.version, job_id, metrics)
    recorded = lineage.record(context, ref, [azure_finetune_job], {})
    columns = ["step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata={
            **recorded,
            **{k: v for k, v in model.items() if v is not None},
            "steps": len(metrics),
            "final_train_loss": series["train"][-1][1] if series["train"] else None,
            "metrics": markdown_table(metrics, columns),
            "loss_curve": image(ref.file("loss_curve.png"), "Azure fine-tuning loss"),
            "checkpoints": markdown_table(checkpoints, ["id", "step", "model"]),
        },
    )


@dg.sensor(
    asset_selection=["azure_fine_tuned_model"],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Follows the latest Azure fine-tuning job: streams its new events into this sensor's log and "
    "materializes azure_fine_tuned_model once the job has finished (succeeded, failed or cancelled).",
)
def azure_finetune_sensor(context: dg.SensorEvaluationContext, llm: LLMResource) -> dg.SensorResult | dg.SkipReason:
    """Look at the job once; ask for the model when it is done."""
    from ft_assets.azure.finetune import follow
    from ft_assets.llm.client import CREDENTIAL_VARIABLES, sync_client

    settings = llm.client_settings()
    if settings.provider is None:
        return dg.SkipReason(f"no credentials: set {CREDENTIAL_VARIABLES}")
    event = context.instance.get_latest_materialization_event(dg.AssetKey("azure_finetune_job"))
    materialization = event.asset_materialization if event else None
    if materialization is None or "job_id" not in materialization.metadata:
        return dg.SkipReason("no fine-tuning job has been created yet")
    job_id = str(materialization.metadata["job_id"].value)
    cursor = json.loads(context.cursor) if context.cursor else {}
    update = follow(sync_client(settings, max_retries=3), job_id, cursor.get(job_id))
    for job_event in update.events:
        context.log.info(f"{job_id} [{job_event.level}] {job_event.message}")
    cursor[job_id] = update.cursor
    if not update.finished:
        return dg.SensorResult(skip_reason=f"job {job_id} is {update.job.status}", cursor=json.dumps(cursor))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{job_id}:{update.job.status}", asset_selection=[dg.AssetKey("azure_fine_tuned_model")]
            )
        ],
        cursor=json.dumps(cursor),
    )
