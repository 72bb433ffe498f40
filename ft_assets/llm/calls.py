"""Many chat requests at once: bounded concurrency, retries that honour ``Retry-After``, a response cache, a budget.

Every request is answered from the cache when the same request (model, messages, sampling,
response format, endpoint) was answered before, so re-running unchanged work sends nothing.
429s, 5xx, timeouts and dropped connections are retried with jittered exponential backoff, or
after the ``Retry-After`` the service asked for. A budget (requests sent, dollars spent) stops
new requests cleanly; every request ends with a status. No dagster import here.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Log = Callable[[str], None]
Status = Literal["ok", "cached", "failed", "budget"]
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for; ``key`` identifies it in the cache and in the results."""

    model: str
    messages: tuple[tuple[str, str], ...]
    temperature: float = 0.0
    seed: int | None = None
    response_format: str | None = None
    max_tokens: int | None = None

    def body(self) -> dict[str, Any]:
        """Return the keyword arguments of ``chat.completions.create``."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": role, "content": content} for role, content in self.messages],
            "temperature": self.temperature,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.response_format is not None:
            body["response_format"] = json.loads(self.response_format)
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def key(self, endpoint: str | None) -> str:
        """Return the cache key: a hash of the request and where it is sent."""
        canonical = json.dumps({"endpoint": endpoint, **self.body()}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Prices:
    """US dollars per million input and output tokens of the model asked."""

    input_per_1m: float = 0.0
    output_per_1m: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Return the price of one call."""
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


@dataclass(frozen=True)
class Budget:
    """Limits on one batch of requests: HTTP requests sent (retries count) and dollars spent."""

    max_requests: int | None = None
    max_cost_usd: float | None = None


@dataclass
class ChatResult:
    """What became of one request."""

    request: ChatRequest
    status: Status
    content: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    latency_s: float | None = None
    error: str | None = None


@dataclass
class BatchReport:
    """Counts of a batch: requests sent, cache hits, tokens, cost, statuses."""

    requests_sent: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready values."""
        return {
            "requests_sent": self.requests_sent,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "seconds": round(self.seconds, 3),
        }


class ResponseCache:
    """Answers on disk, one JSON file per request key (written atomically)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the stored answer for ``key``, if any."""
        path = self._path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, answer: dict[str, Any]) -> None:
        """Store an answer."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        temporary.write_text(json.dumps(answer, sort_keys=True))
        os.replace(temporary, path)


def retry_after_s(error: Exception) -> float | None:
    """Return how long the service asked to wait (``retry-after-ms`` or ``retry-after``), if it said."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time()) if moment else None


def is_retryable(error: Exception) -> bool:
    """Return whether a failed call may succeed when sent again (rate limits, 5xx, timeouts, dropped connections)."""
    import openai

    if isinstance(error, openai.APITimeoutError | openai.APIConnectionError):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code in RETRYABLE_STATUS


class _Gate:
    """Shared counters that decide whether another request may be sent under the budget."""

    def __init__(self, budget: Budget, report: BatchReport) -> None:
        self.budget = budget
        self.report = report

    def may_send(self) -> bool:
        limit_requests = self.budget.max_requests is not None and self.report.requests_sent >= self.budget.max_requests
        limit_cost = self.budget.max_cost_usd is not None and self.report.cost_usd >= self.budget.max_cost_usd
        return not (limit_requests or limit_cost)


async def _ask(
    client: Any,
    request: ChatRequest,
    gate: _Gate,
    prices: Prices,
    retry: tuple[int, float],
    semaphore: asyncio.Semaphore,
    store: Callable[[ChatResult], None],
) -> ChatResult:
    """Send one request (retrying what may succeed later); the answer's JSON is read without model classes."""
    max_attempts, backoff_s = retry
    result = ChatResult(request, "failed")
    async with semaphore:
        for attempt in range(1, max_attempts + 1):
            if not gate.may_send():
                result.status = "budget"
                return result
            gate.report.requests_sent += 1
            result.attempts = attempt
            started = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(**request.body())
                answer = json.loads(raw.content)
            except Exception as error:  # the service's errors, classified below
                if not is_retryable(error) or attempt == max_attempts:
                    result.error = f"{type(error).__name__}: {getattr(error, 'message', error)}"
                    return result
                gate.report.retries += 1
                wait = retry_after_s(error)
                if wait is None:
                    wait = min(backoff_s * 2 ** (attempt - 1), 30.0) * (0.5 + random.random())
                await asyncio.sleep(wait)
                continue
            result.latency_s = time.perf_counter() - started
            usage = answer.get("usage") or {}
            result.prompt_tokens = usage.get("prompt_tokens") or 0
            result.completion_tokens = usage.get("completion_tokens") or 0
            gate.report.cost_usd += prices.cost(result.prompt_tokens, result.completion_tokens)
            choices = answer.get("choices") or [{}]
            result.content = (choices[0].get("message") or {}).get("content")
            result.status = "ok"
            store(result)
            return result
    return result


async def run_requests(
    client_factory: Callable[[], Any],
    requests: Sequence[ChatRequest],
    *,
    endpoint: str | None,
    cache: ResponseCache | None,
    concurrency: int = 16,
    budget: Budget | None = None,
    prices: Prices | None = None,
    max_attempts: int = 8,
    backoff_s: float = 0.5,
    log: Log = print,
) -> tuple[list[ChatResult], BatchReport]:
    """Answer every request (cache first), at most ``concurrency`` at a time; results keep the requests' order."""
    report = BatchReport()
    prices = prices or Prices()
    started = time.perf_counter()
    results: list[ChatResult | None] = [None] * len(requests)
    pending: list[int] = []
    keys = {request: request.key(endpoint) for request in requests} if cache else {}

    def store(result: ChatResult) -> None:
        if cache is not None and result.content is not None:
            answer = {"content": result.content, "prompt_tokens": result.prompt_tokens,
                      "completion_tokens": result.completion_tokens}  # fmt: skip
            cache.put(keys[result.request], answer)

    for index, request in enumerate(requests):
        hit = cache.get(keys[request]) if cache else None
        if hit is None:
            pending.append(index)
            continue
        report.cache_hits += 1
        results[index] = ChatResult(
            request, "cached", hit["content"], hit.get("prompt_tokens", 0), hit.get("completion_tokens", 0)
        )
    if pending:
        log(f"{len(pending)} requests to send ({report.cache_hits} answered from the cache), concurrency {concurrency}")
        gate = _Gate(budget or Budget(), report)
        semaphore = asyncio.Semaphore(concurrency)
        client = client_factory()
        async with client:
            retry = (max_attempts, backoff_s)
            tasks = {
                asyncio.create_task(_ask(client, requests[i], gate, prices, retry, semaphore, store)): i
                for i in pending
            }
            step = max(1, len(tasks) // 10)
            for done, finished in enumerate(asyncio.as_completed(list(tasks)), start=1):
                await finished
                if done % step == 0 or done == len(tasks):
                    log(f"{done}/{len(tasks)} requests finished, {report.retries} retries, ${report.cost_usd:.4f}")
            for task, index in tasks.items():
                results[index] = task.result()
    final = [r for r in results if r is not None]
    for result in final:
        report.statuses[result.status] += 1
        report.prompt_tokens += result.prompt_tokens
        report.completion_tokens += result.completion_tokens
        if result.error:
            report.errors[result.error.split(":", 1)[0]] += 1
    report.seconds = time.perf_counter() - started
    return final, report
