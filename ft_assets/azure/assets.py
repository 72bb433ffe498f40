"""Azure OpenAI fine-tuning assets (group ``azure``) and the sensor that follows a job.

Without credentials every asset here yields nothing and is skipped (so is everything after it),
with a message naming the environment variables to set. No run waits for a job: the job asset
creates (or finds) the job and returns; ``azure_finetune_sensor`` looks at it every minute,
streams its events into the sensor's log, and asks for ``azure_fine_tuned_model`` once the
job has finished, which records the model, its metrics and checkpoints, or fails with the
service's own message. A failed run of a succeeded job's model is asked for again (runs are
tagged with the job; ``MODEL_RUN_ATTEMPTS`` in all). Calls to the service are retried as each
asset's ``retry_*`` config says (``RetryConfig``).
"""

import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg
from pydantic import Field

from ft_assets.artifacts import ArtifactRef
from ft_assets.code_versions import source_version
from ft_assets.metadata import image, inline_curves, reading_order, rounded, table
from ft_assets.numbers import finite
from ft_assets.readable import settings_table, text
from ft_assets.resources import ArtifactStore, LineageStore, LLMResource

if TYPE_CHECKING:
    from ft_assets.azure.finetune import Retry

GROUP = "azure"
FILES_CODE = source_version(__name__, "azure_training_files")
JOB_CODE = source_version(__name__, "azure_finetune_job")
MODEL_CODE = source_version(__name__, "azure_fine_tuned_model")
EVALUATION_CODE = source_version(__name__, "azure_model_evaluation")
# US dollars per million training tokens. The reference notes disagree (one gives $0.30 for gpt-4o-mini, another
# $0.008 per 1K = $8 per 1M for gpt-3.5-turbo); a cost guard must not under-estimate, so these are the higher list
# prices. Override them per asset with price_per_1m_training_tokens.
TRAINING_PRICES_PER_1M = {"gpt-4o-mini": 3.00, "gpt-4o": 25.00, "gpt-35-turbo": 8.00, "gpt-3.5-turbo": 8.00}


# Runs of azure_fine_tuned_model the sensor asks for per succeeded job before it gives up on that job.
MODEL_RUN_ATTEMPTS = 3
JOB_TAG = "ft_assets/azure_job"


class RetryConfig(dg.Config):
    """How calls to the service are retried (429s, 5xx, timeouts, dropped connections)."""

    retry_attempts: int = Field(8, ge=1, description="Attempts per call, the first included.")
    retry_base_s: float = Field(1.0, ge=0, description="First backoff wait; doubled per attempt, jittered.")
    retry_cap_s: float = Field(30.0, ge=0, description="Longest backoff wait (a Retry-After is honoured).")

    def retry(self) -> "Retry":
        """Return the ``Retry`` these settings describe."""
        from ft_assets.azure.finetune import Retry

        return Retry(attempts=self.retry_attempts, base_s=self.retry_base_s, cap_s=self.retry_cap_s)


RETRY_FIELDS = tuple(RetryConfig.model_fields)


class TrainingFilesConfig(RetryConfig):
    """Cost guard of the upload."""

    model: str = Field("gpt-4o-mini-2024-07-18", description="Base model to be fine-tuned (sets the price).")
    n_epochs: int | None = Field(None, description="Epochs the job will run (None: the service's default rule).")
    price_per_1m_training_tokens: float | None = Field(None, description="Override the model's training price.")
    max_training_cost_usd: float = Field(20.0, description="Refuse to upload when the estimate is above this.")
    max_tokens_per_example: int = Field(65_536, description="Tokens of an example beyond this are not trained on.")


class FineTuneJobConfig(RetryConfig):
    """The fine-tuning job."""

    model: str = Field("gpt-4o-mini-2024-07-18", description="Base model (Azure: a fine-tunable model version).")
    init_from: Literal["base", "champion"] = Field(
        "base",
        description="'champion': fine-tune the champion fine-tuned model further (continuous fine-tuning; the "
        "champion must be an Azure fine-tune of `model`); 'base': fine-tune `model`.",
    )
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
    price_per_1m_training_tokens: float | None = Field(None, description="Override the model's training price.")
    max_training_cost_usd: float = Field(20.0, description="Refuse to create the job when its estimate is above this.")


def _configured(context: dg.AssetExecutionContext, llm: LLMResource, asset: str) -> bool:
    """Return whether credentials are set; if not, log which variables to set."""
    from ft_assets.llm.client import CREDENTIAL_VARIABLES

    if llm.client_settings().provider is None:
        context.log.warning(f"{asset}: skipped: no credentials. Set {CREDENTIAL_VARIABLES} to fine-tune on Azure.")
        return False
    return True


