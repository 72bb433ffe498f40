"""A local stand-in for the Azure OpenAI / OpenAI REST API, for tests and benchmarks.

`StandIn` runs a real HTTP server on 127.0.0.1 that the unmodified `openai` client talks to, either as
``OpenAI(base_url=server.openai_base_url)`` (paths under ``/v1``) or as
``AzureOpenAI(azure_endpoint=server.azure_endpoint, api_version=...)`` (paths under ``/openai``, an
``api-version`` query parameter required, chat completions at ``/openai/deployments/{deployment}/chat/completions``).

It implements files (upload, retrieve, content, list, delete; a file is ``pending`` -- ``uploaded`` on the OpenAI
path -- until it has been retrieved ``file_processing_polls`` times), fine-tuning jobs (create, list, retrieve, cancel,
events, checkpoints; a job moves ``validating_files -> pending -> queued -> running -> succeeded`` by one state every
``job_polls_per_state`` retrievals, or ends ``failed`` when ``fail_jobs_with`` is set, and a succeeded job has a
``results.csv`` result file and checkpoints) and non-streaming chat completions whose text comes from a pluggable
handler. Every request can be delayed (``latency_s``); requests whose route matches ``fault_paths`` (default: chat
completions) can be answered with seeded-random 429s (with ``Retry-After`` and ``retry-after-ms``, or without any),
500s, dropped connections (the socket closed without a reply) or extra-slow replies. On a POST, a share of the 500s
and drops (``fault_after_work_share``) comes after the work is done: the file or job exists, the client sees an error.
Lists are cursor-paginated (``list_pagination="cursor"``), or, like Azure's documented file list, one page without
``has_more`` that ignores ``after`` (``"none"``), or a page that always says ``has_more`` and ignores ``after``
(``"repeat"``, a broken service). Nothing is persisted and the API key never reaches stats or logs.

Settings can be changed at runtime with `StandIn.configure` or, from another process, through the admin surface:
``GET /_standin/stats``, ``POST /_standin/config`` (JSON body of settings) and ``POST /_standin/reset`` (stats).
``python -m ft_assets_tests.standin --port 0 --latency-ms 100 --api-key K`` runs it as a process.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import email.parser
import email.policy
import hmac
import io
import itertools
import json
import random
import re
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, urlsplit

ChatHandler = Callable[[dict], str]
FaultPaths = Sequence[str] | Callable[[str], bool]
Reply = tuple[int, dict[str, Any] | bytes, dict[str, str]]
ListPagination = Literal["cursor", "none", "repeat"]

_ADMIN_PREFIX = "/_standin"
_JOB_STATES = ("validating_files", "pending", "queued", "running")
_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_STATE_MESSAGES = {
    "pending": "Files validated, moving job to pending state",
    "queued": "Job enqueued. Waiting for jobs ahead to complete.",
    "running": "Fine-tuning job started",
}
_HYPERPARAMETER_KEYS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# (method, route regex, route template, StandIn handler method); a route is the path below the /v1 or /openai prefix.
_ROUTES: tuple[tuple[str, re.Pattern[str], str, str], ...] = tuple(
    (
        method,
        re.compile(template.replace("{file_id}", "(?P<file_id>[^/]+)").replace("{job_id}", "(?P<job_id>[^/]+)")),
        template,
        handler,
    )
    for method, template, handler in (
        ("POST", "/files", "_upload_file"),
        ("GET", "/files", "_list_files"),
        ("GET", "/files/{file_id}", "_retrieve_file"),
        ("DELETE", "/files/{file_id}", "_delete_file"),
        ("GET", "/files/{file_id}/content", "_file_content"),
        ("POST", "/fine_tuning/jobs", "_create_job"),
        ("GET", "/fine_tuning/jobs", "_list_jobs"),
        ("GET", "/fine_tuning/jobs/{job_id}", "_retrieve_job"),
        ("POST", "/fine_tuning/jobs/{job_id}/cancel", "_cancel_job"),
        ("GET", "/fine_tuning/jobs/{job_id}/events", "_list_events"),
        ("GET", "/fine_tuning/jobs/{job_id}/checkpoints", "_list_checkpoints"),
        ("POST", "/chat/completions", "_chat_completion"),
    )
)
_AZURE_DEPLOYMENT = re.compile(r"/deployments/(?P<deployment>[^/]+)(?P<rest>/chat/completions)")


class _Drop(Exception):
    """Close the connection without answering (a dropped connection, as the client sees it)."""


class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with the given HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        self.headers: dict[str, str] = {}


@dataclass
class Settings:
    """Runtime-changeable behaviour of a `StandIn` (see `StandIn.configure`)."""

    latency_s: float = 0.0
    fault_429_rate: float = 0.0
    fault_429_bare_rate: float = 0.0
    fault_500_rate: float = 0.0
    fault_drop_rate: float = 0.0
    fault_after_work_share: float = 0.0
    retry_after_s: float = 0.05
    slow_rate: float = 0.0
    slow_s: float = 5.0
    file_processing_polls: int = 2
    job_polls_per_state: int = 1
    job_steps: int = 10
    fail_jobs_with: str | None = None
    chat_handler: ChatHandler | None = None
    chat_mode: str = "handler"
    chat_text: str = ""
    fault_paths: FaultPaths = ("/chat/completions",)
    list_pagination: ListPagination = "cursor"

    def public(self) -> dict[str, Any]:
        """Return the JSON-safe settings (no callables)."""
        out = {k: v for k, v in vars(self).items() if not callable(v)}
        out["fault_paths"] = "<predicate>" if callable(self.fault_paths) else list(self.fault_paths)
        return out


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    polls_left: int
    error: str | None = None


@dataclass
class _Job:
    id: str
    request: dict[str, Any]
    created_at: int
    seed: int
    steps: int
    polls_per_state: int
    fail_with: str | None
    status: str = "validating_files"
    polls: int = 0
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Request:
    style: str  # "openai" or "azure"
    params: dict[str, str]
    query: dict[str, str]
    headers: Message
    body: bytes
    deployment: str | None = None

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.body or b"{}")
        except ValueError as exc:
            raise ApiError(400, f"We could not parse the JSON body of your request: {exc}") from exc
        if not isinstance(data, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return data


def default_chat_reply(body: dict) -> str:
    """Answer deterministically: a minimal instance of a ``json_schema`` response format, else an echo."""
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema", {}).get("schema", {})
        return json.dumps(_minimal_instance(schema, schema))
    if response_format.get("type") == "json_object":
        return "{}"
    users = [m.get("content") for m in body.get("messages", []) if m.get("role") == "user"]
    last = users[-1] if users else ""
    return f"echo: {last if isinstance(last, str) else json.dumps(last)}"


def _minimal_instance(schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """Return the smallest value that validates against a (strict-mode style) JSON schema."""
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _minimal_instance(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _minimal_instance(schema[key][0], root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _minimal_instance(props[name], root) for name in schema.get("required", props)}
    return {"array": [], "string": "", "integer": 0, "number": 0, "boolean": False}.get(kind)


def _header_param(value: str, header: str, param: str) -> str | None:
    message = Message()
    message[header] = value
    found = message.get_param(param, header=header)
    return found if isinstance(found, str) else None


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Split a ``multipart/form-data`` body into ``{name: (filename, data)}``."""
    boundary = _header_param(content_type, "content-type", "boundary")
    if not boundary:
        raise ApiError(400, "Expected a multipart/form-data body with a boundary.")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + boundary.encode())[1:-1]:
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = parser.parsebytes(head + b"\r\n\r\n", headersonly=True)
        name = headers.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (headers.get_filename(), data.removesuffix(b"\r\n"))
    return fields


