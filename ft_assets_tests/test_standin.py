"""The stand-in Azure OpenAI / OpenAI server, driven by the real openai client over HTTP."""

import asyncio
import http.client
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

from ft_assets_tests.conftest import ROOT, chat, write_jsonl
from ft_assets_tests.standin import StandIn

KEY = "test-key-123"
API_VERSION = "2025-04-01-preview"


@pytest.fixture
def server() -> Iterator[StandIn]:
    with StandIn(KEY) as standin:
        yield standin


def azure(server: StandIn, **options: object) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=server.azure_endpoint, api_key=KEY, api_version=API_VERSION, **options)


def plain(server: StandIn, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key=KEY, **options)


def training_file(tmp_path: Path, rows: int = 4) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", [chat(f"invoice {i}", "paid") for i in range(rows)])


def upload_processed(client: openai.OpenAI, path: Path) -> str:
    file = client.files.create(file=path, purpose="fine-tune")
    while file.status != "processed":
        file = client.files.retrieve(file.id)
    return file.id


def poll_job(client: openai.OpenAI, job_id: str) -> list[str]:
    statuses = []
    while not statuses or statuses[-1] not in ("succeeded", "failed", "cancelled"):
        statuses.append(client.fine_tuning.jobs.retrieve(job_id).status)
    return statuses


@pytest.mark.parametrize(("style", "first_status"), [("azure", "pending"), ("openai", "uploaded")])
def test_upload_polls_until_processed(server: StandIn, tmp_path: Path, style: str, first_status: str) -> None:
    client = azure(server) if style == "azure" else plain(server)
    path = training_file(tmp_path)
    file = client.files.create(file=path, purpose="fine-tune")
    assert (file.status, file.status_details, file.purpose, file.filename) == (
        first_status,
        None,
        "fine-tune",
        "train.jsonl",
    )
    assert file.bytes == path.stat().st_size
    assert client.files.retrieve(file.id).status == first_status
    assert client.files.retrieve(file.id).status == "processed"
    assert client.files.content(file.id).content == path.read_bytes()
    assert [f.id for f in client.files.list()] == [file.id]
    assert client.files.delete(file.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file.id)


def test_invalid_jsonl_ends_in_error_status(server: StandIn, tmp_path: Path) -> None:
    client = azure(server)
    path = write_jsonl(tmp_path / "bad.jsonl", [chat("a", "b"), b"not json"])
    file_id = client.files.create(file=path, purpose="fine-tune").id
    client.files.retrieve(file_id)
    file = client.files.retrieve(file_id)
    assert file.status == "error"
    assert "Line 2" in (file.status_details or "")
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id)


def test_job_lifecycle_results_events_and_checkpoints(tmp_path: Path) -> None:
    with StandIn(KEY, job_steps=12) as server:
        client = azure(server)
        train = upload_processed(client, training_file(tmp_path))
        valid = upload_processed(client, training_file(tmp_path, rows=2))
        job = client.fine_tuning.jobs.create(
            model="gpt-4o-mini-2024-07-18",
            training_file=train,
            validation_file=valid,
            suffix="invoices",
            seed=7,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
            extra_body={"trainingType": "Standard"},
        )
        assert job.status == "validating_files"
        assert (job.fine_tuned_model, job.finished_at, job.estimated_finish, job.error) == (None, None, None, None)
        assert poll_job(client, job.id) == ["pending", "queued", "running", "succeeded"]
        assert server.job_request(job.id)["trainingType"] == "Standard"

        done = client.fine_tuning.jobs.retrieve(job.id)
        hex_id = job.id.removeprefix("ftjob-")
        assert done.fine_tuned_model == f"gpt-4o-mini-2024-07-18.ft-{hex_id}-invoices"
        assert done.hyperparameters.n_epochs == 2
        assert done.method is not None
        assert done.method.type == "supervised"
        assert done.seed == 7
        assert done.trained_tokens
        assert done.finished_at
        lines = client.files.content(done.result_files[0]).text.splitlines()
        assert lines[0] == "step,train_loss,train_mean_token_accuracy,valid_loss,valid_mean_token_accuracy"
        rows = [line.split(",") for line in lines[1:]]
        assert [int(r[0]) for r in rows] == list(range(1, 13))
        train_loss = [float(r[1]) for r in rows]
        assert train_loss == sorted(train_loss, reverse=True)
        assert all(r[3] for r in rows)

        everything = client.fine_tuning.jobs.list_events(job.id, limit=100)
        assert everything.has_more is False
        first_page = client.fine_tuning.jobs.list_events(job.id, limit=4)
        assert first_page.has_more
        paged = list(client.fine_tuning.jobs.list_events(job.id, limit=4))
        assert [e.id for e in paged] == [e.id for e in everything.data]
        messages = [e.message for e in everything.data]
        assert messages[0] == "The job has successfully completed"
        assert messages[-1] == f"Created fine-tuning job: {job.id}"
        assert sum(e.type == "metrics" for e in everything.data) == 12

        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in checkpoints] == [12, 8, 4]
        assert checkpoints[0].id.startswith("ftckpt-")
        assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-12"
        assert checkpoints[0].metrics.train_loss == train_loss[-1]