def _client(context: dg.AssetExecutionContext, llm: LLMResource, asset: str) -> Any | None:
    """Return an openai client (close it after use), or None when no credentials are set.

    The client does not retry: ``ft_assets.azure.finetune.Retry`` does, and never re-sends a create blindly.
    """
    from ft_assets.llm.client import sync_client

    return sync_client(llm.client_settings(), max_retries=0) if _configured(context, llm, asset) else None


def known_training_price(model: str, override: float | None) -> float | None:
    """Return the override, else the training price per million tokens of ``model`` (longest known prefix), if any."""
    if override is not None:
        return override
    known = [name for name in TRAINING_PRICES_PER_1M if model.startswith(name)]
    return TRAINING_PRICES_PER_1M[max(known, key=len)] if known else None


def training_price(model: str, override: float | None) -> float:
    """Return the training price of ``model``, or fail asking for ``price_per_1m_training_tokens``."""
    price = known_training_price(model, override)
    if price is None:
        raise dg.Failure(f"no training price known for {model}: set price_per_1m_training_tokens")
    return price


@dg.asset(
    group_name=GROUP,
    code_version=FILES_CODE,
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
    """Estimate the cost, then upload both splits (each once: an uploaded split version is found again).

    What is uploaded is each split without its rows' top-level ``id`` (``service_file``); ``weight`` and
    everything else the data step validated goes as it is.
    """
    from ft_assets.azure.finetune import FineTuneError, estimate, file_name, service_file, upload
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
        with client, tempfile.TemporaryDirectory(prefix="ft-assets-upload-") as scratch:
            for name, split in (("train", train_split), ("validation", validation_split)):
                if split.file("data.jsonl").stat().st_size == 0:
                    continue
                name_of = file_name(name, split.version)
                path = service_file(split.file("data.jsonl"), Path(scratch) / name_of)
                file_id, new = upload(client, path, name_of, retry=config.retry(), log=context.log.info)
                uploaded[name] = {"file_id": file_id, "name": name_of, "uploaded_now": new}
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
        metadata=reading_order(
            {
                "estimated_cost_usd": cost["estimated_cost_usd"],
                "billed_tokens": cost["billed_tokens"],
                "uploaded_now": sum(v["uploaded_now"] for v in uploaded.values()),
                "training_file": uploaded["train"]["file_id"],
                "validation_file": uploaded.get("validation", {}).get("file_id", ""),
                "epochs": text(cost["epochs"]),  # a setting (text): the Plots tab charts no constant
            },
            recorded=recorded,
        ),
    )


