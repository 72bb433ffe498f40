"""Retraining by itself: the policy, the content-hash observations and Dagster's automation evaluation."""

import datetime
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from ft_assets import automation
from ft_assets.automation import (
    AZURE,
    BASE_MODEL_SOURCE,
    OFF,
    POLICY_ENV,
    RAW_DATA,
    RETRAINING_TAG,
    RetrainPolicy,
    automate,
    base_model_source,
    latest_version,
    raw_data,
    watch_sources,
)
from ft_assets.watch import HashCache, base_model_version, folder_version
from ft_assets_tests.conftest import chat, write_jsonl

UTC = datetime.UTC


# -- policy ------------------------------------------------------------------------------------


def test_policy_parses_on_change_off_and_cron() -> None:
    assert RetrainPolicy.parse(None) == RetrainPolicy.parse("") == RetrainPolicy.parse("on_change") == RetrainPolicy()
    assert RetrainPolicy.parse(OFF) == RetrainPolicy(enabled=False)
    assert RetrainPolicy.parse(" 0 3 * * * ") == RetrainPolicy(cron="0 3 * * *")
    assert str(RetrainPolicy.parse("*/15 * * * *")) == "cron '*/15 * * * *' (UTC)"


@pytest.mark.parametrize("value", ["hourly", "0 3 * *", "61 * * * *", "onchange"])
def test_an_invalid_policy_says_what_is_accepted(value: str) -> None:
    with pytest.raises(ValueError, match=f"{POLICY_ENV}=.*on_change.*off.*cron expression"):
        RetrainPolicy.parse(value)


def test_the_policy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLICY_ENV, "30 2 * * 1")
    assert RetrainPolicy.from_environment() == RetrainPolicy(cron="30 2 * * 1")
    monkeypatch.delenv(POLICY_ENV)
    assert RetrainPolicy.from_environment() == RetrainPolicy()


# -- observations ------------------------------------------------------------------------------


def _raw_folder(root: Path) -> Path:
    folder = root / "data" / "raw"
    folder.mkdir(parents=True)
    write_jsonl(folder / "a.jsonl", [chat(f"invoice {i}", "Category: Travel") for i in range(5)])
    (folder / "notes.txt").write_text("not raw data")
    return folder


def test_folder_version_ignores_mtime_and_other_files_and_follows_content(tmp_path: Path) -> None:
    folder = _raw_folder(tmp_path)
    cache = HashCache.load(tmp_path / "cache.json")
    first = folder_version(folder, "*.jsonl|*.json", cache)
    assert first.metadata["files"] == 1

    os.utime(folder / "a.jsonl", (1_000_000_000, 1_000_000_000))  # touched: mtime only
    (folder / "notes.txt").write_text("edited, but not a raw data file")
    (folder / ".a.jsonl.swp").write_text("an editor's hidden file")
    assert folder_version(folder, "*.jsonl|*.json", cache).version == first.version

    write_jsonl(folder / "b.jsonl", [chat("new invoice", "Category: Meals")])
    second = folder_version(folder, "*.jsonl|*.json", cache)
    assert second.version != first.version
    (folder / "b.jsonl").write_bytes((folder / "b.jsonl").read_bytes().replace(b"Meals", b"Hotel"))
    assert folder_version(folder, "*.jsonl|*.json", cache).version not in (first.version, second.version)


def test_a_missing_folder_is_absent(tmp_path: Path) -> None:
    assert folder_version(tmp_path / "nowhere", "*.jsonl", HashCache()).version == "absent"


def test_the_raw_folder_variable_moves_what_is_read_and_what_is_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ft_assets.dataset.assets import RawExamplesConfig

    mine = tmp_path / "my-data"
    mine.mkdir()
    write_jsonl(mine / "rows.jsonl", [chat("Invoice 1", "Category: Travel")])
    monkeypatch.chdir(tmp_path)  # data/raw here does not exist
    assert (
        RawExamplesConfig().folder == "data/raw" and automation.observe_raw_data(cache=HashCache()).version == "absent"
    )
    monkeypatch.setenv("FT_ASSETS_RAW_FOLDER", str(mine))
    assert RawExamplesConfig().folder == str(mine)
    watched = automation.observe_raw_data(cache=HashCache())
    assert watched.version == folder_version(mine, "*.jsonl|*.json", HashCache()).version != "absent"
    assert watched.metadata["folder"] == str(mine)