def _page(
    items: list[dict[str, Any]], query: dict[str, str], default_limit: int, pagination: ListPagination
) -> dict[str, Any]:
    """Cursor-paginate already-ordered items with ``limit`` and ``after`` (an item id), as ``pagination`` says."""
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError as exc:
        raise ApiError(400, "limit must be an integer", param="limit") from exc
    if pagination == "none":
        return {"object": "list", "data": items[:limit]}
    if pagination == "repeat":
        return {"object": "list", "data": items[:limit], "has_more": True}
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


def _jsonl_problem(content: bytes) -> str | None:
    """Describe the first line of a fine-tuning file that is not a JSON object, if any."""
    lines = [line for line in content.splitlines() if line.strip()]
    if not lines:
        return "The file is empty."
    for number, line in enumerate(lines, 1):
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok:
            return f"Invalid file format. Line {number} is not a valid JSON object."
    return None


def _loss_curve(seed: int, steps: int, with_validation: bool) -> list[dict[str, Any]]:
    """Per-step metrics with strictly decreasing losses, deterministic in ``seed``."""
    rng = random.Random(seed)
    start = rng.uniform(1.8, 2.6)
    loss = start
    rows = []
    for step in range(1, steps + 1):
        loss *= 1 - rng.uniform(0.03, 0.12)
        valid = loss * 1.05
        rows.append(
            {
                "step": step,
                "train_loss": round(loss, 5),
                "train_mean_token_accuracy": round(1 - loss / (start + 1), 5),
                "valid_loss": round(valid, 5) if with_validation else None,
                "valid_mean_token_accuracy": round(1 - valid / (start + 1), 5) if with_validation else None,
            }
        )
    return rows