@dg.asset(
    group_name=GROUP,
    code_version=JOB_CODE,
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

    from ft_assets.azure.finetune import JobSettings, default_epochs, find_or_create_job, job_key

    client = _client(context, llm, "azure_finetune_job")
    if client is None:
        return
    uploaded = json.loads(azure_training_files.file("files.json").read_text())
    files = uploaded["files"]
    training = files["train"]["file_id"]
    validation = files.get("validation", {}).get("file_id")
    epochs = config.n_epochs or default_epochs(uploaded["estimate"]["examples"])
    price = training_price(config.model, config.price_per_1m_training_tokens)
    cost = uploaded["estimate"]["tokens_per_epoch"] * epochs * price / 1e6
    if cost > config.max_training_cost_usd:
        raise dg.Failure(
            f"azure_finetune_job: estimated training cost ${cost:.2f} ({config.model}, {epochs} epochs) is above "
            f"max_training_cost_usd ${config.max_training_cost_usd}: raise the limit or train on less data"
        )
    start = _champion_model(lineage) if config.init_from == "champion" else None
    job_config = config.model_dump(exclude={*RETRY_FIELDS, "init_from"})
    if start is not None:
        job_config["model"] = json.loads(start.file("model.json").read_text())["fine_tuned_model"]
        context.log.info(f"azure_finetune_job: continuing from the champion {job_config['model']}")
    guard = ("price_per_1m_training_tokens", "max_training_cost_usd")
    settings = JobSettings(**{k: v for k, v in job_config.items() if k not in guard})
    try:
        with client:
            job, created = find_or_create_job(
                client, settings, training, validation, retry=config.retry(), log=context.log.info
            )
    except openai.APIStatusError as error:
        raise dg.Failure(f"azure_finetune_job: the service refused the job: {error.message}") from error
    record = {"job_id": job.id, "key": job_key(settings, training, validation), "settings": job_config,
              "training_file": training, "validation_file": validation}  # fmt: skip
    with artifacts.stage("azure_finetune_job") as staging:
        (staging / "job.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        ref = artifacts.publish(staging, "azure_finetune_job")
    recorded = lineage.record(context, ref, [azure_training_files, *([start] if start else [])], config)
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata=reading_order(
            {
                "job_id": job.id,
                "status": job.status,
                "model": job_config["model"],
                "created_now": created,
                "estimated_cost_usd": round(cost, 4),
            },
            recorded=recorded,
        ),
    )


def _champion_model(lineage: LineageStore) -> ArtifactRef:
    """Return the champion's Azure fine-tuned model artifact, to continue from; fail saying why it cannot be."""
    from ft_assets.champion.store import current_champion, history

    champion = current_champion(history(lineage.path))
    if champion is None or champion.asset != "azure_fine_tuned_model" or not champion.path:
        named = champion.name if champion else "none yet"
        raise dg.Failure(
            f"azure_finetune_job: init_from is 'champion' but the champion ({named}) is not an Azure fine-tuned "
            "model; use init_from: base (a local champion continues through lora_adapter's init_from)"
        )
    if not Path(champion.path, "model.json").is_file():
        raise dg.Failure(f"azure_finetune_job: the champion's folder {champion.path} is gone")
    return ArtifactRef(champion.asset, champion.version, champion.path)


@dg.asset(
    group_name=GROUP,
    code_version=MODEL_CODE,
    kinds={"azure", "openai"},
    output_required=False,
    description="The fine-tuned model of a finished job (materialized by azure_finetune_sensor): its id, per-step "
    "train/valid loss and token accuracy from results.csv (table, picture, DuckDB rows) and its checkpoints. A failed "
    "or cancelled job fails here with the service's message.",
)
def azure_fine_tuned_model(
    context: dg.AssetExecutionContext,
    config: RetryConfig,
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
    retry = config.retry()
    with client:
        update = follow(client, job_id, None, retry, context.log.info)
        failure = update.failure()
        if failure:
            raise dg.Failure(f"azure_fine_tuned_model: {failure}")
        if not update.finished:
            context.log.info(f"azure_fine_tuned_model: job {job_id} is {update.job.status}; the sensor will come back")
            return
        metrics, checkpoints = results(client, update.job, retry, context.log.info)
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
    columns = {"step": "int", "train_loss": "float", "train_mean_token_accuracy": "float", "valid_loss": "float",
               "valid_mean_token_accuracy": "float"}  # fmt: skip
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata=reading_order(
            {
                "final_train_loss": rounded(series["train"][-1][1]) if series["train"] else None,
                "final_valid_loss": rounded(series["validation"][-1][1]) if series["validation"] else None,
                "steps": len(metrics),
                **({"trained_tokens": model["trained_tokens"]} if model["trained_tokens"] is not None else {}),
                "loss_curve": inline_curves(
                    {"train loss": series["train"], "valid loss": series["validation"]},
                    alt="Azure fine-tuning loss curve",
                ),
                **{k: v for k, v in model.items() if v is not None and k != "trained_tokens"},
                "metrics": table(metrics, columns),
                "checkpoints": table(checkpoints, {"id": "string", "step": "int", "model": "string"}),
                "loss_curve_png": image(ref.file("loss_curve.png"), "Azure fine-tuning loss"),
            },
            recorded=recorded,
        ),
    )


@dg.sensor(
    asset_selection=["azure_fine_tuned_model"],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Follows the latest Azure fine-tuning job: streams its new events into this sensor's log and "
    "materializes azure_fine_tuned_model once the job has finished (succeeded, failed or cancelled). A run of "
    f"a succeeded job's model that failed is asked for again, {MODEL_RUN_ATTEMPTS} runs in all.",
)
def azure_finetune_sensor(context: dg.SensorEvaluationContext, llm: LLMResource) -> dg.SensorResult | dg.SkipReason:
    """Look at the job once; ask for the model when it is done, and again after a failed run.

    Each tick logs (the tick's "View logs" in the UI), in sentences, which job it polled, its status
    and new events, and what it requested or why nothing.
    """
    from ft_assets.azure.finetune import Retry, follow
    from ft_assets.llm.client import CREDENTIAL_VARIABLES, sync_client

    settings = llm.client_settings()
    if settings.provider is None:
        context.log.info(
            f"No fine-tuning job is polled because no credentials are set; to fine-tune on Azure OpenAI or OpenAI, "
            f"set {CREDENTIAL_VARIABLES}."
        )
        return dg.SkipReason(f"no credentials: set {CREDENTIAL_VARIABLES}")
    event = context.instance.get_latest_materialization_event(dg.AssetKey("azure_finetune_job"))
    materialization = event.asset_materialization if event else None
    if materialization is None or "job_id" not in materialization.metadata:
        context.log.info(
            "No fine-tuning job has been created yet (azure_finetune_job has no materialization with a job id), "
            "so there is nothing to poll; materialize azure_finetune_job to start one."
        )
        return dg.SkipReason("no fine-tuning job has been created yet")
    job_id = str(materialization.metadata["job_id"].value)
    cursor = json.loads(context.cursor) if context.cursor else {}
    with sync_client(settings, max_retries=0) as client:
        update = follow(client, job_id, cursor.get(job_id), Retry(attempts=3), context.log.info)
    context.log.info(
        f"Polled fine-tuning job {job_id} ({settings.provider}): its status is {update.job.status}, with "
        f"{len(update.events)} new event(s)."
    )
    for job_event in update.events:
        context.log.info(f"{job_id} [{job_event.level}] {job_event.message}")
    cursor[job_id] = update.cursor
    if not update.finished:
        context.log.info(
            f"Job {job_id} has not finished, so nothing is requested; it is polled again on the next tick "
            "(every minute)."
        )
        return dg.SensorResult(skip_reason=f"job {job_id} is {update.job.status}", cursor=json.dumps(cursor))
    request = _model_request(context, job_id, update.job.status)
    if isinstance(request, str):
        context.log.info(f"Nothing is requested: {request}.")
        return dg.SensorResult(skip_reason=request, cursor=json.dumps(cursor))
    purpose = "record the fine-tuned model" if update.job.status == "succeeded" else "record the service's error"
    context.log.info(
        f"Job {job_id} is {update.job.status}: requested a run of azure_fine_tuned_model (run key "
        f"{request.run_key}) to {purpose}."
    )
    return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor))


