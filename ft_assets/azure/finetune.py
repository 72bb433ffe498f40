"""Azure OpenAI (or OpenAI) fine-tuning through the real ``openai`` client. No dagster import here.

- ``estimate``: billed training tokens and cost before anything is uploaded (the OpenAI cookbook's
  epoch rule: 3 epochs, more for small sets, fewer for huge ones; tokens per example capped);
- ``service_file``: a split as the service takes it: each row without its top-level ``id``;
- ``upload``: idempotent: a file is named after its content hash and an already processed file
  with that name is reused, so a restarted run uploads nothing twice;
- ``find_or_create_job``: idempotent: a job created earlier for the same files and parameters
  (tagged with their hash) is found and reused instead of creating a second one;
- ``follow``: one short look at a job (status, new events since a cursor), for a sensor;
- ``results``: the job's ``results.csv`` parsed into per-step metrics, and its checkpoints.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ft_assets.dataset.text import estimate_tokens
from ft_assets.llm.calls import is_retryable

Log = Callable[[str], None]
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
TERMINAL = {"succeeded", "failed", "cancelled"}
# A create that timed out may still have happened: never let the client re-send it blindly.
CREATE_ATTEMPTS = 4
KEY_FIELD = "ft_assets_key"
# Top-level keys of a split row that the fine-tuning file format has no place for (``id``: the example id).
LOCAL_ONLY_KEYS = ("id",)


class FineTuneError(RuntimeError):
    """The service refused or failed the work; the message carries the service's own words."""


@dataclass(frozen=True)
class JobSettings:
    """What the fine-tuning job is asked to do."""

    model: str = "gpt-4o-mini-2024-07-18"
    method: Literal["supervised", "dpo"] = "supervised"
    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    beta: float | None = None
    seed: int = 0
    suffix: str | None = "ft-assets"
    training_type: str | None = None

    def hyperparameters(self) -> dict[str, Any]:
        """Return the hyperparameters that are set (the service chooses the rest)."""
        values = {"n_epochs": self.n_epochs, "batch_size": self.batch_size,
                  "learning_rate_multiplier": self.learning_rate_multiplier}  # fmt: skip
        if self.method == "dpo":
            values["beta"] = self.beta
        return {k: v for k, v in values.items() if v is not None}