def test_results_are_deterministic_in_the_job_seed(server: StandIn, tmp_path: Path) -> None:
    client = plain(server)
    train = upload_processed(client, training_file(tmp_path))
    contents = []
    for _ in range(2):
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train, seed=3)
        poll_job(client, job.id)
        result = client.fine_tuning.jobs.retrieve(job.id).result_files[0]
        contents.append(client.files.content(result).text)
    assert contents[0] == contents[1]


def test_job_rejects_missing_or_unprocessed_files(server: StandIn, tmp_path: Path) -> None:
    client = azure(server)
    with pytest.raises(openai.BadRequestError, match="invalid training_file"):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file="file-nope")
    pending = client.files.create(file=training_file(tmp_path), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="not been processed") as caught:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=pending.id)
    assert caught.value.param == "training_file"


def test_failing_job_reports_its_message(tmp_path: Path) -> None:
    with StandIn(KEY, fail_jobs_with="Training file has too few examples") as server:
        client = azure(server)
        job = client.fine_tuning.jobs.create(
            model="gpt-4o-mini", training_file=upload_processed(client, training_file(tmp_path))
        )
        assert poll_job(client, job.id)[-1] == "failed"
        failed = client.fine_tuning.jobs.retrieve(job.id)
        assert failed.error is not None
        assert failed.error.message == "Training file has too few examples"
        assert failed.fine_tuned_model is None
        assert failed.result_files == []
        newest = client.fine_tuning.jobs.list_events(job.id).data[0]
        assert (newest.level, newest.message) == ("error", "Training file has too few examples")


def test_cancel_and_list_jobs(server: StandIn, tmp_path: Path) -> None:
    client = plain(server)
    train = upload_processed(client, training_file(tmp_path))
    ids = [client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train).id for _ in range(3)]
    assert client.fine_tuning.jobs.cancel(ids[0]).status == "cancelled"
    assert client.fine_tuning.jobs.retrieve(ids[0]).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(ids[0])
    page = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == ids[:0:-1]
    assert page.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == ids[::-1]


@pytest.mark.parametrize("style", ["azure", "openai"])
def test_wrong_key_is_401(server: StandIn, style: str) -> None:
    if style == "azure":
        client = openai.AzureOpenAI(azure_endpoint=server.url, api_key="wrong", api_version=API_VERSION, max_retries=0)
    else:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.files.list()
    assert caught.value.status_code == 401
    assert "wrong" not in json.dumps(server.stats())


def test_azure_path_without_api_version_is_400(server: StandIn) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/openai", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.list()
    assert caught.value.code == "MissingApiVersionParameter"