def _model_request(context: dg.SensorEvaluationContext, job_id: str, status: str) -> dg.RunRequest | str:
    """Return the run request of a finished job's model, or why none is made (runs tagged with the job count)."""
    runs = context.instance.get_runs(dg.RunsFilter(tags={JOB_TAG: job_id}))
    if any(run.status == dg.DagsterRunStatus.SUCCESS for run in runs):
        return f"job {job_id} is {status}; its model is recorded"
    if any(not run.is_finished for run in runs):
        return f"job {job_id}: a run of azure_fine_tuned_model is in progress"
    failed = sum(run.status == dg.DagsterRunStatus.FAILURE for run in runs)
    # A failed or cancelled job fails its model run with the service's message: asking again changes nothing.
    allowed = MODEL_RUN_ATTEMPTS if status == "succeeded" else 1
    if failed >= allowed:
        message = f"job {job_id} is {status}; azure_fine_tuned_model failed {failed} time(s), not asking again"
        context.log.warning(message)
        return message
    if failed:
        context.log.info(f"job {job_id}: azure_fine_tuned_model failed {failed} time(s); asking again "
                         f"(run {failed + 1} of {allowed})")  # fmt: skip
    return dg.RunRequest(
        run_key=f"{job_id}:{status}:{failed + 1}",
        asset_selection=[dg.AssetKey("azure_fine_tuned_model")],
        tags={JOB_TAG: job_id},
    )


AZURE_EVALUATION_COLUMNS = {"model": "string", "main_score": "float", "ci_low": "float", "ci_high": "float", "n": "int",
                            "exact_match": "float", "latency_p50_ms": "int", "output_tokens_mean": "float",
                            "cost_per_1k_requests_usd": "float", "failed_requests": "int"}  # fmt: skip


