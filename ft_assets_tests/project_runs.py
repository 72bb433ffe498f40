"""Run jobs as a user does: a fresh project folder, `dagster job execute` in its own process, DAGSTER_HOME set.

Used by the tests of run isolation and crash safety, and by ``benchmarks/kill_anywhere.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets.artifacts import folder_hash
from ft_assets.evaluation.results import REPORTS as EVALUATION_REPORTS
from ft_assets.training.assets import BASE_REPORTS, LORA_REPORTS
from ft_assets_tests.conftest import ROOT

TINY_CONFIG = {
    "ops": {
        "base_model": {"config": {"vocab_size": 400, "hidden_size": 48, "intermediate_size": 96, "layers": 1,
                                  "heads": 2, "pretrain_epochs": 1}},
        "lora_adapter": {"config": {"r": 4, "alpha": 8, "epochs": 1.0, "batch_size": 16}},
        "evaluation_table": {"config": {"few_shot_examples": 1, "max_new_tokens": 12}},
    }
}  # fmt: skip
REPORTS = {"base_model": BASE_REPORTS, "lora_adapter": LORA_REPORTS, "evaluation_table": EVALUATION_REPORTS}


def local_resources(project: Path) -> dict[str, Any]:
    """The resources of the local graph, with every file under ``project``."""
    from ft_assets.resources import ArtifactIOManager, ArtifactStore, LineageStore, LLMResource
    from ft_assets.training.assets import TrainingLauncher

    artifacts = str(project / "artifacts")
    return {
        "artifacts": ArtifactStore(root=artifacts),
        "io_manager": ArtifactIOManager(root=artifacts),
        "lineage": LineageStore(path=str(project / "lineage.duckdb")),
        "llm": LLMResource(cache_dir=str(project / "llm-cache")),
        "pipes_client": dg.PipesSubprocessClient(),
        "training_launcher": TrainingLauncher(),
    }


def make_project(folder: Path, raw: Path = ROOT / "data" / "raw") -> Path:
    """Lay out a project like a fresh clone: data/raw, data/sources and the instance's dagster.yaml."""
    shutil.copytree(raw, folder / "data" / "raw")
    shutil.copytree(ROOT / "data" / "sources", folder / "data" / "sources")
    shutil.copy(ROOT / "dagster.yaml", folder / "dagster.yaml")
    return folder


@dataclass
class JobProcess:
    """A `dagster job execute` process and the file its output goes to."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        """Return what the process printed so far (for assertion messages)."""
        return self.log.read_text(errors="replace")[-6000:]


def start_job(
    project: Path, job: str, config: dict[str, Any], *, home: Path | None = None, python: str = sys.executable
) -> JobProcess:
    """Start ``dagster job execute`` for ``job`` in ``project`` (its own process group), with interpreter ``python``."""
    stem = f"{job}-{time.monotonic_ns()}"
    config_file = project / f"{stem}.json"
    config_file.write_text(json.dumps(config))
    env = {**os.environ, "DAGSTER_HOME": str(home or project)}
    env.pop("FT_ASSETS_ARTIFACTS", None)
    env.pop("FT_ASSETS_LINEAGE_DB", None)
    command = [python, "-m", "dagster", "job", "execute", "-m", "ft_assets.definitions", "-j", job,
               "-c", str(config_file)]  # fmt: skip
    log = project / f"{stem}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    return JobProcess(process, log)


def finish(job: JobProcess, timeout_s: float = 300) -> int:
    """Wait for a job process; kill its group if it outlives ``timeout_s``. Return its exit code."""
    try:
        return job.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(job.process.pid, signal.SIGKILL)
        return job.process.wait()


def kill_when(job: JobProcess, ready: Callable[[], bool], timeout_s: float = 300) -> bool:
    """SIGKILL the job process (only it: its children must die by themselves) once ``ready()``; True if killed."""
    deadline = time.monotonic() + timeout_s
    while job.process.poll() is None and time.monotonic() < deadline:
        if ready():
            job.process.kill()
            job.process.wait()
            return True
        time.sleep(0.05)
    return False


def wait_for(job: JobProcess, ready: Callable[[], bool], timeout_s: float = 300) -> None:
    """Wait until ``ready()``; fail with the job's output if it ends or the time runs out first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert job.process.poll() is None, f"the job ended first:\n{job.output()}"
        assert time.monotonic() < deadline, f"timed out:\n{job.output()}"
        time.sleep(0.05)


def instance_at(home: Path) -> dg.DagsterInstance:
    """Return the Dagster instance whose DAGSTER_HOME is ``home``."""
    from dagster._core.instance.ref import InstanceRef

    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def runs(home: Path) -> list[dg.DagsterRun]:
    """Return the runs recorded under DAGSTER_HOME=``home``, oldest first."""
    with instance_at(home) as instance:
        return list(reversed(instance.get_runs()))


def run_versions(home: Path, run_id: str) -> dict[str, dict[str, Any]]:
    """Return, for each asset a run materialized, its data version and the lineage parents it recorded."""
    from dagster._core.events import DagsterEventType

    found = {}
    with instance_at(home) as instance:
        for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records:
            materialization = record.asset_materialization
            assert materialization is not None
            lineage = materialization.metadata["lineage"].value
            found[materialization.asset_key.to_user_string()] = {
                "version": lineage["data_version"],
                "parents": {asset: version for asset, version in lineage["parents"]},
            }
    return found


def published_folders(artifacts: Path) -> tuple[list[Path], list[Path]]:
    """Return (version folders whose content does not hash to their name, visible non-version entries)."""
    corrupt, stray = [], []
    for asset in sorted(p for p in artifacts.iterdir() if p.is_dir()):
        for entry in asset.iterdir():
            if entry.name.startswith(".") or entry.name == "by-inputs":
                continue
            if not entry.is_dir() or len(entry.name) != 16:
                stray.append(entry)
            elif folder_hash(entry, REPORTS.get(asset.name, ())) != entry.name:
                corrupt.append(entry)
    return corrupt, stray


def hidden_leftovers(artifacts: Path) -> list[Path]:
    """Return staging and scratch entries anywhere under ``artifacts``."""
    return sorted(p for p in artifacts.rglob(".*") if p.name.startswith((".staging-", ".scratch-")))


def trainers_gone(project: Path, timeout_s: float = 15) -> bool:
    """Wait until no training process of ``project`` is left (``ps``); True if none is."""
    deadline = time.monotonic() + timeout_s
    while True:
        listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        if not [line for line in listing.splitlines() if "lora_pipes" in line and str(project) in line]:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
