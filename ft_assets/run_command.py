"""``ft-assets run``: run a job in this process against the DAGSTER_HOME instance, readably.

The run is a normal Dagster run (recorded in the instance's run storage and event log, so the UI
shows it). What the run itself prints (Dagster's DEBUG event lines, library warnings, the training
process's output) goes to a log file under DAGSTER_HOME; the terminal gets one line per step, a
progress bar for the long steps, the errors and a summary, built from the run's events.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

if TYPE_CHECKING:
    import dagster as dg
    from dagster._core.events.log import EventLogEntry
    from rich.console import Console
    from rich.progress import Progress, TaskID

# Log lines of the long steps that say how far they are: "step 5/19, ..." (lora_adapter),
# "pretraining epoch 1/3: ..." (base_model), "lora_adapter: 16/38 answered" (evaluation_table).
PROGRESS = (
    (re.compile(r"^step (?P<done>\d+)/(?P<total>\d+)"), "training"),
    (re.compile(r"^pretraining epoch (?P<done>\d+)/(?P<total>\d+)"), "pretraining"),
    (re.compile(r"^(?P<label>.+): (?P<done>\d+)/(?P<total>\d+) answered$"), None),
)
PLAIN_PROGRESS_EVERY_S = 10.0  # without a terminal, a long step prints how far it is at most this often
WARNING = 30  # logging.WARNING: step log messages at or above it are shown
NOT_RUN = re.compile(r"^Dependencies for step (?P<step>\S+) (failed|were not executed)")


@dataclass
class RunRecord:
    """What the run's events said, for the step lines and the summary."""

    materialized: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    run_errors: list[str] = field(default_factory=list)


def _value(metadata: dict[str, Any]) -> dict[str, Any]:
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m {int(seconds % 60):02d}s"


def _asset_figure(asset: str, meta: dict[str, Any]) -> str:
    """Return the one figure that tells how a materialization went."""
    figures = {
        "cleaned_examples": lambda: (
            f"kept {_number(meta['kept'])}, rejected {_number(meta['rejected'])} of {_number(meta['read'])} rows"
        ),
        "base_model": lambda: f"{_number(meta['parameters'])} parameters",
        "lora_adapter": lambda: (
            f"train loss {_number(meta['final_train_loss'])}, eval loss {_number(meta['final_eval_loss'])}"
        ),
        "evaluation_table": lambda: f"lora_adapter {meta['main_metric']} {_number(meta['score: lora_adapter'])}",
        "champion_model": lambda: f"{meta['decision']}; champion: {meta['champion']}",
    }
    try:
        text = figures[asset]() if asset in figures else f"{_number(meta['dagster/row_count'])} rows"
    except KeyError:
        text = f"version {meta['data_version']}" if "data_version" in meta else ""
    return f"reused, {text}" if meta.get("reused") is True else text


def _check_figure(check: dict[str, Any]) -> str:
    if check["passed"]:
        return "passed"
    details = [f"{k} {_number(v)}" for k, v in check["metadata"].items() if isinstance(v, int | float | str)]
    shown = ", ".join(details[:3]) + (", …" if len(details) > 3 else "")
    return f"failed ({check['severity']})" + (f": {shown}" if shown else "")