def test_chat_with_custom_handler_on_both_paths(tmp_path: Path) -> None:
    seen: list[dict] = []

    def handler(body: dict) -> str:
        seen.append(body)
        return "label: paid"

    with StandIn(KEY, chat_handler=handler) as server:
        messages = [{"role": "user", "content": "Invoice 17, settled in full."}]
        reply = azure(server).chat.completions.create(model="my-deployment", messages=messages, temperature=0)
        assert reply.choices[0].message.content == "label: paid"
        assert reply.choices[0].finish_reason == "stop"
        assert reply.model == "my-deployment"
        assert reply.usage is not None
        assert reply.usage.completion_tokens == len("label: paid") // 4 + 1
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        assert plain(server).chat.completions.create(model="gpt-4o-mini", messages=messages).model == "gpt-4o-mini"
        assert [body["messages"] for body in seen] == [messages, messages]
        assert seen[0]["temperature"] == 0
        requests = server.stats()["requests"]
        assert requests["POST /openai/deployments/{deployment}/chat/completions"] == 1
        assert requests["POST /v1/chat/completions"] == 1
        server.configure(chat_mode="constant", chat_text="fixed")
        assert plain(server).chat.completions.create(model="m", messages=messages).choices[0].message.content == "fixed"


def test_default_handler_satisfies_a_json_schema(server: StandIn) -> None:
    class Line(BaseModel):
        sku: str
        quantity: int

    class Invoice(BaseModel):
        status: str
        total: float
        lines: list[Line]
        customer: Line | None

    parsed = plain(server).chat.completions.parse(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], response_format=Invoice
    )
    assert parsed.choices[0].message.parsed == Invoice(status="", total=0, lines=[], customer=Line(sku="", quantity=0))


def test_429_is_retried_using_retry_after_then_surfaces_without_retries(tmp_path: Path) -> None:
    with StandIn(KEY, fault_429_rate=0.3, retry_after_s=0.02, seed=2) as server:
        client = plain(server, max_retries=10)
        start = time.perf_counter()
        for _ in range(20):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        elapsed = time.perf_counter() - start
        stats = server.stats()
        faults = stats["faults"]["429"]
        assert faults > 3
        assert stats["requests"]["POST /v1/chat/completions"] == 20 + faults
        assert elapsed < 0.3 * faults  # waited the server's 20 ms, not the client's 0.5 s default backoff

        server.configure(fault_429_rate=1.0)
        with pytest.raises(openai.RateLimitError) as caught:
            plain(server, max_retries=0).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.response.headers["retry-after"] == "0.02"
        assert caught.value.response.headers["retry-after-ms"] == "20"
        client.files.create(file=training_file(tmp_path), purpose="fine-tune")  # files are not fault paths


def test_500_and_slow_faults(server: StandIn) -> None:
    messages = [{"role": "user", "content": "hi"}]
    server.configure(fault_500_rate=1.0, fault_paths=["/files"])
    assert plain(server, max_retries=0).chat.completions.create(model="m", messages=messages)
    with pytest.raises(openai.InternalServerError):
        plain(server, max_retries=0).files.list()
    server.configure(fault_500_rate=0.0, slow_rate=1.0, slow_s=0.6, fault_paths=lambda route: route.startswith("/chat"))
    with pytest.raises(openai.APITimeoutError):
        plain(server, max_retries=0, timeout=0.2).chat.completions.create(model="m", messages=messages)
    assert server.stats()["faults"] == {"500": 1, "slow": 1}


def test_bare_429_dropped_connections_and_faults_after_the_work(server: StandIn, tmp_path: Path) -> None:
    client = azure(server, max_retries=0)
    server.configure(fault_429_bare_rate=1.0, fault_paths=["/files"])
    with pytest.raises(openai.RateLimitError) as caught:
        client.files.list()
    assert "retry-after" not in caught.value.response.headers and "retry-after-ms" not in caught.value.response.headers
    server.configure(fault_429_bare_rate=0.0, fault_drop_rate=1.0)
    with pytest.raises(openai.APIConnectionError):
        client.files.create(file=training_file(tmp_path), purpose="fine-tune")  # dropped before the work
    server.configure(fault_after_work_share=1.0)
    with pytest.raises(openai.APIConnectionError):
        client.files.create(file=training_file(tmp_path), purpose="fine-tune")  # dropped after the work
    server.configure(fault_drop_rate=0.0, fault_500_rate=1.0)
    with pytest.raises(openai.InternalServerError):
        client.files.create(file=training_file(tmp_path), purpose="fine-tune")
    server.configure(fault_500_rate=0.0)
    assert len(client.files.list().data) == 2, "the uploads answered with an error after the work exist"
    assert server.stats()["faults"] == {"429-bare": 1, "drop": 1, "drop-after-work": 1, "500-after-work": 1}