def default_epochs(n_examples: int) -> int:
    """Return the epochs the service picks by default for a training set of ``n_examples``."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def _example_tokens(row: dict[str, Any]) -> int:
    messages = row.get("messages") or row.get("input", {}).get("messages", [])
    messages = [*messages, *row.get("preferred_output", []), *row.get("non_preferred_output", [])]
    characters = sum(len(m.get("content") or "") for m in messages if isinstance(m, dict))
    return estimate_tokens(characters, len(messages))


def estimate(
    rows: Sequence[dict[str, Any]], n_epochs: int | None, price_per_1m_tokens: float, max_tokens_per_example: int
) -> dict[str, Any]:
    """Return the estimated billed training tokens and cost of training on ``rows``."""
    tokens = [min(_example_tokens(row), max_tokens_per_example) for row in rows]
    epochs = n_epochs or default_epochs(len(rows))
    billed = sum(tokens) * epochs
    return {
        "examples": len(rows),
        "epochs": epochs,
        "tokens_per_epoch": sum(tokens),
        "billed_tokens": billed,
        "price_per_1m_tokens": price_per_1m_tokens,
        "estimated_cost_usd": round(billed * price_per_1m_tokens / 1e6, 4),
        "token_counts": "estimated (characters / 4 + 3 per message): no tokenizer download here",
    }


def service_file(split_path: Path, out_path: Path) -> Path:
    """Write the split at ``split_path`` to ``out_path`` as the service takes it, and return ``out_path``.

    Each row loses its top-level ``id`` (an example id the service's format has no key for); everything
    else is kept as it is: messages with ``weight``, ``name``, ``tool_calls``, row-level ``tools``,
    preference rows. A row without such a key is copied byte for byte. The result is a function of the
    split's content, so the upload stays named after the split version.
    """
    with open(split_path, "rb") as source, open(out_path, "wb") as out:
        for line in source:
            if not line.strip():
                continue
            row = json.loads(line)
            kept = line.rstrip(b"\r\n")
            if isinstance(row, dict) and any(key in row for key in LOCAL_ONLY_KEYS):
                service_row = {key: value for key, value in row.items() if key not in LOCAL_ONLY_KEYS}
                kept = json.dumps(service_row, ensure_ascii=False).encode()
            out.write(kept + b"\n")
    return out_path


def file_name(split: str, version: str) -> str:
    """Return the upload name of a split version (its content hash makes re-uploads findable)."""
    return f"ft-assets-{split}-{version}.jsonl"


def _processed(client: Any, file_id: str, log: Log, poll_s: float, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        uploaded = client.files.retrieve(file_id)
        if uploaded.status == "processed":
            return uploaded
        if uploaded.status in ("error", "deleted"):
            details = getattr(uploaded, "status_details", None) or "no details"
            raise FineTuneError(f"the service rejected {uploaded.filename}: {uploaded.status} ({details})")
        if time.monotonic() > deadline:
            raise FineTuneError(f"{uploaded.filename} was not processed within {timeout_s:.0f} s ({uploaded.status})")
        log(f"{uploaded.filename}: {uploaded.status}, waiting")
        time.sleep(poll_s)


def upload(
    client: Any, path: Path, name: str, *, log: Log = print, poll_s: float = 2.0, timeout_s: float = 600.0
) -> tuple[str, bool]:
    """Upload ``path`` as ``name`` for fine-tuning unless a processed file of that name exists; wait until processed.

    Returns (file id, whether it was uploaded now).
    """
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        existing = _uploaded(client, name)
        if existing is not None:
            log(f"{name}: already uploaded as {existing.id}")
            return _processed(client, existing.id, log, poll_s, timeout_s).id, False
        try:
            with open(path, "rb") as handle:
                created = client.with_options(max_retries=0).files.create(file=(name, handle), purpose="fine-tune")
        except Exception as error:
            if not is_retryable(error) or attempt == CREATE_ATTEMPTS:
                raise
            log(f"{name}: upload interrupted ({type(error).__name__}); checking whether it arrived")
            time.sleep(poll_s)
            continue
        log(f"{name}: uploaded as {created.id}")
        return _processed(client, created.id, log, poll_s, timeout_s).id, True
    raise FineTuneError(f"{name}: could not be uploaded")


def _uploaded(client: Any, name: str) -> Any | None:
    for existing in client.files.list(purpose="fine-tune"):
        if existing.filename == name and existing.status not in ("error", "deleted"):
            return existing
    return None


def job_key(settings: JobSettings, training_file: str, validation_file: str | None) -> str:
    """Return the hash of everything that defines a job (tagged on the job to find it again)."""
    parts = {"settings": settings.__dict__, "training_file": training_file, "validation_file": validation_file}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def job_request(settings: JobSettings, training_file: str, validation_file: str | None) -> dict[str, Any]:
    """Return the keyword arguments of ``fine_tuning.jobs.create``."""
    request: dict[str, Any] = {
        "model": settings.model,
        "training_file": training_file,
        "seed": settings.seed,
        "method": {"type": settings.method, settings.method: {"hyperparameters": settings.hyperparameters()}},
        "metadata": {KEY_FIELD: job_key(settings, training_file, validation_file)},
    }
    if validation_file:
        request["validation_file"] = validation_file
    if settings.suffix:
        request["suffix"] = settings.suffix
    if settings.training_type:
        request["extra_body"] = {"trainingType": settings.training_type}
    return request


def find_job(
    client: Any, key: str, training_file: str, validation_file: str | None, seed: int, model: str
) -> Any | None:
    """Return the newest reusable job made for this key (and files); failed or cancelled jobs do not count."""
    for job in client.fine_tuning.jobs.list(limit=50):
        metadata = getattr(job, "metadata", None) or {}
        same_files = job.training_file == training_file and job.validation_file == validation_file
        if not same_files or job.status in ("failed", "cancelled"):
            continue
        if metadata.get(KEY_FIELD) == key:
            return job
        if not metadata and job.seed == seed and job.model.startswith(model.split("-20", maxsplit=1)[0]):
            return job  # a service that drops metadata: same files, seed and model
    return None


def find_or_create_job(
    client: Any, settings: JobSettings, training_file: str, validation_file: str | None, log: Log = print
) -> tuple[Any, bool]:
    """Return (job, created now): the job already made for these files and settings, or a new one."""
    key = job_key(settings, training_file, validation_file)
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        existing = find_job(client, key, training_file, validation_file, settings.seed, settings.model)
        if existing is not None:
            log(f"found job {existing.id} ({existing.status}) already created for these files and settings")
            return existing, False
        try:
            job = client.with_options(max_retries=0).fine_tuning.jobs.create(
                **job_request(settings, training_file, validation_file)
            )
        except Exception as error:
            if not is_retryable(error) or attempt == CREATE_ATTEMPTS:
                raise
            log(f"job creation interrupted ({type(error).__name__}); checking whether the job exists")
            time.sleep(2.0 * attempt)
            continue
        log(f"created fine-tuning job {job.id} ({job.status})")
        return job, True
    raise FineTuneError("the fine-tuning job could not be created")


@dataclass
class JobUpdate:
    """One look at a job: its status and the events since the cursor (oldest first)."""

    job: Any
    events: list[Any]
    cursor: str | None

    @property
    def finished(self) -> bool:
        """Whether the job reached a final state."""
        return self.job.status in TERMINAL

    def failure(self) -> str | None:
        """Return the service's error message when the job failed or was cancelled."""
        if self.job.status == "cancelled":
            return f"fine-tuning job {self.job.id} was cancelled"
        if self.job.status != "failed":
            return None
        error = getattr(self.job, "error", None)
        message = getattr(error, "message", None) if error else None
        code = getattr(error, "code", None) if error else None
        return f"fine-tuning job {self.job.id} failed: {message or 'no message'}" + (f" ({code})" if code else "")


def follow(client: Any, job_id: str, cursor: str | None) -> JobUpdate:
    """Return the job and its events newer than ``cursor`` (an event id), and the new cursor."""
    job = client.fine_tuning.jobs.retrieve(job_id)
    events = []
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100):
        if event.id == cursor:
            break
        events.append(event)
    events.reverse()
    return JobUpdate(job, events, events[-1].id if events else cursor)


def parse_results(text: str) -> list[dict[str, float | None]]:
    """Parse a ``results.csv`` (step, train/valid loss and token accuracy) into rows of numbers."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({key.strip(): _number(value) for key, value in row.items() if key})
    return rows


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def results(client: Any, job: Any) -> tuple[list[dict[str, float | None]], list[dict[str, Any]]]:
    """Return the per-step metrics of a finished job and its checkpoints."""
    metrics: list[dict[str, float | None]] = []
    for file_id in job.result_files or []:
        content = client.files.content(file_id)
        text = content.text if hasattr(content, "text") else content.read().decode()
        if text.lstrip().startswith("step"):
            metrics += parse_results(text)
        else:
            import base64

            metrics += parse_results(base64.b64decode(text).decode())
    checkpoints = [
        {"id": c.id, "step": c.step_number, "model": c.fine_tuned_model_checkpoint,
         "metrics": c.metrics.model_dump() if getattr(c, "metrics", None) else {}}
        for c in client.fine_tuning.jobs.checkpoints.list(job.id)
    ]  # fmt: skip
    return metrics, checkpoints