class AzureEvaluationConfig(dg.Config):
    """Which deployments answer the test split, and what their tokens cost."""

    fine_tuned_deployment: str | None = Field(
        None, description="Deployment name of the fine-tuned model (deploy it in Azure first); unset: skipped."
    )
    base_deployment: str = Field(
        "gpt-4o-mini", description="Deployment of the base model, asked with a few-shot prompt."
    )
    task: Literal["auto", "labels", "json", "free_text"] = Field(
        "auto", description="What the answers are, which decides the metrics; auto decides from the gold answers."
    )
    few_shot_examples: int = Field(3, description="Train examples in the base model's prompt.")
    few_shot_seed: int = Field(0, description="Seed that picks the few-shot examples.")
    max_tokens: int = Field(
        256, description="Cap on the answer length; the length itself is the longest gold answer (estimated) + 16."
    )
    hosting_usd_per_hour: float = Field(
        1.70, description="Hourly hosting price of the fine-tuned deployment (Azure Standard, cost documentation)."
    )
    requests_per_hour: float = Field(1000.0, description="Expected traffic, for the break-even with hosting.")
    concurrency: int = Field(8, description="Requests in flight at once.")
    fine_tuned_input_usd_per_1m: float = Field(0.30, description="Fine-tuned model: price of a million input tokens.")
    fine_tuned_output_usd_per_1m: float = Field(1.20, description="Fine-tuned model: price of a million output tokens.")
    base_input_usd_per_1m: float = Field(0.15, description="Base model: price of a million input tokens.")
    base_output_usd_per_1m: float = Field(0.60, description="Base model: price of a million output tokens.")
    price_per_1m_training_tokens: float | None = Field(None, description="Training price, for the break-even.")


def _api_scores(
    model: str, version: str, results: list[Any], golds: list[str], task: str, prices: Any, max_tokens: int
) -> Any:
    """Return the scored evaluations row of API answers (task metrics, main metric with interval) plus cost."""
    from ft_assets.evaluation.report import Answered, score_model

    answered = Answered(
        model, version, "api", [(r.content or "").strip() for r in results],
        [r.latency_s if r.latency_s is not None else float("nan") for r in results],
        [r.completion_tokens for r in results], [r.prompt_tokens for r in results],
        [r.completion_tokens >= max_tokens for r in results],
    )  # fmt: skip
    scored = score_model(answered, golds, task)
    costs = [prices.cost(r.prompt_tokens, r.completion_tokens) for r in results]
    scored.row.update(
        token_accuracy=None, loss=None, perplexity=None,
        cost_per_1k_requests_usd=1000 * sum(costs) / max(len(costs), 1),
        failed_requests=sum(r.status != "ok" for r in results),
    )  # fmt: skip
    return answered, scored