class StandIn:
    """The stand-in server; use as a context manager or call `start` and `stop`."""

    def __init__(
        self,
        api_key: str = "standin-key",
        *,
        latency_s: float = 0.0,
        fault_429_rate: float = 0.0,
        fault_429_bare_rate: float = 0.0,
        fault_500_rate: float = 0.0,
        fault_drop_rate: float = 0.0,
        fault_after_work_share: float = 0.0,
        retry_after_s: float = 0.05,
        slow_rate: float = 0.0,
        slow_s: float = 5.0,
        file_processing_polls: int = 2,
        job_polls_per_state: int = 1,
        job_steps: int = 10,
        fail_jobs_with: str | None = None,
        chat_handler: ChatHandler | None = None,
        seed: int = 0,
        fault_paths: FaultPaths = ("/chat/completions",),
        list_pagination: ListPagination = "cursor",
        port: int = 0,
    ) -> None:
        self._api_key = api_key
        self._port = port
        self._lock = threading.Lock()
        self._settings = Settings(
            latency_s=latency_s,
            fault_429_rate=fault_429_rate,
            fault_429_bare_rate=fault_429_bare_rate,
            fault_500_rate=fault_500_rate,
            fault_drop_rate=fault_drop_rate,
            fault_after_work_share=fault_after_work_share,
            retry_after_s=retry_after_s,
            slow_rate=slow_rate,
            slow_s=slow_s,
            file_processing_polls=file_processing_polls,
            job_polls_per_state=job_polls_per_state,
            job_steps=job_steps,
            fail_jobs_with=fail_jobs_with,
            chat_handler=chat_handler,
            fault_paths=fault_paths,
            list_pagination=list_pagination,
        )
        if list_pagination not in get_args(ListPagination):
            raise ValueError(f"list_pagination must be one of {get_args(ListPagination)}")
        self._fault_rng = random.Random(seed)
        self._id_rng = random.Random(f"ids:{seed}")
        self._files: dict[str, _File] = {}
        self._jobs: dict[str, _Job] = {}
        self._counts: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._in_flight = 0
        self._max_in_flight = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("StandIn is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        """``base_url`` for `openai.OpenAI`."""
        return f"{self.url}/v1"

    @property
    def azure_endpoint(self) -> str:
        """``azure_endpoint`` for `openai.AzureOpenAI`."""
        return self.url

    def start(self) -> StandIn:
        """Bind 127.0.0.1 and serve on a daemon thread."""
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.standin = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close open keep-alive connections."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- control ---------------------------------------------------------------------------------------------------

    def configure(self, **settings: Any) -> None:
        """Change settings (any `Settings` field, or ``seed`` to reseed the fault RNG) while serving."""
        unknown = set(settings) - set(vars(self._settings)) - {"seed"}
        if unknown:
            raise TypeError(f"unknown StandIn settings: {sorted(unknown)}")
        if settings.get("chat_mode", "handler") not in ("handler", "constant"):
            raise ValueError("chat_mode must be 'handler' or 'constant'")
        if settings.get("list_pagination", "cursor") not in get_args(ListPagination):
            raise ValueError(f"list_pagination must be one of {get_args(ListPagination)}")
        with self._lock:
            if "seed" in settings:
                self._fault_rng.seed(settings.pop("seed"))
            for name, value in settings.items():
                setattr(self._settings, name, value)

    def settings(self) -> dict[str, Any]:
        """Return the current JSON-safe settings."""
        with self._lock:
            return self._settings.public()

    def stats(self) -> dict[str, Any]:
        """Request counts per ``"METHOD /path/template"``, the total, injected faults and peak concurrency."""
        with self._lock:
            return {
                "total": sum(self._counts.values()),
                "requests": dict(self._counts),
                "faults": dict(self._faults),
                "max_in_flight": self._max_in_flight,
            }

    def reset_stats(self) -> None:
        """Zero all counters."""
        with self._lock:
            self._counts.clear()
            self._faults.clear()
            self._max_in_flight = self._in_flight

    def job_request(self, job_id: str) -> dict[str, Any]:
        """Return the JSON body a job was created with, including keys the stand-in does not interpret."""
        with self._lock:
            return json.loads(json.dumps(self._jobs[job_id].request))

    # -- request handling ------------------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._id_rng.getrandbits(96):024x}"

    def handle(self, method: str, raw_path: str, headers: Message, body: bytes) -> Reply:
        """Answer one API request: ``(status, JSON object or raw bytes, extra headers)``; ``_Drop``: answer nothing."""
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        path = split.path.rstrip("/") or "/"
        if path.startswith(_ADMIN_PREFIX):
            return self._admin(method, path, body)
        with self._lock:
            settings = Settings(**vars(self._settings))
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            if settings.latency_s > 0:
                time.sleep(settings.latency_s)
            return self._api(method, path, query, headers, body, settings)
        except ApiError as exc:
            return exc.status, exc.body, exc.headers
        except _Drop:
            raise
        except Exception as exc:  # a bug here or in a test's chat_handler: answer 500 and show it
            traceback.print_exc()
            return 500, ApiError(500, f"stand-in failure: {exc!r}", kind="server_error").body, {}
        finally:
            with self._lock:
                self._in_flight -= 1

    def _api(
        self, method: str, path: str, query: dict[str, str], headers: Message, body: bytes, settings: Settings
    ) -> Reply:
        style, prefix, rest = "openai", "/v1", path.removeprefix("/v1")
        if path.startswith("/openai/"):
            style, prefix, rest = "azure", "/openai", path.removeprefix("/openai")
        elif not path.startswith("/v1/"):
            rest = ""
        deployment = None
        if style == "azure" and (found := _AZURE_DEPLOYMENT.fullmatch(rest)):
            deployment, rest = found["deployment"], found["rest"]
        route = next(((t, h, m) for meth, p, t, h in _ROUTES if meth == method and (m := p.fullmatch(rest))), None)
        if route is None or (style == "azure" and route[0] == "/chat/completions" and deployment is None):
            self._count(f"{method} <unmatched>")
            raise ApiError(404, "Resource not found", code="404")
        template, handler, match = route
        self._count(f"{method} {prefix}{'/deployments/{deployment}' if deployment else ''}{template}")
        if style == "azure" and not query.get("api-version"):
            raise ApiError(
                400,
                "The api-version query parameter (?api-version=) is required for all requests.",
                code="MissingApiVersionParameter",
            )
        self._authenticate(headers, style)
        fault = self._draw_fault(method, settings) if self._matches_fault_paths(template, settings) else None
        if fault is not None and not fault[1]:
            self._fail(fault[0], settings)
        request = _Request(style, match.groupdict(), query, headers, body, deployment)
        reply = getattr(self, handler)(request, settings)
        if fault is not None:
            self._fail(fault[0], settings)
        return reply

    def _authenticate(self, headers: Message, style: str) -> None:
        api_key = headers.get("api-key")
        authorization = headers.get("authorization", "")
        given = api_key if api_key is not None else authorization.removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self._api_key.encode()):
            if style == "azure":
                message = (
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                    "valid key for an active subscription and use a correct regional API endpoint for your resource."
                )
                raise ApiError(401, message, code="401")
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    @staticmethod
    def _matches_fault_paths(template: str, settings: Settings) -> bool:
        if callable(settings.fault_paths):
            return settings.fault_paths(template)
        return any(template.startswith(prefix) for prefix in settings.fault_paths)

    def _draw_fault(self, method: str, settings: Settings) -> tuple[str, bool] | None:
        """Return the fault to answer with and whether it comes after the work is done, or None."""
        rates = {
            "429": settings.fault_429_rate,
            "429-bare": settings.fault_429_bare_rate,
            "500": settings.fault_500_rate,
            "drop": settings.fault_drop_rate,
            "slow": settings.slow_rate,
        }
        with self._lock:
            draw = self._fault_rng.random()
            bounds = dict(zip(rates, itertools.accumulate(rates.values()), strict=True))
            kind = next((name for name, bound in bounds.items() if draw < bound), None)
            if kind is None:
                return None
            after = kind in ("500", "drop") and method == "POST" and settings.fault_after_work_share > 0
            after = after and self._fault_rng.random() < settings.fault_after_work_share
            self._faults[f"{kind}-after-work" if after else kind] += 1
        return kind, after

    @staticmethod
    def _fail(kind: str, settings: Settings) -> None:
        """Raise the fault ``kind`` (``slow`` only waits)."""
        if kind == "slow":
            time.sleep(settings.slow_s)
            return
        if kind == "drop":
            raise _Drop
        if kind == "500":
            raise ApiError(
                500, "The server had an error while processing your request. Sorry about that!", kind="server_error"
            )
        error = ApiError(
            429,
            f"Requests to the deployment have exceeded the rate limit. "
            f"Please retry after {settings.retry_after_s:g} seconds.",
            code="429",
            kind="requests",
        )
        if kind == "429":
            error.headers = {
                "Retry-After": f"{settings.retry_after_s:g}",
                "retry-after-ms": f"{settings.retry_after_s * 1000:g}",
            }
        raise error

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _admin(self, method: str, path: str, body: bytes) -> Reply:
        if (method, path) == ("GET", f"{_ADMIN_PREFIX}/stats"):
            return 200, self.stats(), {}
        if (method, path) == ("POST", f"{_ADMIN_PREFIX}/reset"):
            self.reset_stats()
            return 200, self.stats(), {}
        if (method, path) == ("POST", f"{_ADMIN_PREFIX}/config"):
            try:
                changes = json.loads(body or b"{}")
                if "chat_handler" in changes:
                    raise TypeError("chat_handler cannot be set over HTTP; use chat_mode/chat_text")
                self.configure(**changes)
            except (TypeError, ValueError) as exc:
                return 400, {"error": {"message": str(exc), "type": "invalid_request_error"}}, {}
            return 200, self.settings(), {}
        return 404, {"error": {"message": "Unknown admin endpoint", "type": "invalid_request_error"}}, {}

    # -- files -----------------------------------------------------------------------------------------------------

    def _file_json(self, file: _File, style: str) -> dict[str, Any]:
        if file.polls_left > 0:
            status = "pending" if style == "azure" else "uploaded"
        else:
            status = "error" if file.error else "processed"
        return {
            "id": file.id,
            "object": "file",
            "bytes": len(file.content),
            "created_at": file.created_at,
            "filename": file.filename,
            "purpose": file.purpose,
            "status": status,
            "status_details": file.error if status == "error" else None,
            "expires_at": None,
        }

    def _get_file(self, file_id: str) -> _File:
        file = self._files.get(file_id)
        if file is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id", code="fileNotFound")
        return file

    def _upload_file(self, request: _Request, settings: Settings) -> Reply:
        fields = _parse_multipart(request.headers.get("content-type", ""), request.body)
        for name in ("file", "purpose"):
            if name not in fields:
                raise ApiError(
                    400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
                )
        filename, content = fields["file"]
        purpose = fields["purpose"][1].decode()
        with self._lock:
            file = _File(
                id=self._new_id("file"),
                filename=filename or "upload",
                purpose=purpose,
                content=content,
                created_at=int(time.time()),
                polls_left=settings.file_processing_polls,
                error=_jsonl_problem(content) if purpose == "fine-tune" else None,
            )
            self._files[file.id] = file
            return 200, self._file_json(file, request.style), {}

    def _list_files(self, request: _Request, settings: Settings) -> Reply:
        with self._lock:
            items = [self._file_json(f, request.style) for f in reversed(self._files.values())]
        if "purpose" in request.query:
            items = [f for f in items if f["purpose"] == request.query["purpose"]]
        if request.query.get("order") == "asc":
            items.reverse()
        return 200, _page(items, request.query, 10_000, settings.list_pagination), {}

    def _retrieve_file(self, request: _Request, settings: Settings) -> Reply:
        with self._lock:
            file = self._get_file(request.params["file_id"])
            file.polls_left = max(0, file.polls_left - 1)
            return 200, self._file_json(file, request.style), {}

    def _delete_file(self, request: _Request, settings: Settings) -> Reply:
        with self._lock:
            file = self._get_file(request.params["file_id"])
            del self._files[file.id]
        return 200, {"id": file.id, "object": "file", "deleted": True}, {}

    def _file_content(self, request: _Request, settings: Settings) -> Reply:
        with self._lock:
            return 200, self._get_file(request.params["file_id"]).content, {}

    # -- fine-tuning jobs ------------------------------------------------------------------------------------------

    def _create_job(self, request: _Request, settings: Settings) -> Reply:
        body = request.json()
        for name in ("model", "training_file"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise ApiError(
                    400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
                )
        method_type = (body.get("method") or {"type": "supervised"}).get("type")
        if method_type not in ("supervised", "dpo", "reinforcement"):
            raise ApiError(400, f"Invalid method type: {method_type!r}.", param="method.type", code="invalid_value")
        with self._lock:
            for name in ("training_file", "validation_file"):
                self._check_training_file(name, body.get(name))
            job = _Job(
                id=self._new_id("ftjob"),
                request=body,
                created_at=int(time.time()),
                seed=body["seed"] if isinstance(body.get("seed"), int) else self._id_rng.randrange(2**31),
                steps=max(1, settings.job_steps),
                polls_per_state=max(1, settings.job_polls_per_state),
                fail_with=settings.fail_jobs_with,
            )
            self._jobs[job.id] = job
            self._event(job, f"Created fine-tuning job: {job.id}")
            self._event(job, f"Validating training file: {body['training_file']}")
            return 200, self._job_json(job), {}

    def _check_training_file(self, param: str, file_id: str | None) -> None:
        if file_id is None:
            return
        file = self._files.get(file_id)
        if file is None:
            raise ApiError(400, f"invalid {param}: {file_id}", param=param, code="invalidPayload")
        if file.polls_left > 0:
            message = f"The {param} {file_id} has not been processed yet. Try again later."
            raise ApiError(400, message, param=param, code="fileNotReady")
        if file.error:
            raise ApiError(400, f"The {param} {file_id} is invalid: {file.error}", param=param, code="invalidPayload")

    def _get_job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"Fine-tuning job {job_id} not found.", param="fine_tuning_job_id", code="notFound")
        return job

    def _list_jobs(self, request: _Request, settings: Settings) -> Reply:
        with self._lock:
            items = [self._job_json(job) for job in reversed(self._jobs.values())]
        return 200, _page(items, request.query, 20, settings.list_pagination), {}

    def _retrieve_job(self, request: _Request, settings: Settings) -> Reply:
        with self._lock:
            job = self._get_job(request.params["job_id"])
            job.polls += 1
            if job.polls >= job.polls_per_state and job.status not in _TERMINAL:
                job.polls = 0
                self._advance(job)
            return 200, self._job_json(job), {}

    def _cancel_job(self, request: _Request, settings: Settings) -> Reply:
        with self._lock:
            job = self._get_job(request.params["job_id"])
            if job.status in _TERMINAL:
                message = f"Job {job.id} has already {job.status}; it cannot be cancelled."
                raise ApiError(400, message, code="jobNotCancellable")
            job.status = "cancelled"
            self._event(job, "Fine-tuning job cancelled")
            return 200, self._job_json(job), {}

    def _list_events(self, request: _Request, settings: Settings) -> Reply:
        with self._lock:
            events = list(reversed(self._get_job(request.params["job_id"]).events))
        return 200, _page(events, request.query, 20, settings.list_pagination), {}

    def _list_checkpoints(self, request: _Request, settings: Settings) -> Reply:
        with self._lock:
            checkpoints = list(reversed(self._get_job(request.params["job_id"]).checkpoints))
        return 200, _page(checkpoints, request.query, 10, settings.list_pagination), {}

    def _event(self, job: _Job, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        job.events.append(
            {
                "id": self._new_id("ftevent"),
                "object": "fine_tuning.job.event",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": data or {},
                "type": "metrics" if data else "message",
            }
        )

    def _advance(self, job: _Job) -> None:
        """Move a non-terminal job one state on (caller holds the lock)."""
        position = _JOB_STATES.index(job.status)
        if position + 1 < len(_JOB_STATES):
            job.status = _JOB_STATES[position + 1]
            self._event(job, _STATE_MESSAGES[job.status])
            return
        now = int(time.time())
        if job.fail_with is not None:
            job.status, job.finished_at = "failed", now
            job.error = {"code": "training_failed", "message": job.fail_with, "param": None}
            self._event(job, job.fail_with, level="error")
            return
        request = job.request
        rows = _loss_curve(job.seed, job.steps, request.get("validation_file") is not None)
        for row in rows:
            message = f"Step {row['step']}/{job.steps}: training loss={row['train_loss']:.4f}"
            self._event(job, message, data={**row, "total_steps": job.steps})
        job.fine_tuned_model = f"{request['model']}.ft-{job.id.removeprefix('ftjob-')}" + (
            f"-{request['suffix']}" if request.get("suffix") else ""
        )
        for step in sorted({max(1, job.steps // 3), max(1, 2 * job.steps // 3), job.steps}):
            checkpoint = {
                "id": self._new_id("ftckpt"),
                "object": "fine_tuning.job.checkpoint",
                "created_at": now,
                "fine_tuned_model_checkpoint": f"{job.fine_tuned_model}:ckpt-step-{step}",
                "fine_tuning_job_id": job.id,
                "step_number": step,
                "metrics": {**rows[step - 1], "step": float(step)},
            }
            job.checkpoints.append(checkpoint)
            self._event(job, f"Checkpoint created at step {step}")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(rows[0].keys())
        writer.writerows([("" if v is None else v) for v in row.values()] for row in rows)
        result = _File(self._new_id("file"), "results.csv", "fine-tune-results", buffer.getvalue().encode(), now, 0)
        self._files[result.id] = result
        epochs = self._hyperparameters(request)["n_epochs"]
        training_bytes = (
            len(self._files[request["training_file"]].content) if request["training_file"] in self._files else 0
        )
        job.trained_tokens = (training_bytes // 4 + 1) * (epochs if isinstance(epochs, int) else 1)
        job.result_files = [result.id]
        job.status, job.finished_at = "succeeded", now
        self._event(job, f"New fine-tuned model created: {job.fine_tuned_model}")
        self._event(job, "The job has successfully completed")

    @staticmethod
    def _hyperparameters(request: dict[str, Any]) -> dict[str, Any]:
        method = request.get("method") or {}
        given = request.get("hyperparameters") or (method.get(method.get("type", ""), {}) or {}).get("hyperparameters")
        return {key: (given or {}).get(key, "auto") for key in _HYPERPARAMETER_KEYS}

    def _job_json(self, job: _Job) -> dict[str, Any]:
        request = job.request
        hyperparameters = self._hyperparameters(request)
        method = request.get("method") or {
            "type": "supervised",
            "supervised": {"hyperparameters": hyperparameters},
        }
        return {
            "id": job.id,
            "object": "fine_tuning.job",
            "created_at": job.created_at,
            "model": request["model"],
            "fine_tuned_model": job.fine_tuned_model,
            "organization_id": "org-standin",
            "status": job.status,
            "training_file": request["training_file"],
            "validation_file": request.get("validation_file"),
            "hyperparameters": hyperparameters,
            "method": method,
            "result_files": list(job.result_files),
            "trained_tokens": job.trained_tokens,
            "error": job.error,
            "finished_at": job.finished_at,
            "estimated_finish": None,
            "seed": job.seed,
            "suffix": request.get("suffix"),
            "metadata": request.get("metadata"),
            "integrations": request.get("integrations") or [],
        }

    # -- chat ------------------------------------------------------------------------------------------------------

    def _chat_completion(self, request: _Request, settings: Settings) -> Reply:
        body = request.json()
        if body.get("stream"):
            raise ApiError(400, "stream=true is not supported by the stand-in", param="stream")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty array.", param="messages", code="invalid_value")
        if settings.chat_mode == "constant":
            text = settings.chat_text
        else:
            text = (settings.chat_handler or default_chat_reply)(body)
        prompt_chars = sum(
            len(m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content"))) for m in messages
        )
        prompt_tokens, completion_tokens = prompt_chars // 4 + 1, len(text) // 4 + 1
        with self._lock:
            completion_id = self._new_id("chatcmpl")
        reply: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.deployment or body.get("model", ""),
            "system_fingerprint": "fp_standin",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if request.style == "azure":
            reply["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {}}]
        return 200, reply, {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
    standin: StandIn

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def close_connections(self) -> None:
        """Shut down every open client connection so idle keep-alive handler threads end."""
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client goes away; report anything else."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _serve(self) -> None:
        body = self._read_body()
        try:
            status, payload, headers = self.server.standin.handle(self.command, self.path, self.headers, body)
        except _Drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(payload, bytes):
            data, content_type = payload, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: request lines and headers could carry credentials."""


def main(argv: Sequence[str] | None = None) -> None:
    """Run a `StandIn` until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m ft_assets_tests.standin", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--api-key", default="standin-key")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fault-429-rate", type=float, default=0.0)
    parser.add_argument("--fault-500-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with StandIn(
        args.api_key,
        latency_s=args.latency_ms / 1000,
        fault_429_rate=args.fault_429_rate,
        fault_500_rate=args.fault_500_rate,
        seed=args.seed,
        port=args.port,
    ) as server:
        print(f"listening on {server.url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
