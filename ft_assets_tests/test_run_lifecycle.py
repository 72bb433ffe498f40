"""A run's training processes die with it; the Dagster instance and lineage sync follow DAGSTER_HOME, not the cwd."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
import yaml
from click.testing import CliRunner

from ft_assets.cli import main
from ft_assets.lineage.store import Materialization, connect
from ft_assets.training.process_group import ProcessGroupPipesClient
from ft_assets_tests.conftest import ROOT

# A stand-in for the trainer: ``launcher`` acts like torchrun (no watch of its own, two ranks in its
# group); ``trainer``/``rank`` watch the run, start a helper that watches nothing, and sleep; ``quick``
# starts a helper and exits at once. Every process touches a file named by its PID.
CHILD = """
import os, subprocess, sys, time
from pathlib import Path

role, pids = sys.argv[1], Path(sys.argv[2])
if role == "launcher":
    ranks = [subprocess.Popen([sys.executable, __file__, "rank", str(pids)]) for _ in range(2)]
    (pids / str(os.getpid())).touch()
    for rank in ranks:
        rank.wait()
    sys.exit(0)
from ft_assets.training.process_group import exit_with_parent

exit_with_parent()
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
(pids / str(helper.pid)).touch()
(pids / str(os.getpid())).touch()
if role != "quick":
    time.sleep(60)
"""

# A run process: one asset that runs CHILD through the client, with the interrupt handlers Dagster's
# run worker installs (``dagster api execute_run``): SIGTERM becomes Dagster's termination.
RUN = """
import sys

import dagster as dg
from dagster._utils.interrupts import setup_interrupt_handlers

from ft_assets.training.process_group import ProcessGroupPipesClient

child, role, pids = sys.argv[1:]