def test_hash_cache_rehashes_only_changed_files_and_persists(tmp_path: Path) -> None:
    folder = _raw_folder(tmp_path)
    cache = HashCache.load(tmp_path / "cache.json")
    version = folder_version(folder, "*.jsonl", cache).version
    assert (tmp_path / "cache.json").is_file()

    reloaded = HashCache.load(tmp_path / "cache.json")
    name = str((folder / "a.jsonl").resolve())
    reloaded.entries[name][2] = "0" * 64  # a cached digest is trusted while size and mtime are unchanged
    assert folder_version(folder, "*.jsonl", reloaded).version != version
    os.utime(folder / "a.jsonl", (1_000_000_000, 1_000_000_000))  # a new mtime: hashed again
    assert folder_version(folder, "*.jsonl", reloaded).version == version


def test_base_model_versions_are_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = HashCache()
    assert base_model_version("builtin", cache).version == "builtin"

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    local = base_model_version(str(model), cache).version
    os.utime(model / "config.json", (1_000_000_000, 1_000_000_000))
    assert base_model_version(str(model), cache).version == local
    (model / "config.json").write_text('{"hidden_size": 8}')
    assert base_model_version(str(model), cache).version != local

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    assert base_model_version("org/absent", cache).version == "org/absent@not-in-local-cache"
    snapshot = hub / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (hub / "models--org--tiny" / "refs").mkdir()
    (hub / "models--org--tiny" / "refs" / "main").write_text("abc123")
    assert base_model_version("org/tiny", cache).version == "org/tiny@abc123"


# -- automation evaluation ---------------------------------------------------------------------


