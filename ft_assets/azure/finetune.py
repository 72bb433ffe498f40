"""Azure OpenAI (or OpenAI) fine-tuning through the real ``openai`` client. No dagster import here.

- ``estimate``: billed training tokens and cost before anything is uploaded (the OpenAI cookbook's
  epoch rule: 3 epochs, more for small sets, fewer for huge ones; tokens per example capped);
- ``service_file``: a split as the service takes it: each row without its top-level ``id``;
- ``upload``: idempotent: a file is named after its content hash and an already uploaded file
  with that name is reused, so a restarted run uploads nothing twice;
- ``find_or_create_job``: idempotent: a job created earlier for the same files and parameters
  (tagged with their hash) is found and reused instead of creating a second one;
- ``follow``: one short look at a job (status, new events since a cursor), for a sensor;
- ``results``: the job's ``results.csv`` parsed into per-step metrics, and its checkpoints.

Every call goes through ``Retry`` (build the client with ``max_retries=0``; creates never use its retries):
429s, 5xx, timeouts and dropped connections are retried a bounded number of times, after the
``Retry-After`` the service asked for or a capped, jittered exponential backoff. A create that
failed where the service may still have done it (a 5xx, a dropped connection) is never re-sent
blindly: the files or jobs are listed again first. Lists are read page by page (``list_items``):
the next page is asked for only while ``has_more`` is true, a page of ids already seen ends the
list, and so does ``MAX_LIST_PAGES``; Azure's file list, without ``has_more``, is one page.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ft_assets.dataset.text import estimate_tokens
from ft_assets.llm.calls import is_retryable, retry_after_s

Log = Callable[[str], None]
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25
TERMINAL = {"succeeded", "failed", "cancelled"}
# Pages read from one list at most: a service that keeps saying has_more (or repeats itself) cannot loop us.
MAX_LIST_PAGES = 50
KEY_FIELD = "ft_assets_key"
# Top-level keys of a split row that the fine-tuning file format has no place for (``id``: the example id).
LOCAL_ONLY_KEYS = ("id",)


class FineTuneError(RuntimeError):
    """The service refused or failed the work; the message carries the service's own words."""


@dataclass(frozen=True)
class Retry:
    """How a call that may succeed later is retried: ``attempts`` in all, waiting between them.

    The wait is the service's ``Retry-After`` (at most ``max_retry_after_s``), else a random
    ``base_s * 2**(n-1)`` times 0.5-1, capped at ``cap_s``.
    """

    attempts: int = 8
    base_s: float = 1.0
    cap_s: float = 30.0
    max_retry_after_s: float = 120.0

    def wait_s(self, attempt: int, error: Exception) -> float:
        """Return how long to wait after failed attempt number ``attempt`` (from 1)."""
        asked = retry_after_s(error)
        if asked is not None:
            return min(max(asked, 0.0), self.max_retry_after_s)
        return min(self.cap_s, self.base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def call(self, what: str, log: Log, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Return ``function(*args, **kwargs)``, retrying errors that may pass (``is_retryable``)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return function(*args, **kwargs)
            except Exception as error:
                if not is_retryable(error) or attempt >= self.attempts:
                    raise
                self.pause(what, log, attempt, error)

    def pause(self, what: str, log: Log, attempt: int, error: Exception) -> None:
        """Log the failed attempt and wait before the next one."""
        wait = self.wait_s(attempt, error)
        log(f"{what}: {_describe(error)} (attempt {attempt}/{self.attempts}); retrying in {wait:.2f} s")
        time.sleep(wait)


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__} {status}" if status is not None else type(error).__name__


def may_have_happened(error: Exception) -> bool:
    """Return whether the service may have done a request that failed with ``error`` (all but a 429 refusal)."""
    return getattr(error, "status_code", None) != 429


def list_items(list_page: Callable[..., Any], retry: Retry, log: Log, what: str, **params: Any) -> Iterator[Any]:
    """Yield the items of a cursor-paginated list, page by page, each page fetched with ``retry``.

    The next page (``after`` the last id) is asked for only while a page says ``has_more: true``;
    a page that brings no id not already seen ends the list, and so does ``MAX_LIST_PAGES``
    (with a log line), so a service that ignores ``after`` is read once, not forever.
    """
    seen: set[str] = set()
    page = retry.call(what, log, list_page, **params)
    for number in range(1, MAX_LIST_PAGES + 1):
        new = [item for item in page.data or [] if item.id not in seen]
        if page.data and not new:
            log(f"{what}: page {number} repeats ids already seen; the service ignores 'after', stopping")
            return
        seen.update(item.id for item in new)
        yield from new
        if page.has_more is not True or not new:
            return
        if number == MAX_LIST_PAGES:
            log(f"{what}: stopped after {MAX_LIST_PAGES} pages ({len(seen)} items); the rest is not read")
            return
        page = retry.call(what, log, list_page, **{**params, "after": new[-1].id})


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


def _processed(client: Any, file_id: str, retry: Retry, log: Log, poll_s: float, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        uploaded = retry.call(f"file {file_id}", log, client.files.retrieve, file_id)
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
    client: Any,
    path: Path,
    name: str,
    *,
    retry: Retry = Retry(),
    log: Log = print,
    poll_s: float = 2.0,
    timeout_s: float = 600.0,
) -> tuple[str, bool]:
    """Upload ``path`` as ``name`` for fine-tuning unless a file of that name exists; wait until processed.

    An upload that failed where it may have arrived (5xx, dropped connection) is looked for before it is
    sent again; one refused with a 429 is sent again after the wait. Returns (file id, whether uploaded now).
    """
    existing = _uploaded(client, name, retry, log)
    attempt = 0
    while True:
        attempt += 1
        if existing is not None:
            log(f"{name}: already uploaded as {existing.id}")
            return _processed(client, existing.id, retry, log, poll_s, timeout_s).id, False
        try:
            with open(path, "rb") as handle:
                created = client.with_options(max_retries=0).files.create(file=(name, handle), purpose="fine-tune")
        except Exception as error:
            if not is_retryable(error) or attempt >= retry.attempts:
                raise
            retry.pause(f"{name}: upload", log, attempt, error)
            if may_have_happened(error):
                existing = _uploaded(client, name, retry, log)
            continue
        log(f"{name}: uploaded as {created.id}")
        return _processed(client, created.id, retry, log, poll_s, timeout_s).id, True


def _uploaded(client: Any, name: str, retry: Retry, log: Log) -> Any | None:
    for existing in list_items(client.files.list, retry, log, "listing files", purpose="fine-tune"):
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
    client: Any, settings: JobSettings, training_file: str, validation_file: str | None, retry: Retry, log: Log
) -> Any | None:
    """Return the newest reusable job made for these files and settings; failed or cancelled jobs do not count.

    A job tagged with the settings' key matches; on a service that drops metadata, a job with the same
    files, seed, base model and (when the service reports it) suffix does.
    """
    key = job_key(settings, training_file, validation_file)
    for job in list_items(client.fine_tuning.jobs.list, retry, log, "listing fine-tuning jobs", limit=50):
        metadata = getattr(job, "metadata", None) or {}
        same_files = job.training_file == training_file and job.validation_file == validation_file
        if not same_files or job.status in ("failed", "cancelled"):
            continue
        if metadata.get(KEY_FIELD) == key:
            return job
        same_model = job.model.startswith(settings.model.split("-20", maxsplit=1)[0])
        suffix = getattr(job, "suffix", None)
        if not metadata and job.seed == settings.seed and same_model and suffix in (None, settings.suffix):
            return job
    return None


