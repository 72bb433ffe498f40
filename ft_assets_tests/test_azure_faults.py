"""Azure calls that end: bounded listing, a flaky service (429s, 500s, dropped connections), the sensor asking again."""

import io
import itertools
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import openai
import pytest

from ft_assets.azure.assets import MODEL_RUN_ATTEMPTS, azure_finetune_sensor
from ft_assets.azure.finetune import MAX_LIST_PAGES, Retry, list_items, upload
from ft_assets.definitions import defs
from ft_assets.resources import LLMResource
from ft_assets_tests.conftest import ROOT
from ft_assets_tests.standin import StandIn
from ft_assets_tests.test_azure import API_KEY, DATA, _azure_llm, _resources, _run, _sensor_until_done

API_VERSION = "2025-04-01-preview"
FAST = {"retry_base_s": 0.01, "retry_cap_s": 0.2}  # short backoff waits; the stand-in's Retry-After is 50 ms
FLAKY = {  # Azure-like lists; 30% of file and fine-tuning requests fail; a failed POST has done its work first
    "list_pagination": "none",
    "fault_paths": ("/files", "/fine_tuning"),
    "fault_429_rate": 0.075,
    "fault_429_bare_rate": 0.075,
    "fault_500_rate": 0.075,
    "fault_drop_rate": 0.075,
    "fault_after_work_share": 1.0,
}


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copytree(ROOT / "data" / "raw", tmp_path / "raw")
    shutil.copytree(ROOT / "data" / "sources", tmp_path / "sources")
    return tmp_path


def _client(server: StandIn) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=server.azure_endpoint, api_key=API_KEY, api_version=API_VERSION, max_retries=0
    )


def test_listing_ends_on_a_service_that_does_not_paginate(tmp_path):
    lines: list[str] = []
    with StandIn(API_KEY, list_pagination="none", file_processing_polls=0) as server, _client(server) as client:
        for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
            client.files.create(file=(name, io.BytesIO(b'{"messages": []}\n')), purpose="fine-tune")
        # The stand-in answers like Azure's file list: the SDK's own iterator would ask for the same page forever.
        assert len(list(itertools.islice(client.files.list(), 30))) == 30
        server.reset_stats()
        for name, new in (("d.jsonl", True), ("a.jsonl", False)):  # a new file, then the oldest one again
            path = tmp_path / name
            path.write_text('{"messages": []}\n')
            file_id, uploaded_now = upload(client, path, name, retry=Retry(), log=lines.append)
            assert uploaded_now is new and file_id.startswith("file-")
        requests = {"GET /openai/files": 2, "POST /openai/files": 1, "GET /openai/files/{file_id}": 2}
        assert server.stats()["requests"] == requests, "one page per listing"

        server.configure(list_pagination="repeat")  # says has_more, ignores after: a repeated page ends the list
        server.reset_stats()
        names = [f.filename for f in list_items(client.files.list, Retry(), lines.append, "listing files", limit=2)]
        assert names == ["d.jsonl", "c.jsonl"] and server.stats()["requests"] == {"GET /openai/files": 2}
        assert "repeats ids already seen" in lines[-1]


def test_listing_stops_at_the_page_limit():
    pages = itertools.count()

    def endless(**params: object) -> SimpleNamespace:
        number = next(pages)
        return SimpleNamespace(data=[SimpleNamespace(id=f"item-{number}")], has_more=True)

    lines: list[str] = []
    assert len(list(list_items(endless, Retry(), lines.append, "listing jobs"))) == MAX_LIST_PAGES
    assert next(pages) == MAX_LIST_PAGES and f"stopped after {MAX_LIST_PAGES} pages" in lines[-1]


