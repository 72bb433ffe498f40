"""`ft-assets run` as a user runs it: a fresh project, its own process, no DAGSTER_HOME set."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import dagster as dg
import pytest

from ft_assets.evaluation.metrics import FEW_TEST_EXAMPLES
from ft_assets_tests.project_runs import TINY_CONFIG, make_project, runs

FT_ASSETS = Path(sys.executable).parent / "ft-assets"
LOCAL_MODELS = ["base_model (zero-shot)", "base_model (few-shot k=1 seed=0)", "lora_adapter", "merged_model"]
NOISE = ("DEBUG", "SupersessionWarning", "BetaWarning", "PreviewWarning", "FutureWarning", "it/s]")


def ft_assets_run(project: Path, *args: str, tiny: bool = True) -> subprocess.CompletedProcess[str]:
    (project / "tiny.json").write_text(json.dumps(TINY_CONFIG))
    config = ["--config", "tiny.json"] if tiny else []
    unset = ("DAGSTER_HOME", "FT_ASSETS_ARTIFACTS", "FT_ASSETS_LINEAGE_DB")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [str(FT_ASSETS), "run", *config, *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    project = make_project(tmp_path_factory.mktemp("run_command"))
    return project, ft_assets_run(project)


def test_main_job_ends_with_the_summary(main_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, done = main_run
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-18:]
    sizes = []
    for model in LOCAL_MODELS:
        line = next((line for line in last if line.strip().startswith(model)), None)
        found = re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]\s+n=(\d+)", line or "")
        assert found, (model, last)
        sizes.append(int(found.group(1)))
    few = any(line.strip().startswith(f"only {min(sizes)} test examples") for line in last)
    assert few == (min(sizes) < FEW_TEST_EXAMPLES), last
    assert any(line.startswith("champion    ") and "decision: " in line for line in last), last
    data = r"data +\d+ rows read: \d+ kept \(\d+ of them synthetic\), \d+ rejected"  # the shipped run generates some
    assert any(re.match(data, line) for line in last), last
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
    # one step checks three assets: its line names them all, so the summary's count of checks adds up
    together = re.search(r"^✓ (.+) · splits_do_not_overlap +\d+\.\ds  passed$", done.stdout, re.MULTILINE)
    assert together and set(together.group(1).split(", ")) == {"train_split", "validation_split", "test_split"}


def test_the_run_is_in_the_instance_of_the_current_folder(
    main_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    project, done = main_run
    recorded = runs(project)
    assert [(run.job_name, run.status) for run in recorded] == [("main", dg.DagsterRunStatus.SUCCESS)]
    log = project / "storage" / recorded[0].run_id / "run.log"
    assert "DEBUG" in log.read_text(), "Dagster's own log of the run goes to a file"
    assert str(log) in done.stdout


def test_a_step_that_makes_nothing_is_shown_as_skipped(
    main_run: tuple[Path, subprocess.CompletedProcess[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, _ = main_run
    for name in list(os.environ):
        if name.startswith(("AZURE_OPENAI_", "OPENAI_")):
            monkeypatch.delenv(name)
    done = ft_assets_run(project, "azure_finetune", tiny=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped: no credentials" in done.stdout, done.stdout
    assert re.search(r"^- azure_training_files +nothing materialized$", done.stdout, re.MULTILINE), done.stdout
    assert "✓ azure_training_files" not in done.stdout, done.stdout


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


# -- --help: whole sentences that fit an 80-column terminal ---------------------------------------------


def _command_paths() -> list[list[str]]:
    """The path of every command of ft-assets, e.g. ["lineage", "trace"] (the top level is [])."""
    from ft_assets.cli import main

    def walk(command: click.Command, path: list[str]) -> list[list[str]]:
        names = command.list_commands(click.Context(command)) if isinstance(command, click.Group) else []
        return [path] + [
            p for name in names for p in walk(command.get_command(click.Context(command), name), [*path, name])
        ]

    return walk(main, [])


def _help(path: list[str]) -> tuple[click.Command, click.Context, str]:
    """Return the command at ``path``, its context and its --help text, as in an 80-column terminal."""
    from ft_assets.cli import main

    command, context = main, click.Context(main, info_name="ft-assets")
    for name in path:
        command = command.get_command(context, name)
        context = click.Context(command, info_name=name, parent=context)
    return command, context, command.get_help(context)


@pytest.mark.parametrize("path", _command_paths(), ids=lambda path: " ".join(["ft-assets", *path]))
def test_help_is_whole_sentences_that_fit(path: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # click sizes help to the terminal (at most 80 columns)
    command, context, text = _help(path)
    _usage, *lines = text.splitlines()  # the usage line's "[ARGS]..." is click's notation, not a cut
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert not any("..." in line or "…" in line for line in lines), text  # click cuts a long summary with "..."
    assert not any(line.rstrip().endswith("-") for line in lines), f"a word split at its hyphen:\n{text}"
    paragraphs = [p.strip() for p in (command.help or "").split("\n\n") if p.strip()]
    assert paragraphs and all(p.endswith(".") for p in paragraphs), command.help
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        assert param.help, f"{' '.join(path)} {param.opts[0]} has no help"
        assert param.help[0].isupper() and param.help.endswith("."), f"{param.opts[0]}: {param.help!r}"
    if isinstance(command, click.Group):
        names = command.list_commands(context)
        width = 78 - 6 - max(len(name) for name in names)  # what click leaves a summary in the command list
        for name in names:
            summary = command.get_command(context, name).get_short_help_str(limit=1000)
            assert summary.endswith(".") and summary[0].isupper(), f"{name}: {summary!r}"
            assert len(summary) <= width, f"{name}: {summary!r} is cut or wrapped at 80 columns"
            listed = [line for line in lines if line.startswith(f"  {name} ")]
            assert listed and listed[0].endswith(summary), f"{name} is listed as {listed}, not {summary!r}"


def test_help_runs_from_the_command_line() -> None:
    done = subprocess.run(
        [str(FT_ASSETS), "lineage", "--help"], env={**os.environ, "COLUMNS": "80"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "  trace    Show an asset version and everything it was made from.\n" in done.stdout


def test_a_check_step_that_never_evaluates_is_named_by_its_asset_and_check() -> None:
    from ft_assets.definitions import defs
    from ft_assets.run_command import EventHandler, _check_names

    names = _check_names(defs.resolve_job_def("main"))
    assert names["merged_model_merged_model_matches_adapter"] == "merged_model · merged_model_matches_adapter"
    assert names["train_split_format_valid"] == "train_split · format_valid"
    handler = EventHandler(display=None, check_names=names)  # type: ignore[arg-type]
    assert handler._name("merged_model_merged_model_matches_adapter") == "merged_model · merged_model_matches_adapter"
    assert handler._name("lora_adapter") == "lora_adapter"