class Display:
    """Step lines and progress on the terminal: a live view with rich on a TTY, plain lines otherwise."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.started: dict[str, float] = {}
        self.last_plain: dict[str, float] = {}
        self.tasks: dict[str, TaskID] = {}
        self.progress: Progress | None = None

    def __enter__(self) -> Display:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=self.console, transient=True, redirect_stdout=False,
                redirect_stderr=False,
            )  # fmt: skip
            self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def print(self, text: str) -> None:
        """Print a line above the live view (markup allowed)."""
        self.console.print(text, highlight=False, soft_wrap=not self.console.is_terminal)

    def start(self, step: str) -> None:
        """Show a step as running."""
        self.started[step] = self.last_plain[step] = time.monotonic()
        if self.progress is not None:
            self.tasks[step] = self.progress.add_task(_escape(step), total=None)

    def advance(self, step: str, label: str, done: int, total: int) -> None:
        """Show how far a long step is."""
        if self.progress is not None and step in self.tasks:
            self.progress.update(self.tasks[step], description=_escape(f"{step}: {label}"), completed=done, total=total)
        elif not self.quiet and time.monotonic() - self.last_plain.get(step, 0.0) >= PLAIN_PROGRESS_EVERY_S:
            self.last_plain[step] = time.monotonic()
            self.print(_escape(f"  … {step}: {label} {done}/{total}"))

    def note(self, step: str, level: int, text: str) -> None:
        """Show a warning or error a step logged."""
        if not self.quiet or level > WARNING:
            colour = "red" if level > WARNING else "yellow"
            self.print(f"  [{colour}]{_escape(step)}: {_escape(text)}[/{colour}]")

    def finish(self, step: str, name: str, status: str, seconds: float | None, figure: str) -> None:
        """Replace a running step by its final line."""
        if self.progress is not None and step in self.tasks:
            self.progress.remove_task(self.tasks.pop(step))
        if seconds is None:
            seconds = time.monotonic() - self.started.get(step, time.monotonic())
        if self.quiet and status != "failed":
            return
        marks = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "failed": "[red]✗[/red]", "skipped": "-"}
        mark = marks[status]
        took = "" if status == "skipped" else _duration(seconds)
        self.print(f"{mark} {_escape(name):<46} {took:>7}  {_escape(figure)}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


class EventHandler:
    """Turns the run's events (as they are stored) into display calls and a ``RunRecord``."""

    def __init__(self, display: Display, check_names: dict[str, str] | None = None) -> None:
        self.display = display
        self.check_names = check_names or {}  # a check's step -> "asset · check", for steps that never evaluate
        self.record = RunRecord()
        self.step_assets: dict[str, list[str]] = {}
        self.step_checks: dict[str, list[dict[str, Any]]] = {}  # a step may evaluate one check on several assets
        self.observed: set[str] = set()  # steps that observed a source asset
        self.lock = threading.Lock()  # Pipes messages arrive from a reader thread

    def __call__(self, entry: EventLogEntry) -> None:
        """Handle one event log entry."""
        with self.lock:
            self._handle(entry)

    def _handle(self, entry: EventLogEntry) -> None:
        from dagster._core.events import DagsterEventType

        event, step = entry.dagster_event, entry.step_key
        if event is None:
            if step is not None:
                self._log_message(step, entry.level if isinstance(entry.level, int) else 20, entry.user_message)
            return
        kind = event.event_type
        if kind == DagsterEventType.STEP_START and step:
            self.display.start(step)
        elif kind == DagsterEventType.ASSET_MATERIALIZATION and step:
            materialization = event.step_materialization_data.materialization
            asset = materialization.asset_key.to_user_string()
            self.record.materialized[asset] = _value(materialization.metadata)
            self.step_assets.setdefault(step, []).append(asset)
        elif kind == DagsterEventType.ASSET_OBSERVATION and step:
            self.observed.add(step)
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION and step:
            evaluation = event.asset_check_evaluation_data
            check = {"asset": evaluation.asset_key.to_user_string(), "check": evaluation.check_name,
                     "passed": evaluation.passed, "severity": evaluation.severity.value.lower(),
                     "metadata": _value(evaluation.metadata)}  # fmt: skip
            self.record.checks.append(check)
            self.step_checks.setdefault(step, []).append(check)
        elif kind == DagsterEventType.STEP_SUCCESS and step:
            checks = self.step_checks.get(step)
            status = "ok" if not checks or all(c["passed"] for c in checks) else "warn"
            if checks is None and step not in self.step_assets and step not in self.observed:
                status = "skipped"  # an optional output not made, e.g. Azure without credentials
            self.display.finish(step, self._name(step), status, event.step_success_data.duration_ms / 1000,
                                self._figure(step))  # fmt: skip
        elif kind == DagsterEventType.STEP_FAILURE and step:
            figure = self._figure(step) if step in self.step_checks else "failed"
            self.record.failures.append((self._name(step), _failure_text(event.step_failure_data, figure)))
            self.display.finish(step, self._name(step), "failed", None, figure)
        elif kind == DagsterEventType.STEP_SKIPPED and step:
            self.display.finish(step, self._name(step), "skipped", 0.0, "skipped (an upstream step did not run)")
        elif kind == DagsterEventType.RUN_FAILURE:
            self.record.run_errors.append(entry.user_message)
        elif kind == DagsterEventType.ENGINE_EVENT and event.engine_event_data.error is not None:
            self.record.run_errors.append(event.engine_event_data.error.to_string())

    def _log_message(self, step: str, level: int, message: str) -> None:
        if NOT_RUN.match(message):
            self.display.finish(step, step, "skipped", 0.0, "not run: an upstream step failed")
            return
        for pattern, label in PROGRESS:
            found = pattern.match(message)
            if found:
                what = label or found.group("label")
                self.display.advance(step, what, int(found.group("done")), int(found.group("total")))
                return
        if level >= WARNING:
            self.display.note(step, level, message.removeprefix(f"{step}: "))

    def _name(self, step: str) -> str:
        checks = self.step_checks.get(step)
        if not checks:
            return self.check_names.get(step, step)
        assets, names = (", ".join(dict.fromkeys(c[key] for c in checks)) for key in ("asset", "check"))
        return f"{assets} · {names}"

    def _figure(self, step: str) -> str:
        if step in self.step_checks:
            checks = self.step_checks[step]
            return _check_figure(next((c for c in checks if not c["passed"]), checks[0]))
        assets = self.step_assets.get(step, [])
        if len(assets) > 1:  # the splits: one figure for all
            rows = [f"{a.removesuffix('_split')} {_number(self.record.materialized[a].get('dagster/row_count'))}"
                    for a in assets]  # fmt: skip
            return ", ".join(rows) + " rows"
        if assets:
            return _asset_figure(assets[0], self.record.materialized[assets[0]])
        return "observed" if step in self.observed else "nothing materialized"