@dg.asset(deps=[raw_data])
def stand_in_raw(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """raw_examples' place: depends on raw_data."""
    return dg.MaterializeResult()


@dg.asset(deps=[base_model_source, stand_in_raw])
def stand_in_model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The trained model's place: depends on the data and the base model source."""
    return dg.MaterializeResult()


@dg.asset_check(asset=stand_in_model, blocking=True)
def stand_in_check() -> dg.AssetCheckResult:
    """A blocking check rides along with its asset."""
    return dg.AssetCheckResult(passed=True)


@dg.asset(group_name="azure")
def stand_in_azure() -> dg.MaterializeResult:
    """Azure's place: never automated."""
    return dg.MaterializeResult()


MAIN = dg.define_asset_job(
    "main",
    selection=(dg.AssetSelection.all() | dg.AssetSelection.assets(raw_data, base_model_source)) - AZURE,
    tags={RETRAINING_TAG: "main"},
)


def _defs(policy: RetrainPolicy) -> dg.Definitions:
    defs = dg.Definitions(
        assets=[raw_data, base_model_source, stand_in_raw, stand_in_model, stand_in_azure],
        asset_checks=[stand_in_check],
        jobs=[MAIN],
    )
    return automate(defs, MAIN.selection, policy)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder with data/raw, as the working directory; the base model is the builtin one."""
    for path in _raw_folder(tmp_path).iterdir():
        os.utime(path, (1_000_000_000, 1_000_000_000))  # written long ago: settled
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FT_ASSETS_BASE_MODEL", raising=False)
    yield tmp_path


class Ticks:
    """Evaluate the automation conditions tick after tick, as the retraining sensor does."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs, self.instance, self.cursor = defs, instance, None

    def requested(self, at: datetime.datetime | None = None) -> set[str]:
        result = dg.evaluate_automation_conditions(
            defs=self.defs, instance=self.instance, cursor=self.cursor, evaluation_time=at
        )
        self.cursor = result.cursor
        return {r.key.to_user_string() for r in result.results if isinstance(r.key, dg.AssetKey) and r.true_subset.size}


def _watch(instance: dg.DagsterInstance) -> list[str]:
    """Run the watch_sources sensor once; record its observations; return the keys it observed."""
    result = watch_sources(dg.build_sensor_context(instance=instance))
    events = result.asset_events if isinstance(result, dg.SensorResult) else []
    for event in events:
        instance.report_runless_asset_event(event)
    return [event.asset_key.to_user_string() for event in events]


def _add_raw_file(project: Path, name: str) -> None:
    path = write_jsonl(project / "data" / "raw" / name, [chat(f"{name} {i}", "Category: Meals") for i in range(3)])
    os.utime(path, (1_000_000_000, 1_000_000_000))  # written long ago: no need to wait for it to settle


def test_every_main_job_asset_is_automated_and_the_sensors_run_by_default(project: Path) -> None:
    from ft_assets.definitions import defs, main_job

    repository = defs.get_repository_def()
    graph = repository.asset_graph
    main_keys = main_job.selection.resolve(graph)
    assert {RAW_DATA, BASE_MODEL_SOURCE, dg.AssetKey("champion_model")} <= main_keys
    for key in graph.get_all_asset_keys():
        condition = graph.get(key).automation_condition
        retrained = key in main_keys and key not in (RAW_DATA, BASE_MODEL_SOURCE)
        assert (condition is not None) == retrained, key
    sensors = {sensor.name: sensor for sensor in repository.sensor_defs}
    assert sensors["retraining"].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["watch_sources"].default_status == dg.DefaultSensorStatus.RUNNING
    assert "default_automation_condition_sensor" not in sensors  # every condition has our (running) sensor
    assert sensors["retraining"].run_tags == {RETRAINING_TAG: "automation"}


def test_policy_off_keeps_watching_but_requests_nothing(project: Path) -> None:
    defs = _defs(RetrainPolicy(enabled=False))
    sensors = {sensor.name for sensor in defs.get_repository_def().sensor_defs}
    assert sensors == {"watch_sources"}


def test_on_change_retrains_after_a_content_change_only(project: Path) -> None:
    defs = _defs(RetrainPolicy())
    instance = dg.DagsterInstance.ephemeral()
    ticks = Ticks(defs, instance)
    assert ticks.requested() == set()
    assert _watch(instance) == ["raw_data", "base_model_source"]  # a fresh instance: first observations
    assert ticks.requested() == set()  # never materialized: the main job makes the first version

    assert defs.resolve_job_def("main").execute_in_process(instance=instance).success
    assert _watch(instance) == []  # the main job observed what it trained from
    assert ticks.requested() == set()
    os.utime(project / "data" / "raw" / "a.jsonl", (1_500_000_000, 1_500_000_000))  # touched, not changed
    assert _watch(instance) == []
    assert ticks.requested() == set()

    _add_raw_file(project, "new.jsonl")
    assert _watch(instance) == ["raw_data"]
    assert ticks.requested() == {"stand_in_raw", "stand_in_model"}
    assert ticks.requested() == set()  # requested once, not again on the next tick


def test_a_file_still_being_written_waits_for_the_next_tick(project: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    _watch(instance)
    write_jsonl(project / "data" / "raw" / "now.jsonl", [chat("written now", "Category: Meals")])
    assert _watch(instance) == []
    os.utime(project / "data" / "raw" / "now.jsonl", (1_000_000_000, 1_000_000_000))
    assert _watch(instance) == ["raw_data"]


def test_cron_retrains_at_the_tick_only_if_something_changed(project: Path) -> None:
    defs = _defs(RetrainPolicy(cron="0 3 * * *"))
    instance = dg.DagsterInstance.ephemeral()
    day = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    ticks = Ticks(defs, instance)
    assert ticks.requested(day.replace(hour=1)) == set()
    assert defs.resolve_job_def("main").execute_in_process(instance=instance).success
    assert ticks.requested(day.replace(hour=2)) == set()
    assert ticks.requested(day.replace(hour=3, minute=1)) == set()  # the tick passed, nothing changed

    _add_raw_file(project, "new.jsonl")
    assert _watch(instance) == ["raw_data"]
    assert ticks.requested(day.replace(hour=4)) == set()  # changed, but before the next tick
    assert ticks.requested(day.replace(hour=12)) == set()
    next_day = day + datetime.timedelta(days=1)
    assert ticks.requested(next_day.replace(hour=3, minute=1)) == {"stand_in_raw", "stand_in_model"}
    assert ticks.requested(next_day.replace(hour=3, minute=2)) == set()


# -- tick logs: what a user reads under a tick's "View logs" -----------------------------------------


_TICK_NUMBERS = itertools.count()


def _tick(
    instance: dg.DagsterInstance, sensor: dg.SensorDefinition, defs: dg.Definitions | None = None, **kwargs
) -> tuple[dg.SensorResult | dg.SkipReason, list[str]]:
    """Evaluate ``sensor`` once as the daemon does; return its result and its tick log as the UI shows it."""
    from dagster._core.definitions.instigation_logger import get_instigation_log_records
    from dagster._core.log_manager import LOG_RECORD_METADATA_ATTR

    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        # The daemon gives each tick its own log key; here the key is (repository, sensor, second): a name per
        # call keeps two ticks within one second apart.
        repository_name=f"tick-{next(_TICK_NUMBERS)}",
        sensor_name=sensor.name,
        definitions=defs,
        **kwargs,
    ) as context:
        result = sensor(context)
        # What the daemon checks before it stores the tick's log key; without it the UI says "No logs to display".
        assert context.has_captured_logs()
    records = get_instigation_log_records(instance, context.log_key)
    # The UI's tick log shows each record's original message (dagster_graphql fetch_instigators.get_tick_log_events).
    return result, [record[LOG_RECORD_METADATA_ATTR]["orig_message"] for record in records]


def _sentences(lines: list[str]) -> None:
    for line in lines:
        assert line[0].isupper() or line.split()[0] in {"raw_data", "base_model_source"}, line
        assert line.endswith("."), line


def test_watch_ticks_say_what_they_saw_and_what_happens_next(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ft_assets.automation import watch_sources_sensor

    defs = _defs(RetrainPolicy())
    sensor = watch_sources_sensor(RetrainPolicy())
    with dg.instance_for_test() as instance:
        result, lines = _tick(instance, sensor, defs)
        assert isinstance(result, dg.SensorResult) and len(result.asset_events or []) == 2
        first = lines[0]
        assert first.startswith("raw_data is observed for the first time (version ")
        assert first.endswith(
            "an observation is recorded. Under retrain policy on_change, nothing made from it has been materialized "
            "yet, so nothing will be retrained: the main job makes the first version (ft-assets run)."
        )
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        version = latest_version(instance, RAW_DATA)
        assert defs.resolve_job_def("main").execute_in_process(instance=instance).success

        result, lines = _tick(instance, sensor, defs)
        assert result.skip_reason.skip_message == f"unchanged: raw_data {version}, base_model_source builtin"
        assert lines == [
            f"raw_data is unchanged (version {version}): no observation is recorded and there is nothing new to "
            "retrain from.",
            "base_model_source is unchanged (version builtin): no observation is recorded and there is nothing new "
            "to retrain from.",
        ]

        write_jsonl(project / "data" / "raw" / "now.jsonl", [chat("written now", "Category: Meals")])
        monkeypatch.setattr(automation, "SETTLE_S", 600.0)  # "recently" however slow this machine is
        result, lines = _tick(instance, sensor, defs)
        assert result.skip_reason.skip_message.startswith("unchanged: raw_data (still being written)")
        assert lines[0].startswith("raw_data is still being written (a file changed ")
        assert lines[0].endswith("no observation is recorded yet; it is looked at again on the next tick, in 30 s.")

        os.utime(project / "data" / "raw" / "now.jsonl", (1_000_000_000, 1_000_000_000))
        result, lines = _tick(instance, sensor, defs)
        new = result.asset_events[0].tags[DATA_VERSION_TAG]
        assert result.skip_reason.skip_message == (
            f"recorded raw_data {new}; this sensor launches no run (retrain policy on_change)"
        )
        assert lines[0] == (
            f"raw_data changed ({version} → {new}); an observation is recorded. Under retrain policy on_change, the "
            "retraining sensor will request the main job's assets made from it on its next tick; the Automation page "
            "shows its reason for each asset."
        )
        _sentences(lines)


@pytest.mark.parametrize(
    ("policy", "next_step"),
    [
        (
            RetrainPolicy(enabled=False),
            "Retrain policy off (FT_ASSETS_RETRAIN_POLICY): nothing will be retrained; materialize the main job by "
            "hand (ft-assets run).",
        ),
        (
            RetrainPolicy(cron="0 3 * * *"),
            "Under retrain policy cron '0 3 * * *' (UTC), the retraining sensor will request the main job's assets "
            "made from it at the next tick of that schedule; the Automation page shows its reason for each asset.",
        ),
    ],
)
def test_a_changed_source_is_logged_with_the_policy_s_next_step(
    project: Path, policy: RetrainPolicy, next_step: str
) -> None:
    from ft_assets.automation import watch_sources_sensor

    with dg.instance_for_test() as instance:
        _, lines = _tick(instance, watch_sources_sensor(policy))  # no definitions: the graph is not looked at
    assert lines[0].endswith(f"an observation is recorded. {next_step}")
    _sentences(lines)


def test_the_sensor_in_the_definitions_logs_too(project: Path) -> None:
    from ft_assets.definitions import defs

    sensor = defs.resolve_sensor_def("watch_sources")
    with dg.instance_for_test() as instance:
        _, lines = _tick(instance, sensor, defs)
    assert [line.split()[0] for line in lines] == ["raw_data", "base_model_source"]
    assert defs.resolve_sensor_def("retraining").description.endswith(
        "its reasons are on the Automation page (each tick, each asset, which part of the condition held), and "
        "watch_sources' tick log says what changed."
    )


def test_the_retraining_condition_s_labels_read_as_reasons() -> None:
    """The retraining sensor writes no tick log: the Automation page lists these labels per asset and tick."""
    on_change = RetrainPolicy().condition()
    assert on_change.get_label() == "retrain policy on_change: retrain when something upstream changed"
    assert [child.get_label() for child in on_change.children] == [
        "something upstream changed since this asset was last requested or materialized",
        "materialized once already (the main job makes the first version)",
        "every upstream asset exists",
        "no upstream asset is being materialized",
        "no run of this asset is in progress",
    ]
    cron = RetrainPolicy(cron="0 3 * * *").condition()
    assert cron.get_label() == (
        "retrain policy cron '0 3 * * *' (UTC): retrain at the cron tick if something upstream changed"
    )
    assert cron.children[0].get_label() == "the cron tick '0 3 * * *' (UTC) has passed"
    assert [child.get_label() for child in cron.children[1:]] == [child.get_label() for child in on_change.children]


def test_the_azure_sensor_says_why_it_polls_nothing(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ft_assets.azure.assets import azure_finetune_sensor
    from ft_assets.resources import LLMResource

    for variable in ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    with dg.instance_for_test() as instance:
        result, lines = _tick(instance, azure_finetune_sensor, resources={"llm": LLMResource()})
    assert "AZURE_OPENAI_ENDPOINT" in result.skip_message
    assert len(lines) == 1
    assert lines[0].startswith("No fine-tuning job is polled because no credentials are set; to fine-tune on Azure")
    assert "AZURE_OPENAI_ENDPOINT + AZURE_OPENAI_API_KEY" in lines[0]
    _sentences(lines)