def _azure_finetune(project: Path, llm: LLMResource, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Run the ``azure_finetune`` job of the definitions, with short retry waits."""
    return defs.resolve_job_def("azure_finetune").execute_in_process(
        instance=instance, resources=_resources(project, llm), raise_on_error=False,
        run_config={"ops": {"azure_training_files": {"config": FAST}, "azure_finetune_job": {"config": FAST}}},
    )  # fmt: skip


def test_a_flaky_service_ends_with_one_job_after_two_green_runs(project):
    with (
        StandIn(API_KEY, file_processing_polls=1, seed=7) as server,
        dg.DagsterInstance.ephemeral() as instance,
        _client(server) as client,
    ):
        llm = _azure_llm(server, project)
        assert _run(project, llm, instance, DATA).success
        server.configure(**FLAKY)
        started = time.monotonic()
        runs = [_azure_finetune(project, llm, instance) for _ in range(2)]
        elapsed = time.monotonic() - started
        stats = server.stats()
        server.configure(fault_paths=())
        jobs = client.fine_tuning.jobs.list().data
        files = client.files.list(purpose="fine-tune").data
    assert [run.success for run in runs] == [True, True]
    assert len(jobs) == 1 and len(files) == 2, "one job and one file per split, whatever failed on the way"
    job_ids = {
        e.step_materialization_data.materialization.metadata["job_id"].value
        for run in runs
        for e in run.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "azure_finetune_job"
    }
    assert job_ids == {jobs[0].id}
    faults = stats["faults"]
    assert {kind.removesuffix("-after-work") for kind in faults} == {"429", "429-bare", "500", "drop"}
    assert sum(faults.values()) >= 10
    assert faults.get("500-after-work", 0) + faults.get("drop-after-work", 0) >= 2, "creates that failed after the work"
    requests = stats["requests"]
    assert requests["POST /openai/fine_tuning/jobs"] >= 2 and requests["POST /openai/files"] >= 3
    assert requests["GET /openai/files"] + requests["GET /openai/fine_tuning/jobs"] < 60
    assert elapsed < 30


def test_the_sensor_asks_again_after_a_failed_model_run(project):
    with StandIn(API_KEY, job_polls_per_state=1) as server, dg.DagsterInstance.ephemeral() as instance:
        llm = _azure_llm(server, project)
        assert _run(project, llm, instance, [*DATA, "azure_training_files", "azure_finetune_job"]).success
        request, cursor = _sensor_until_done(instance, llm)
        job_id = request.tags["ft_assets/azure_job"]
        keys = [request.run_key]
        server.configure(fault_paths=("/fine_tuning",), fault_500_rate=1.0)  # the model's run fails at once
        for _ in range(MODEL_RUN_ATTEMPTS - 1):
            failed = _run(project, llm, instance, ["azure_fine_tuned_model"], request.tags,
                          azure_fine_tuned_model={"retry_attempts": 1})  # fmt: skip
            assert not failed.success
            context = dg.build_sensor_context(instance=instance, cursor=json.dumps(cursor), resources={"llm": llm})
            server.configure(fault_500_rate=0.0)
            (request,) = azure_finetune_sensor(context).run_requests
            server.configure(fault_500_rate=1.0)
            keys.append(request.run_key)
        server.configure(fault_500_rate=0.0)
        assert _run(project, llm, instance, ["azure_fine_tuned_model"], request.tags).success
        context = dg.build_sensor_context(instance=instance, cursor=json.dumps(cursor), resources={"llm": llm})
        done = azure_finetune_sensor(context)
    assert keys == [f"{job_id}:succeeded:{n}" for n in range(1, MODEL_RUN_ATTEMPTS + 1)]
    assert not done.run_requests and "its model is recorded" in done.skip_reason.skip_message


def test_the_sensor_gives_up_after_the_last_failed_run(project):
    with StandIn(API_KEY, job_polls_per_state=1) as server, dg.DagsterInstance.ephemeral() as instance:
        llm = _azure_llm(server, project)
        assert _run(project, llm, instance, [*DATA, "azure_training_files", "azure_finetune_job"]).success
        request, cursor = _sensor_until_done(instance, llm)
        server.configure(fault_paths=("/fine_tuning",), fault_500_rate=1.0)
        for _ in range(MODEL_RUN_ATTEMPTS):
            failed = _run(project, llm, instance, ["azure_fine_tuned_model"], request.tags,
                          azure_fine_tuned_model={"retry_attempts": 1})  # fmt: skip
            assert not failed.success
        server.configure(fault_500_rate=0.0)
        context = dg.build_sensor_context(instance=instance, cursor=json.dumps(cursor), resources={"llm": llm})
        result = azure_finetune_sensor(context)
    assert not result.run_requests
    assert f"failed {MODEL_RUN_ATTEMPTS} time(s), not asking again" in result.skip_reason.skip_message