@pytest.mark.parametrize(("pagination", "has_more"), [("none", None), ("repeat", True)])
def test_lists_that_ignore_after(server: StandIn, tmp_path: Path, pagination: str, has_more: bool | None) -> None:
    client = azure(server, max_retries=0)
    ids = [client.files.create(file=training_file(tmp_path), purpose="fine-tune").id for _ in range(3)]
    server.configure(list_pagination=pagination)
    first = client.files.list(limit=2)
    again = client.files.list(limit=2, after=first.data[-1].id)
    assert [f.id for f in first.data] == [f.id for f in again.data] == ids[::-1][:2]
    assert first.has_more is has_more
    with pytest.raises(ValueError, match="list_pagination"):
        server.configure(list_pagination="pages")


def test_async_clients_run_concurrently(tmp_path: Path) -> None:
    async def scenario(server: StandIn) -> float:
        clients = [
            openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=KEY),
            openai.AsyncAzureOpenAI(azure_endpoint=server.azure_endpoint, api_key=KEY, api_version=API_VERSION),
        ]
        for client in clients:
            file = await client.files.create(file=training_file(tmp_path), purpose="fine-tune")
            while file.status != "processed":
                file = await client.files.retrieve(file.id)
        server.configure(latency_s=0.2)
        start = time.perf_counter()
        replies = await asyncio.gather(
            *(
                clients[i % 2].chat.completions.create(model="m", messages=[{"role": "user", "content": str(i)}])
                for i in range(64)
            )
        )
        elapsed = time.perf_counter() - start
        assert sorted(r.choices[0].message.content for r in replies) == sorted(f"echo: {i}" for i in range(64))
        for client in clients:
            await client.close()
        return elapsed

    with StandIn(KEY) as server:
        elapsed = asyncio.run(scenario(server))
        assert elapsed < 2.0  # 64 requests x 0.2 s one at a time would take 12.8 s
        assert server.stats()["max_in_flight"] >= 16


def test_stats_reset_and_configure(server: StandIn) -> None:
    plain(server).files.list()
    azure(server).files.list()
    stats = server.stats()
    assert stats["total"] == 2
    assert stats["requests"] == {"GET /v1/files": 1, "GET /openai/files": 1}
    assert KEY not in json.dumps(stats)
    server.reset_stats()
    assert server.stats()["total"] == 0
    with pytest.raises(TypeError):
        server.configure(latency=1)


def test_chunked_request_bodies_keep_the_connection_usable(server: StandIn) -> None:
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=5)
    body = iter([b'{"job_steps": ', b"3}"])
    connection.request("POST", "/_standin/config", body=body)  # an iterable body is sent chunked
    assert json.load(connection.getresponse())["job_steps"] == 3
    connection.request("GET", "/_standin/stats")
    assert json.load(connection.getresponse())["total"] == 0
    connection.close()


def test_a_failing_chat_handler_becomes_a_500() -> None:
    def broken(body: dict) -> str:
        raise KeyError("answer")

    with StandIn(KEY, chat_handler=broken) as server, pytest.raises(openai.InternalServerError, match="KeyError"):
        plain(server, max_retries=0).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])


def admin(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{url}{path}", data=data), timeout=5) as response:
        return json.load(response)


def test_subprocess_mode_and_admin_surface() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "ft_assets_tests.standin", "--port", "0", "--latency-ms", "10", "--api-key", KEY],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        assert reply.choices[0].message.content == "echo: ping"
        stats = admin(url, "/_standin/stats")
        assert stats["requests"] == {"POST /v1/chat/completions": 1}
        settings = admin(url, "/_standin/config", {"fault_429_rate": 1.0, "chat_mode": "constant"})
        assert settings["latency_s"] == pytest.approx(0.01)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        assert admin(url, "/_standin/reset", {})["total"] == 0
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0