def find_or_create_job(
    client: Any,
    settings: JobSettings,
    training_file: str,
    validation_file: str | None,
    *,
    retry: Retry = Retry(),
    log: Log = print,
) -> tuple[Any, bool]:
    """Return (job, created now): the job already made for these files and settings, or a new one.

    A create that failed where the job may exist anyway (5xx, dropped connection) is followed by
    another look at the jobs before it is sent again, so the service ends up with one job.
    """
    existing = find_job(client, settings, training_file, validation_file, retry, log)
    attempt = 0
    while True:
        attempt += 1
        if existing is not None:
            log(f"found job {existing.id} ({existing.status}) already created for these files and settings")
            return existing, False
        try:
            request = job_request(settings, training_file, validation_file)
            job = client.with_options(max_retries=0).fine_tuning.jobs.create(**request)
        except Exception as error:
            if not is_retryable(error) or attempt >= retry.attempts:
                raise
            retry.pause("creating the fine-tuning job", log, attempt, error)
            if may_have_happened(error):
                existing = find_job(client, settings, training_file, validation_file, retry, log)
            continue
        log(f"created fine-tuning job {job.id} ({job.status})")
        return job, True


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


def follow(client: Any, job_id: str, cursor: str | None, retry: Retry = Retry(), log: Log = print) -> JobUpdate:
    """Return the job and its events newer than ``cursor`` (an event id), and the new cursor."""
    job = retry.call(f"job {job_id}", log, client.fine_tuning.jobs.retrieve, job_id)
    events = []
    listing = list_items(
        client.fine_tuning.jobs.list_events, retry, log, f"events of {job_id}", fine_tuning_job_id=job_id, limit=100
    )
    for event in listing:
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


def results(
    client: Any, job: Any, retry: Retry = Retry(), log: Log = print
) -> tuple[list[dict[str, float | None]], list[dict[str, Any]]]:
    """Return the per-step metrics of a finished job and its checkpoints."""
    metrics: list[dict[str, float | None]] = []
    for file_id in job.result_files or []:
        content = retry.call(f"result file {file_id}", log, client.files.content, file_id)
        text = content.text if hasattr(content, "text") else content.read().decode()
        if text.lstrip().startswith("step"):
            metrics += parse_results(text)
        else:
            import base64

            metrics += parse_results(base64.b64decode(text).decode())
    checkpoints = [
        {"id": c.id, "step": c.step_number, "model": c.fine_tuned_model_checkpoint,
         "metrics": c.metrics.model_dump() if getattr(c, "metrics", None) else {}}
        for c in list_items(client.fine_tuning.jobs.checkpoints.list, retry, log, f"checkpoints of {job.id}",
                            fine_tuning_job_id=job.id)
    ]  # fmt: skip
    return metrics, checkpoints