def _failure_text(data: Any, figure: str) -> str:
    """Return what a user needs of a step failure: a Failure's own words, else the whole error with its stack.

    A blocking check's failure is its message and the check's figures (``figure``).
    """
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    if data.error is None:
        return "the step failed without an error (see the run's log)"
    if data.error.cls_name == "DagsterAssetCheckFailedError":
        return f"{data.error.message.split(': ', 1)[-1].strip()}\n{figure}"
    return data.error.to_string().strip()


@contextmanager
def _terminal_only_for_us(log_path: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """Send whatever is written to file descriptors 1 and 2 (by Dagster, libraries, child processes) to a file.

    Yields streams to the real stdout and stderr, for this command's own output.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out, err = os.fdopen(os.dup(1), "w", buffering=1), os.fdopen(os.dup(2), "w", buffering=1)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield out, err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in zip((1, 2), saved, strict=True):
            os.dup2(original, fd)
            os.close(original)
        out.close()
        err.close()


def _dagster_home() -> Path:
    """Return DAGSTER_HOME as an absolute folder, the current one when unset; export it for Dagster."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd()).resolve()
    if not home.is_dir():
        raise click.ClickException(f"DAGSTER_HOME={home} is not a folder: create it or point DAGSTER_HOME elsewhere")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _tool(name: str) -> str:
    """Return how to call a console script of this environment from the current folder."""
    path = Path(sys.executable).parent / name
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _summary(job: str, success: bool, seconds: float, run_id: str, home: Path, record: RunRecord) -> list[str]:
    """Return the closing lines: data kept and rejected, every model's score, the champion, checks, what next."""
    from ft_assets.evaluation.metrics import FEW_TEST_EXAMPLES, few_test_examples
    from ft_assets.evaluation.results import RESULTS

    status = "[green]succeeded[/green]" if success else "[red]failed[/red]"
    lines = ["", f"[bold]{job}[/bold] {status} in {_duration(seconds)} (run {run_id[:8]}, DAGSTER_HOME={home})"]
    cleaned = record.materialized.get("cleaned_examples")
    if cleaned and {"read", "kept", "rejected"} <= cleaned.keys():
        reasons = _rejects_by_reason(cleaned)
        synthetic = cleaned.get("from_synthetic") or 0
        of_them = f" ({_number(synthetic)} of them synthetic)" if synthetic else ""
        lines.append(f"data        {_number(cleaned['read'])} rows read: {_number(cleaned['kept'])} kept{of_them}, "
                     f"{_number(cleaned['rejected'])} rejected" + (f" ({reasons})" if reasons else ""))  # fmt: skip
    evaluation = record.materialized.get("evaluation_table", {})
    results = Path(str(evaluation.get("path", "")), RESULTS)
    if evaluation and results.is_file():
        rows = json.loads(results.read_text())
        lines.append(f"evaluation  {rows[0]['main_metric']} [95% CI] on the test split "
                     f"(task {rows[0].get('task', '?')}):")  # fmt: skip
        width = max(len(row["model"]) for row in rows)
        for row in rows:
            score = f"{_number(row['main_score'])} [{_number(row['ci_low'])}, {_number(row['ci_high'])}]"
            lines.append(_escape(f"  {row['model']:<{width}}  {score}  n={row['n']}"))
        if (fewest := min(row["n"] for row in rows)) < FEW_TEST_EXAMPLES:
            lines.append(f"  [yellow]{few_test_examples(fewest)}[/yellow]")
    champion = record.materialized.get("champion_model")
    if champion and "decision" in champion:
        lines.append(_escape(f"champion    {champion.get('champion', '?')} (decision: {champion['decision']}, "
                             f"{champion.get('reason', '')})"))  # fmt: skip
    failed = [c for c in record.checks if not c["passed"]]
    if record.checks:
        failed_text = "; ".join(f"{c['check']} on {c['asset']} ({c['severity']})" for c in failed)
        lines.append(f"checks      {len(record.checks) - len(failed)} passed"
                     + (f", [yellow]failed: {_escape(failed_text)}[/yellow]" if failed else ""))  # fmt: skip
    home_prefix = "DAGSTER_HOME=$PWD" if home == Path.cwd().resolve() else f"DAGSTER_HOME={home}"
    workspace = "-w workspace.yaml" if Path("workspace.yaml").is_file() else "-m ft_assets.definitions"
    lines.append(f"next        {home_prefix} {_tool('dagster')} dev {workspace}   the run, each asset's metadata")
    if success:
        lines += [
            f"            {_tool('ft-assets')} eval   every model's scores (--predictions lora_adapter --worst 5)",
            f"            {_tool('ft-assets')} lineage trace merged_model   the data, code and config behind the model",
        ]
    return lines


def _rejects_by_reason(cleaned: dict[str, Any], top: int = 3) -> str:
    """Return the most frequent reject reasons of cleaned_examples, from its report."""
    report = Path(str(cleaned.get("path", "")), "report.json")
    if not report.is_file():
        return ""
    reasons = json.loads(report.read_text()).get("by_reason", {})
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{reason} {count}" for reason, count in ranked[:top])
    return text + (", …" if len(ranked) > top else "")


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise click.ClickException(f"{path} is not YAML or JSON: {error}") from error
    if not isinstance(config, dict):
        raise click.ClickException(f"{path} must hold a mapping (ops/resources/loggers), like dagster's -c file")
    return config


def _check_names(job: dg.JobDefinition) -> dict[str, str]:
    """Return ``asset · check`` by the step of each check that runs in a step of its own (named by Dagster)."""
    from ft_assets.definitions import defs

    steps = job.graph.node_dict
    names = {}
    for key in defs.resolve_asset_graph().asset_check_keys:
        step = f"{key.asset_key.to_python_identifier()}_{key.name}"
        if step in steps:
            names[step] = f"{key.asset_key.to_user_string()} · {key.name}"
    return names


def _job(name: str) -> dg.JobDefinition:
    from ft_assets.definitions import defs

    jobs = sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__"))
    if name not in jobs:
        raise click.BadParameter(f"no job {name!r}; the jobs are: {', '.join(jobs)}", param_hint="JOB")
    return defs.resolve_job_def(name)


@click.command(name="run", short_help="Run a job (default: main) here and end with a summary.")
@click.argument("job_name", metavar="[JOB]", default="main")
@click.option(
    "--config", "-c", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run config file (YAML or JSON, like dagster's -c), e.g. ops: {lora_adapter: {config: {epochs: 2}}}.",
)  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="Print only errors and the summary, no step lines.")
def run(job_name: str, config_file: Path | None, quiet: bool) -> None:
    """Run JOB (default: main) in this process and end with a summary.

    The run goes to the Dagster instance of DAGSTER_HOME (the current folder when it is unset), so
    `dagster dev` shows it. One line per step with its duration and key figure, a progress bar for
    training and evaluation; Dagster's own log goes to a file under DAGSTER_HOME/storage/. Exits
    non-zero when a step fails, with the step and its error.
    """
    from rich.console import Console

    home = _dagster_home()
    run_config = _read_config(config_file)
    from dagster._core.utils import make_new_run_id

    run_id = make_new_run_id()
    log_path = home / "storage" / run_id / "run.log"
    started = time.monotonic()
    with _terminal_only_for_us(log_path) as (out, err):
        console, errors = Console(file=out), Console(file=err, stderr=True)
        import dagster as dg

        job = _job(job_name)
        with Display(console, quiet) as display, dg.DagsterInstance.get() as instance:
            handler = EventHandler(display, _check_names(job))
            instance.add_event_listener(run_id, handler)
            if not quiet:
                display.print(_escape(f"running {job_name} (run {run_id[:8]}; Dagster's log: {log_path})"))
            try:
                result = job.execute_in_process(run_config=run_config, instance=instance, run_id=run_id,
                                                raise_on_error=False)  # fmt: skip
            except dg.DagsterInvalidConfigError as error:
                raise click.ClickException(
                    f"run config{f' in {config_file}' if config_file else ''}: {error}"
                ) from error
        record = handler.record
        for line in _summary(job_name, result.success, time.monotonic() - started, run_id, home, record):
            console.print(line, highlight=False, soft_wrap=True)
        if result.success:
            return
        for step, text in record.failures:
            errors.print(f"[red bold]{job_name} failed at step {_escape(step)}:[/red bold]", highlight=False)
            errors.print(_escape(text), highlight=False, soft_wrap=True)
        if not record.failures:
            errors.print(_escape(f"{job_name} failed: " + ("\n".join(record.run_errors) or "see the log")),
                         highlight=False, soft_wrap=True)  # fmt: skip
        errors.print(_escape(f"Dagster's log of the run: {log_path}"), highlight=False, soft_wrap=True)
    sys.exit(1)
