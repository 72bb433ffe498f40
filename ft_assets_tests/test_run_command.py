"""`ft-assets run` as a user runs it: a fresh project, its own process, no DAGSTER_HOME set."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ft_assets_tests.project_runs import TINY_CONFIG, make_project, runs

FT_ASSETS = Path(sys.executable).parent / "ft-assets"
LOCAL_MODELS = ["base_model (zero-shot)", "base_model (few-shot k=1 seed=0)", "lora_adapter", "merged_model"]
NOISE = ("DEBUG", "SupersessionWarning", "BetaWarning", "PreviewWarning", "FutureWarning", "it/s]")


def ft_assets_run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (project / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    unset = ("DAGSTER_HOME", "FT_ASSETS_ARTIFACTS", "FT_ASSETS_LINEAGE_DB")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [str(FT_ASSETS), "run", "--config", "tiny.json", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    project = make_project(tmp_path_factory.mktemp("run_command"))
    return project, ft_assets_run(project)


def test_main_job_ends_with_the_summary(main_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, done = main_run
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-15:]
    for model in LOCAL_MODELS:
        line = next((line for line in last if line.strip().startswith(model)), None)
        assert line is not None and re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]\s+n=\d+", line), (model, last)
    assert any(line.startswith("champion    ") and "decision: " in line for line in last), last
    assert any(re.match(r"data +\d+ rows read: \d+ kept, \d+ rejected", line) for line in last), last
    assert any("dagster dev" in line for line in last) and any("ft-assets eval" in line for line in last), last


def test_one_line_per_step_and_no_noise(main_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, done = main_run
    output = done.stdout + done.stderr
    for noise in NOISE:
        assert noise not in output, (noise, output)
    for step, figure in [("cleaned_examples", r"kept \d+, rejected \d+ of \d+ rows"),
                         ("lora_adapter", r"train loss \d+\.\d{3}, eval loss \d+\.\d{3}"),
                         ("evaluation_table", r"lora_adapter exact_match \d\.\d{3}")]:  # fmt: skip
        assert re.search(rf"^✓ {step} +\d+\.\ds  {figure}$", done.stdout, re.MULTILINE), (step, done.stdout)


def test_the_run_is_in_the_instance_of_the_current_folder(
    main_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    project, done = main_run
    recorded = runs(project)
    assert [(run.job_name, run.status) for run in recorded] == [("main", dg.DagsterRunStatus.SUCCESS)]
    log = project / "storage" / recorded[0].run_id / "run.log"
    assert "DEBUG" in log.read_text(), "Dagster's own log of the run goes to a file"
    assert str(log) in done.stdout


def test_a_failing_run_names_the_step_and_the_cause(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    source = sorted((Path(__file__).parents[1] / "data" / "raw").glob("*.jsonl"))[0]
    (raw / "few.jsonl").write_text("".join(source.read_text().splitlines(keepends=True)[:5]))
    project = make_project(tmp_path / "project", raw=raw)
    done = ft_assets_run(project, "--quiet")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "main failed at step train_split · train_split_has_enough_examples" in done.stderr, done.stderr
    assert "blocking asset check failed" in done.stderr and "minimum 10" in done.stderr, done.stderr
    assert "✓" not in done.stdout, "--quiet prints no step lines"
    assert [run.status for run in runs(project)] == [dg.DagsterRunStatus.FAILURE]