@dg.asset(
    group_name="evaluation",
    code_version=EVALUATION_CODE,
    kinds={"azure", "openai"},
    output_required=False,
    description="The deployed fine-tuned model and the prompted (few-shot) base model answer test_split through the "
    "API: exact match, per-field accuracy, latency p50/p95, output tokens, cost per 1,000 requests, and the number "
    "of requests after which the fine-tune has paid for its training. Rows go to the DuckDB evaluations table.",
)
def azure_model_evaluation(
    context: dg.AssetExecutionContext,
    config: AzureEvaluationConfig,
    azure_fine_tuned_model: ArtifactRef,
    train_split: ArtifactRef,
    test_split: ArtifactRef,
    llm: LLMResource,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> Iterator[dg.Output[ArtifactRef]]:
    """Ask both deployments every test question and record one row per model."""
    import asyncio
    import math

    from ft_assets.dataset.text import estimate_tokens
    from ft_assets.evaluation.metrics import detect_task
    from ft_assets.evaluation.report import break_even_requests, compare, prediction_rows
    from ft_assets.evaluation.runners import eval_cases, few_shot_examples, with_shots
    from ft_assets.llm.calls import ChatRequest, Prices, run_requests
    from ft_assets.llm.client import async_client
    from ft_assets.training.lora import read_rows

    if not _configured(context, llm, "azure_model_evaluation"):
        return
    if not config.fine_tuned_deployment:
        context.log.warning("azure_model_evaluation: skipped: deploy the fine-tuned model in Azure and set "
                            "fine_tuned_deployment")  # fmt: skip
        return
    settings = llm.client_settings()
    skipped: Counter[str] = Counter()
    cases = eval_cases(read_rows(test_split.file("data.jsonl")), skipped)
    if skipped:
        context.log.warning(f"azure_model_evaluation: test rows skipped, by reason: {dict(skipped)}")
    shots = few_shot_examples(read_rows(train_split.file("data.jsonl")), config.few_shot_examples, config.few_shot_seed)
    golds = [case.gold for case in cases]
    if not cases:
        raise dg.Failure("azure_model_evaluation: test_split holds no usable example to ask")
    task, reason = detect_task(golds, config.task)
    max_tokens = min(config.max_tokens, max(estimate_tokens(len(g), 0) for g in golds) + 16)

    def ask(deployment: str, prompts: list[Any]) -> list[Any]:
        requests = [
            ChatRequest(deployment, tuple((m["role"], m["content"]) for m in c.prompt), max_tokens=max_tokens)
            for c in prompts
        ]
        batch = run_requests(
            lambda: async_client(settings), requests, endpoint=settings.endpoint, cache=None,
            concurrency=config.concurrency, log=context.log.info,
        )  # fmt: skip
        return asyncio.run(batch)[0]

    model = json.loads(azure_fine_tuned_model.file("model.json").read_text())
    price = known_training_price(model["base_model"], config.price_per_1m_training_tokens)
    tuned_prices = Prices(config.fine_tuned_input_usd_per_1m, config.fine_tuned_output_usd_per_1m)
    base_prices = Prices(config.base_input_usd_per_1m, config.base_output_usd_per_1m)
    tuned_results = ask(config.fine_tuned_deployment, cases)
    base_results = ask(config.base_deployment, [with_shots(c, shots) for c in cases])
    base_name = f"azure:{config.base_deployment} (few-shot k={config.few_shot_examples})"
    tuned_answers, tuned = _api_scores(
        f"azure:{model['fine_tuned_model']}", azure_fine_tuned_model.version, tuned_results, golds, task,
        tuned_prices, max_tokens,
    )  # fmt: skip
    base_answers, base = _api_scores(
        base_name, config.base_deployment, base_results, golds, task, base_prices, max_tokens
    )
    training_cost = (model.get("trained_tokens") or 0) * price / 1e6 if price is not None else None
    saving = (base.row["cost_per_1k_requests_usd"] - tuned.row["cost_per_1k_requests_usd"]) / 1000
    break_even = (
        break_even_requests(training_cost, saving, config.hosting_usd_per_hour, config.requests_per_hour)
        if training_cost is not None
        else math.nan
    )
    paired = compare(tuned, [base])
    rows = [tuned.row, base.row]
    prompts = [c.question for c in cases]
    ids = [c.example_id for c in cases]
    predictions = [
        *prediction_rows(tuned_answers, tuned, ids, prompts, golds),
        *prediction_rows(base_answers, base, ids, prompts, golds),
    ]
    with artifacts.stage("azure_model_evaluation") as staging:
        (staging / "evaluations.json").write_text(json.dumps(rows, indent=2, sort_keys=True, default=str))
        (staging / "predictions.json").write_text(json.dumps(predictions, indent=2, sort_keys=True, default=str))
        ref = artifacts.publish(staging, "azure_model_evaluation")
    stamp = {"test_split_version": test_split.version, "evaluation_version": ref.version}
    lineage.record_evaluations(
        [{**row, **stamp, "evaluated_by": "azure_model_evaluation", "run_id": context.run.run_id} for row in rows]
    )
    lineage.record_predictions([{**row, **stamp} for row in predictions])
    recorded = lineage.record(context, ref, [azure_fine_tuned_model, train_split, test_split], config)
    test = paired[base.row["model"]]
    latency = [finite(row["latency_p50_ms"]) for row in rows]  # one column, rounded to a millisecond
    table_rows = [{**{k: finite(v) for k, v in row.items()}, "latency_p50_ms": None if ms is None else round(ms)}
                  for row, ms in zip(rows, latency, strict=True)]  # fmt: skip
    settings = {"task": task, "task_reason": reason, "fine_tuned_deployment": config.fine_tuned_deployment,
                "base_deployment": config.base_deployment, "hosting_usd_per_hour": config.hosting_usd_per_hour,
                "requests_per_hour": config.requests_per_hour, "max_tokens": max_tokens}  # fmt: skip
    yield dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata=reading_order(
            {
                "main_metric": tuned.row["main_metric"],
                "fine_tuned_main_score": finite(tuned.row["main_score"]),
                "base_main_score": finite(base.row["main_score"]),
                "fine_tuned_exact_match": finite(tuned.row["exact_match"]),
                "base_exact_match": finite(base.row["exact_match"]),
                "difference_significant": bool(test["significant"]),
                "difference_p_value": finite(test["p_value"]),
                "training_cost_usd": round(training_cost, 4) if training_cost is not None else "unknown price",
                "break_even_requests": (
                    math.ceil(break_even)
                    if math.isfinite(break_even)
                    else "never at this traffic (no saving after hosting, or unknown price)"
                ),
                "evaluations": table(table_rows, AZURE_EVALUATION_COLUMNS),
                "settings": settings_table(settings),
            },
            recorded=recorded,
        ),
    )
