"""Azure OpenAI fine-tuning through Dagster against the local stand-in: skip, upload, one job, sensor, results."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from ft_assets.azure.assets import azure_finetune_sensor
from ft_assets.azure.finetune import default_epochs, estimate, parse_results
from ft_assets.definitions import defs
from ft_assets.lineage import queries
from ft_assets.lineage.store import connect
from ft_assets.llm.client import sync_client
from ft_assets.resources import ArtifactIOManager, ArtifactStore, LineageStore, LLMResource
from ft_assets.upstream import artifact_metadata
from ft_assets_tests.conftest import ROOT
from ft_assets_tests.standin import StandIn

API_KEY = "azure-standin-key-93c2e1"
AZURE = ["azure_training_files", "azure_finetune_job", "azure_fine_tuned_model"]


def test_cookbook_epoch_rule_and_estimate():
    assert default_epochs(10) == 10 and default_epochs(1000) == 3 and default_epochs(20_000) == 1
    rows = [{"messages": [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "y" * 40}]}] * 50
    cost = estimate(rows, None, price_per_1m_tokens=3.0, max_tokens_per_example=65_536)
    assert cost["epochs"] == 3 and cost["tokens_per_epoch"] == 50 * (110 + 3 * 2 + 3)
    assert cost["estimated_cost_usd"] == round(cost["billed_tokens"] * 3.0 / 1e6, 4)
    assert parse_results("step,train_loss,valid_loss\n1,2.5,\n2,1.5,1.7\n") == [
        {"step": 1.0, "train_loss": 2.5, "valid_loss": None},
        {"step": 2.0, "train_loss": 1.5, "valid_loss": 1.7},
    ]


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copytree(ROOT / "data" / "raw", tmp_path / "raw")
    shutil.copytree(ROOT / "data" / "sources", tmp_path / "sources")
    return tmp_path


def _resources(project: Path, llm: LLMResource) -> dict:
    artifacts = str(project / "artifacts")
    return {
        "artifacts": ArtifactStore(root=artifacts),
        "io_manager": ArtifactIOManager(root=artifacts),
        "lineage": LineageStore(path=str(project / "lineage.duckdb")),
        "llm": llm,
    }


def _run(
    project: Path,
    llm: LLMResource,
    instance: dg.DagsterInstance,
    selection: list[str],
    tags: dict[str, str] | None = None,
    **config,
) -> dg.ExecuteInProcessResult:
    ops = {
        "raw_examples": {"config": {"folder": str(project / "raw")}},
        "source_documents": {"config": {"folder": str(project / "sources")}},
        "synthetic_examples": {"config": {"max_sources": 0}},
        **{name: {"config": value} for name, value in config.items()},
    }
    job = defs.get_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(a) for a in selection})
    return job.execute_in_process(
        instance=instance, resources=_resources(project, llm), raise_on_error=False, tags=tags,
        run_config={"ops": {k: v for k, v in ops.items() if k in selection}},
    )  # fmt: skip


DATA = ["raw_examples", "source_documents", "synthetic_examples", "cleaned_examples", "train_split",
        "validation_split", "test_split"]  # fmt: skip


def _azure_llm(server: StandIn, project: Path) -> LLMResource:
    return LLMResource(azure_endpoint=server.azure_endpoint, api_key=API_KEY, api_version="2025-04-01-preview",
                       cache_dir=str(project / "cache"))  # fmt: skip


def _sensor_until_done(instance: dg.DagsterInstance, llm: LLMResource, limit: int = 20) -> tuple[dg.RunRequest, list]:
    cursor = None
    for _ in range(limit):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"llm": llm})
        result = azure_finetune_sensor(context)
        cursor = result.cursor
        if result.run_requests:
            return result.run_requests[0], json.loads(cursor)
    raise AssertionError("the sensor never asked for the fine-tuned model")


def test_without_credentials_azure_assets_skip_and_name_the_variables(project):
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(project, LLMResource(), instance, [*DATA, *AZURE])
        assert result.success
        done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert done == set(DATA)
        logs = "\n".join(e.message or "" for e in instance.all_logs(result.run_id))
        assert "AZURE_OPENAI_ENDPOINT" in logs and "OPENAI_API_KEY" in logs
        skip = azure_finetune_sensor(dg.build_sensor_context(instance=instance, resources={"llm": LLMResource()}))
        assert "AZURE_OPENAI_ENDPOINT" in skip.skip_message


def test_full_run_creates_one_job_follows_it_and_records_metrics(project):
    with StandIn(API_KEY, job_polls_per_state=1, job_steps=6) as server, dg.DagsterInstance.ephemeral() as instance:
        llm = _azure_llm(server, project)
        first = _run(project, llm, instance, [*DATA, "azure_training_files", "azure_finetune_job"])
        assert first.success
        job_meta = {e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
                    for e in first.get_asset_materialization_events()}  # fmt: skip
        job_id = job_meta["azure_finetune_job"]["job_id"].value
        assert job_meta["azure_finetune_job"]["created_now"].value is True

        # A restarted run (the job asset's artifact lost, as after a crash) uploads nothing and creates no job.
        shutil.rmtree(project / "artifacts" / "azure_finetune_job")
        again = _run(project, llm, instance, ["azure_training_files", "azure_finetune_job"])
        assert again.success
        again_meta = {e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
                      for e in again.get_asset_materialization_events()}  # fmt: skip
        assert again_meta["azure_finetune_job"]["job_id"].value == job_id
        assert again_meta["azure_finetune_job"]["created_now"].value is False
        assert again_meta["azure_training_files"]["uploaded_now"].value == 0
        stats = server.stats()["requests"]
        assert stats.get("POST /openai/fine_tuning/jobs") == 1
        assert stats.get("POST /openai/files") == 2

        request, cursor = _sensor_until_done(instance, llm)
        assert request.run_key == f"{job_id}:succeeded:1" and cursor[job_id]
        model = _run(project, llm, instance, ["azure_fine_tuned_model"], request.tags)
        assert model.success
        metadata = model.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
        assert metadata["fine_tuned_model"].value.startswith("gpt-4o-mini")
        assert metadata["steps"].value == 6
        assert "![Azure fine-tuning loss](data:image/png;base64," in metadata["loss_curve_png"].value
        assert "loss" in metadata["loss_curve"].value and len(metadata["loss_curve"].value) < 1000
        assert next(iter(metadata)) == "final_train_loss" and list(metadata)[-1] == "lineage"
        from ft_assets.lineage.sync import sync

        assert sync(instance, project / "rebuilt.duckdb")["fine_tune_metrics"] == 6

        # Continuous fine-tuning: with that model made champion, the next job fine-tunes it further.
        from ft_assets.champion.store import Champion, override

        db, version = project / "lineage.duckdb", metadata["data_version"].value
        override(db, Champion("azure_fine_tuned_model", version, metadata["path"].value), "promote", "test", project)
        further = _run(project, llm, instance, ["azure_finetune_job"], azure_finetune_job={"init_from": "champion"})
        assert further.success
        further_meta = further.get_asset_materialization_events()[0].step_materialization_data.materialization
        assert further_meta.metadata["model"].value == metadata["fine_tuned_model"].value
        assert ["azure_fine_tuned_model", version] in further_meta.metadata["lineage"].value["parents"]
        with sync_client(llm.client_settings()) as client:
            assert client.fine_tuning.jobs.retrieve(further_meta.metadata["job_id"].value).model == (
                metadata["fine_tuned_model"].value
            )
    with connect(project / "rebuilt.duckdb", read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM fine_tune_metrics").fetchone()[0] == 6
    db = project / "lineage.duckdb"
    with connect(db, read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM fine_tune_metrics").fetchone()[0] == 6
    upstream = {row["asset"] for row in queries.trace(db, "azure_fine_tuned_model")}
    assert {"azure_finetune_job", "azure_training_files", "train_split", "cleaned_examples", "raw_examples"} <= upstream
    assert "file:" + (project / "raw" / "invoices_2026_h1.jsonl").as_posix() in upstream
    texts = [p.read_text(errors="replace") for p in project.rglob("*") if p.is_file() and p.suffix != ".duckdb"]
    texts.append(db.read_bytes().decode("latin-1"))
    assert not any(API_KEY in text for text in texts)


SPLIT_ROWS = [
    {"id": "ex-1", "messages": [
        {"role": "system", "content": "Label the invoice."}, {"role": "user", "content": "Invoice 1", "name": "clerk"},
        {"role": "assistant", "content": "Category: Software", "weight": 0}, {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Category: Travel", "weight": 1}]},
    {"id": "ex-2", "input": {"messages": [{"role": "user", "content": "Invoice 2"}]},
     "preferred_output": [{"role": "assistant", "content": "Category: Travel"}],
     "non_preferred_output": [{"role": "assistant", "content": "Category: Utilities"}]},
    {"messages": [{"role": "user", "content": "Invoice 3"}, {"role": "assistant", "content": "Category: Travel"}],
     "tools": [{"type": "function", "function": {"name": "lookup"}}], "parallel_tool_calls": False},
]  # fmt: skip


def _publish_split(project: Path, instance: dg.DagsterInstance, asset: str, lines: list[bytes]) -> None:
    """Publish a hand-written split artifact and record it as materialized (no data step needed)."""
    store = ArtifactStore(root=str(project / "artifacts"))
    with store.stage(asset) as staging:
        (staging / "data.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
        ref = store.publish(staging, asset)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset, metadata=artifact_metadata(ref)))


def test_uploaded_files_keep_weights_and_drop_example_ids(project):
    lines = [json.dumps(row).encode() for row in SPLIT_ROWS]
    with StandIn(API_KEY) as server, dg.DagsterInstance.ephemeral() as instance:
        _publish_split(project, instance, "train_split", lines)
        _publish_split(project, instance, "validation_split", lines[:1])
        llm = _azure_llm(server, project)
        result = _run(project, llm, instance, ["azure_training_files"])
        assert result.success
        metadata = result.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
        with sync_client(llm.client_settings()) as client:
            train = client.files.content(metadata["training_file"].value).read()
            validation = client.files.content(metadata["validation_file"].value).read()
    uploaded = [json.loads(line) for line in train.splitlines()]
    assert uploaded == [{key: value for key, value in row.items() if key != "id"} for row in SPLIT_ROWS]
    assert uploaded[0]["messages"][2]["weight"] == 0 and uploaded[0]["messages"][1]["name"] == "clerk"
    assert train.splitlines()[2] == lines[2], "a row without an id goes byte for byte"
    assert [json.loads(line) for line in validation.splitlines()] == uploaded[:1]


def test_a_failing_job_fails_the_model_with_the_service_message(project):
    message = "The training file has too few examples to fine-tune on."
    with StandIn(API_KEY, fail_jobs_with=message) as server, dg.DagsterInstance.ephemeral() as instance:
        llm = _azure_llm(server, project)
        assert _run(project, llm, instance, [*DATA, "azure_training_files", "azure_finetune_job"]).success
        request, cursor = _sensor_until_done(instance, llm)
        assert request.run_key.endswith(":failed:1")
        result = _run(project, llm, instance, ["azure_fine_tuned_model"], request.tags)
        context = dg.build_sensor_context(instance=instance, cursor=json.dumps(cursor), resources={"llm": llm})
        again = azure_finetune_sensor(context)
    assert not result.success
    assert message in result.failure_data_for_node("azure_fine_tuned_model").user_failure_data.description
    assert not again.run_requests and "not asking again" in again.skip_reason.skip_message, (
        "a failed job's failure is final"
    )


def test_upload_is_refused_above_the_cost_limit(project):
    with StandIn(API_KEY) as server, dg.DagsterInstance.ephemeral() as instance:
        llm = _azure_llm(server, project)
        result = _run(project, llm, instance, [*DATA, "azure_training_files"],
                      azure_training_files={"max_training_cost_usd": 0.0001})  # fmt: skip
        assert not result.success
        assert (
            "above max_training_cost_usd"
            in result.failure_data_for_node("azure_training_files").user_failure_data.description
        )
        assert "POST /openai/files" not in server.stats()["requests"]


def test_api_models_are_evaluated_with_cost_and_break_even(project):
    golds: dict[str, str] = {}

    def answer(body: dict) -> str:
        if body["model"] == "ft-invoices":
            return golds.get(body["messages"][-1]["content"], "Category: ?")
        return "Category: Travel\nVendor: Nobody"

    with StandIn(API_KEY, chat_handler=answer) as server, dg.DagsterInstance.ephemeral() as instance:
        llm = _azure_llm(server, project)
        data = _run(project, llm, instance, [*DATA, "azure_training_files", "azure_finetune_job"])
        test_path = next(
            Path(e.step_materialization_data.materialization.metadata["path"].value, "data.jsonl")
            for e in data.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "test_split"
        )
        for line in test_path.read_text().splitlines():
            messages = json.loads(line)["messages"]
            golds[messages[-2]["content"]] = messages[-1]["content"]
        _sensor_until_done(instance, llm)
        assert _run(project, llm, instance, ["azure_fine_tuned_model"]).success
        skipped = _run(project, llm, instance, ["azure_model_evaluation"])
        assert skipped.success and not skipped.get_asset_materialization_events(), "no deployment set: skipped"
        result = _run(project, llm, instance, ["azure_model_evaluation"],
                      azure_model_evaluation={"fine_tuned_deployment": "ft-invoices"})  # fmt: skip
        assert result.success
        metadata = result.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
    assert metadata["fine_tuned_exact_match"].value == 1.0 and metadata["base_exact_match"].value == 0.0
    assert metadata["training_cost_usd"].value > 0
    break_even = metadata["break_even_requests"].value
    assert isinstance(break_even, int) or break_even.startswith("never")
    settings = {r.data["setting"]: r.data["value"] for r in metadata["settings"].records}
    assert settings["task"] == "labels" and metadata["fine_tuned_main_score"].value == 1.0
    assert next(iter(metadata)) == "main_metric" and list(metadata)[-1] == "lineage"
    assert settings["hosting_usd_per_hour"] == "1.7"  # a setting, as text: the Plots tab charts no constant
    assert [c.name for c in metadata["evaluations"].schema.columns][:4] == ["model", "main_score", "ci_low", "ci_high"]
    rows = {row["model"]: row for row in queries.latest_evaluations(project / "lineage.duckdb")}
    tuned = next(row for name, row in rows.items() if name.startswith("azure:gpt-4o-mini"))
    assert tuned["provider"] == "api" and tuned["cost_per_1k_requests_usd"] > 0 and tuned["latency_p50_ms"] > 0
    assert any(name.startswith("azure:gpt-4o-mini (few-shot") for name in rows)