@dg.asset
def trained(context: dg.AssetExecutionContext, pipes_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    pipes_client.run(context=context, command=[sys.executable, child, role, pids])
    return dg.MaterializeResult()


setup_interrupt_handlers()
dg.materialize([trained], resources={"pipes_client": ProcessGroupPipesClient(termination_timeout_seconds=2)})
"""
EXPECTED = {"trainer": 2, "launcher": 5}  # launcher: itself + 2 ranks + their helpers


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(condition, timeout: float) -> float:
    """Poll ``condition`` until it holds; return the seconds it took (fail after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - started


def _kill(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("how", "role"),
    [(signal.SIGKILL, "trainer"), (signal.SIGKILL, "launcher"), (signal.SIGTERM, "trainer")],
    ids=["kill-9", "kill-9-launcher", "terminate"],
)
def test_training_processes_die_with_their_run(tmp_path, how, role):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "run.py").write_text(RUN)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    log = tmp_path / "run.log"
    with open(log, "wb") as output:
        run = subprocess.Popen(
            [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "child.py"), role, str(pids_dir)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pids: list[int] = []
    try:
        _wait_for(lambda: len(list(pids_dir.iterdir())) == EXPECTED[role], timeout=60)
        pids = [int(p.name) for p in pids_dir.iterdir()]
        assert all(_alive(pid) for pid in pids)
        run.send_signal(how)
        took = _wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=5)
        assert run.wait(timeout=30) != 0
    finally:
        _kill([run.pid, *pids])
        run.wait()
    assert took < 5
    if how == signal.SIGTERM:  # the client stopped the group itself, before the run process ended
        assert "[pipes] interrupted: stopping process group" in log.read_text()


def _training(tmp_path: Path, role: str) -> tuple[dg.AssetsDefinition, Path]:
    """An asset that runs CHILD in ``role`` through the client in this process, and its PID folder."""
    (tmp_path / "child.py").write_text(CHILD)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()

    @dg.asset
    def trained(context: dg.AssetExecutionContext, pipes_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        pipes_client.run(context=context, command=[sys.executable, str(tmp_path / "child.py"), role, str(pids_dir)])
        return dg.MaterializeResult()

    return trained, pids_dir


def test_processes_left_behind_by_a_clean_exit_are_killed(tmp_path):
    trained, pids_dir = _training(tmp_path, "quick")
    assert dg.materialize([trained], resources={"pipes_client": ProcessGroupPipesClient()}).success
    pids = [int(p.name) for p in pids_dir.iterdir()]
    assert len(pids) == 2
    try:
        assert not any(_alive(pid) for pid in pids)
    finally:
        _kill(pids)


def test_a_run_marked_failed_from_outside_stops_its_training(tmp_path):
    """What the code server does when a run worker dies while the step runs in a step process of its own."""
    trained, pids_dir = _training(tmp_path, "trainer")
    with dg.DagsterInstance.ephemeral() as instance:

        def fail_the_run() -> None:
            _wait_for(lambda: len(list(pids_dir.iterdir())) == EXPECTED["trainer"], timeout=60)
            instance.report_run_failed(instance.get_runs()[0])

        threading.Thread(target=fail_the_run, daemon=True).start()
        client = ProcessGroupPipesClient(termination_timeout_seconds=1)
        started = time.monotonic()
        result = dg.materialize([trained], instance=instance, resources={"pipes_client": client}, raise_on_error=False)
    pids = [int(p.name) for p in pids_dir.iterdir()]
    try:
        assert not result.success
        assert not any(_alive(pid) for pid in pids)
        failure = result.get_step_failure_events()[0].step_failure_data.error
        assert "the run was marked FAILURE from outside" in str(failure)
        assert time.monotonic() - started < 30  # not the child's 60 s sleep
    finally:
        _kill(pids)


@dg.asset
def noted(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """A materialization that carries lineage, as every ft-assets asset's does."""
    entry = Materialization(asset="noted", data_version="v1", code_version="c1", run_id=context.run.run_id)
    return dg.MaterializeResult(metadata={"lineage": dg.MetadataValue.json(entry.to_dict())})


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """DAGSTER_HOME: a folder with the project's dagster.yaml; the working directory is another, empty one."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.chdir(elsewhere)
    return home


def test_the_instance_keeps_everything_under_dagster_home(home):
    with dg.DagsterInstance.get() as instance:
        ref = instance.get_ref()
        for data in (ref.storage_data, ref.compute_logs_data, ref.local_artifact_storage_data):
            base_dir = Path(yaml.safe_load(data.config_yaml)["base_dir"])
            assert base_dir.is_absolute()
            assert base_dir.is_relative_to(home)
        assert instance.run_monitoring_enabled
        run_id = dg.materialize([noted], instance=instance).run_id
    assert (home / "history" / "runs.db").exists()
    assert (home / "history" / "runs" / f"{run_id}.db").exists()
    assert list(Path.cwd().iterdir()) == []


def test_lineage_sync_finds_the_event_log_from_another_folder(home, tmp_path):
    runner = CliRunner()
    db = tmp_path / "lineage.duckdb"
    result = runner.invoke(main, ["lineage", "sync", "--db", str(db)])
    assert result.exit_code == 1
    assert f"the event log under DAGSTER_HOME={home} holds 0 runs" in result.output
    with dg.DagsterInstance.get() as instance:
        dg.materialize([noted], instance=instance)
    result = runner.invoke(main, ["lineage", "sync", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "recorded 1 materializations" in result.output
    with connect(db) as connection:
        assert connection.execute("SELECT asset, data_version FROM materializations").fetchall() == [("noted", "v1")]


@pytest.mark.parametrize("setting", ["unset", "no dagster.yaml"])
def test_lineage_sync_says_when_dagster_home_is_wrong(tmp_path, monkeypatch, setting):
    monkeypatch.chdir(tmp_path)
    if setting == "unset":
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        expected = "DAGSTER_HOME is not set"
    else:
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
        expected = f"DAGSTER_HOME={tmp_path} holds no dagster.yaml"
    result = CliRunner().invoke(main, ["lineage", "sync", "--db", str(tmp_path / "lineage.duckdb")])
    assert result.exit_code == 1
    assert expected in result.output
    assert list(tmp_path.iterdir()) == []  # nothing created in the wrong place
