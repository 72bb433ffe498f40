"""The ``ft-assets`` command: data preparation, lineage queries and runs of the main job."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ft_assets.champion.cli import champion
from ft_assets.defaults import LINEAGE_DB as DEFAULT_DB
from ft_assets.run_command import run


def _ratios(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[float, float, float]:
    from ft_assets.dataset.splitting import SplitConfig

    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three numbers like 0.8,0.1,0.1, got {value!r}") from None
    try:
        return SplitConfig(ratios=parts).ratios  # type: ignore[arg-type]
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@click.group()
def main() -> None:
    """Turn example data into fine-tuned models, with lineage you can query."""


@main.command(short_help="Clean, deduplicate and split example files into a folder.")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the splits and the report into.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the split assignment.")
@click.option("--ratios", default="0.8,0.1,0.1", show_default=True, callback=_ratios,
              help="Shares of train, validation and test, summing to 1.")  # fmt: skip
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(min=1),
              help="Reject examples above this token estimate.")  # fmt: skip
@click.option("--format", "fmt", default="auto", type=click.Choice(["auto", "chat", "preference"]), show_default=True,
              help="Format of the rows; auto tells chat and preference rows apart.")  # fmt: skip
@click.option("--keep-markdown", is_flag=True, help="Do not strip markdown debris from the turns.")
@click.option(
    "--suspicious",
    default="fix",
    type=click.Choice(["keep", "fix", "reject"]),
    show_default=True,
    help="What to do with answers that leak the next question or stop mid-sentence.",
)
@click.option(
    "--group-by-answer",
    default="auto",
    type=click.Choice(["auto", "always", "never"]),
    show_default=True,
    help="Keep rows with the same answer in one split (auto: free-text answers only).",
)
@click.option(
    "--near-duplicates",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Word-set similarity (Jaccard) of prompts, or of free-text answers, from which rows share a group (0: off).",
)
@click.option("--min-examples", default=10, show_default=True, type=click.IntRange(min=1),
              help="Fail below this many cleaned examples.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: one per core).")
def prep(
    inputs: tuple[str, ...],
    out_dir: Path,
    seed: int,
    ratios: tuple[float, float, float],
    max_tokens: int,
    fmt: str,
    keep_markdown: bool,
    suspicious: str,
    group_by_answer: str,
    near_duplicates: float,
    min_examples: int,
    workers: int | None,
) -> None:
    """Clean, deduplicate, group and split INPUTS (JSONL files, JSON arrays or folders) into --out.

    Every row is kept or rejected with a reason; rows that are the same question in other words
    stay in one split.
    """
    from ft_assets.dataset.prep import GroupConfig, PrepError, SplitConfig, SplitError
    from ft_assets.dataset.prep import prep as run_prep
    from ft_assets.dataset.validate import CleanConfig

    config = CleanConfig(format=fmt, max_tokens=max_tokens, strip_markdown=not keep_markdown, suspicious=suspicious)
    split_config = SplitConfig(seed=seed, ratios=ratios, min_examples=min_examples)
    try:
        group_config = GroupConfig(group_by_answer, near_duplicates)
    except ValueError as error:  # NaN passes click's range check
        raise click.BadParameter(str(error), param_hint="--near-duplicates") from None
    try:
        # This process has started no threads yet, so its workers can be forked directly (where fork exists).
        report = run_prep(inputs, out_dir, config, split_config, group_config, workers=workers, start_method="fork")
    except (PrepError, SplitError) as error:
        click.echo(f"ft-assets prep: {error}", err=True)
        sys.exit(2)
    if conflicts := report["grouping"]["user_split_conflicts"]:
        groups = "1 group" if conflicts == 1 else f"{conflicts} groups"
        click.echo(f"ft-assets prep: {groups} had rows pinned to different splits; each went to the first of "
                   "them (train, validation, test)", err=True)  # fmt: skip
    for warning in report["warnings"]:
        click.echo(f"ft-assets prep: {warning}", err=True)
    for ignored in report["ignored_inputs"]:
        click.echo(f"ft-assets prep: ignored {ignored['path']} ({ignored['why']})", err=True)
    splits = ", ".join(f"{name} {info['rows']}" for name, info in report["splits"].items())
    click.echo(
        f"read {report['read']}, kept {report['kept']}, rejected {report['rejected']} "
        f"({report['duplicates']} duplicates); {splits} -> {out_dir}"
    )


@main.group(short_help="Ask which data, code and config made a model, and more.")
def lineage() -> None:
    """Ask which data, code and config made a model, which models an example reached, and more.

    The answers come from the lineage database (data/lineage.duckdb), which every materialization
    writes to; sync rebuilds it from Dagster's event log.
    """


def _print_walk(rows: list[dict], as_json: bool) -> None:
    """Print the walk as JSON, or as a tree where a node reached twice is shown once in full."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    by_name = {f"{row['asset']}@{row['data_version']}": row for row in rows}
    children: dict[str, list[str]] = {name: [] for name in by_name}
    for name, row in by_name.items():
        for via in row["via"] or []:
            children.setdefault(via, []).append(name)
    shown: set[str] = set()

    def show(name: str, indent: int) -> None:
        row = by_name[name]
        details = [f"code {row['code_version']}" if row["code_version"] else "external"]
        if row["created_at"]:
            details.append(str(row["created_at"])[:19])
        if row["path"]:
            details.append(row["path"])
        if name in shown:
            click.echo(f"{'  ' * indent}{name}  (shown above)")
            return
        shown.add(name)
        click.echo(f"{'  ' * indent}{name}  ({', '.join(details)})")
        for child in sorted(children[name]):
            show(child, indent + 1)

    show(f"{rows[0]['asset']}@{rows[0]['data_version']}", 0)


def _walk_command(name: str, help_text: str, short_help: str) -> None:
    @lineage.command(name=name, help=help_text, short_help=short_help)
    @click.argument("target")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of an indented list.")
    @click.option("--db", default=DEFAULT_DB, show_default=True, help="Lineage database.")
    def command(target: str, as_json: bool, db: str) -> None:
        from ft_assets.lineage import queries

        if not Path(db).exists():
            raise click.ClickException(
                f"no lineage database at {db}: materialize assets first (or ft-assets lineage sync)"
            )
        try:
            rows = getattr(queries, name)(db, target)
        except queries.UnknownVersion as error:
            raise click.ClickException(str(error)) from error
        _print_walk(rows, as_json)


_walk_command(
    "trace",
    "Show TARGET (ASSET[@VERSION], default latest) and everything it was made from.",
    "Show an asset version and everything it was made from.",
)
_walk_command(
    "impact",
    "Show TARGET (ASSET[@VERSION], default latest) and everything made from it.",
    "Show an asset version and everything made from it.",
)


@lineage.command(short_help="Find an example: its splits and models, or why it was rejected.")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Lineage database.")
def example(target: str, as_json: bool, db: str) -> None:
    """Show where TARGET (an example id, or FILE:LINE of a raw input) ended up.

    Kept: every split version holding it, where it came from and the models made from it.
    Otherwise: whether the newest cleaned_examples versions rejected it, and why. Exits 1 when
    neither is found. FILE is the path as recorded, a path from here, or a unique ending of it.
    """
    from ft_assets.lineage import queries

    if not Path(db).exists():
        raise click.ClickException(f"no lineage database at {db}: materialize assets first (or ft-assets lineage sync)")
    try:
        result = queries.find_example(db, target)
    except queries.AmbiguousFile as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        if result["status"] == "not_found":
            click.echo(result["message"], err=True)
            sys.exit(1)
        return
    if result["status"] == "not_found":
        raise click.ClickException(result["message"])
    for row in result["splits"]:
        origin = row["source_example_id"] or f"{row['source_file']}:{row['source_line']}"
        named = f"  example {row['example_id']}" if result["kind"] == "location" else ""
        click.echo(f"{row['asset']}@{row['data_version']}{named}  from {origin}")
        if row["models"]:
            click.echo(f"  models: {', '.join(row['models'])}")
    for record in result["rejected"]:
        where = f"{record['file']}:{record['line']}"
        subject = where if result["kind"] == "location" else f"example {target} ({where})"
        why = ", ".join(record["reasons"])
        if record.get("duplicate_of"):
            why += f" (duplicate of {record['duplicate_of']['file']}:{record['duplicate_of']['line']})"
        click.echo(f"{subject} was rejected by cleaned_examples@{record['cleaned_examples']}: {why}")


def _need_db(db: str) -> None:
    if not Path(db).exists():
        raise click.ClickException(f"no lineage database at {db}: materialize assets first (or ft-assets lineage sync)")


@lineage.command(short_help="Show every model version trained on an example.")
@click.argument("example_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of text.")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Lineage database.")
def models(example_id: str, as_json: bool, db: str) -> None:
    """Show every model version whose training data (train and validation splits) held EXAMPLE_ID.

    A model trained on a synthetic variant of the example counts too (its ids are listed).
    """
    from ft_assets.lineage.answers import models_with_example

    _need_db(db)
    rows = models_with_example(db, example_id)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo(f"no model version was trained on {example_id} or a synthetic variant of it")
        return
    for row in rows:
        held = (["the example"] if row["direct"] else []) + [f"variant {v}" for v in row["variants"]]
        click.echo(f"{row['asset']}@{row['data_version']}  {str(row['created_at'])[:19]}  ({', '.join(held)} "
                   f"in {', '.join(row['splits'])})")  # fmt: skip


DIFF_IDS_SHOWN = 10


@lineage.command(name="diff", short_help="Compare two model versions: data, config, code and scores.")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Lineage database.")
def diff_command(a: str, b: str, as_json: bool, db: str) -> None:
    """Compare model versions A and B (ASSET@VERSION, or a version id of one asset).

    Training examples added, removed and changed (same id, other content) from A to B; then what
    differs in configuration, code and library versions, device, upstream versions; and the
    evaluation scores of both.
    """
    from ft_assets.lineage import answers, queries

    _need_db(db)
    try:
        result = answers.diff(db, a, b)
    except (queries.UnknownVersion, answers.AmbiguousVersion) as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    for side in ("a", "b"):
        row = result[side]
        click.echo(f"{side.upper()}: {row['asset']}@{row['data_version']}  code {row['code_version']}  "
                   f"device {row['device'] or '-'}  {str(row['created_at'])[:19]}")  # fmt: skip
    for change in ("added", "removed", "changed"):
        ids = result[f"examples_{change}"]
        shown = ", ".join(ids[:DIFF_IDS_SHOWN]) + (
            f", ... ({len(ids) - DIFF_IDS_SHOWN} more)" if len(ids) > DIFF_IDS_SHOWN else ""
        )
        click.echo(f"examples {change}: {len(ids)}" + (f"  {shown}" if ids else ""))
    for section in ("training_splits", "config", "libraries", "upstream"):
        for key, values in result[section].items():
            click.echo(f"{section} {key}: {values['a']} -> {values['b']}")
    for score in result["evaluations"]:
        cells = [
            "-" if score[side] is None else f"{score[side]['main_metric']} {score[side]['main_score']}"
            for side in ("a", "b")
        ]
        click.echo(f"evaluation on {score['test_split_version']} ({score['model']}): A {cells[0]}  B {cells[1]}")


def _metric_cells(row: dict) -> list[str]:
    """Return the cells of one evaluation row: main metric with its interval, other metrics, latency, cost."""
    interval = "" if row["ci_low"] is None else f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    main_score = "-" if row["main_score"] is None else f"{row['main_score']:.3f}{interval}"
    others = ", ".join(
        f"{name} {value:.3f}"
        for name, value in sorted(row["metrics"].items())
        if name != row["main_metric"] and isinstance(value, int | float)
    )

    def number(key: str, fmt: str) -> str:
        return "-" if row.get(key) is None else fmt.format(row[key])

    return [
        row["model"],
        row["model_version"],
        str(row["n"]),
        f"{row['main_metric']} {main_score}",
        number("latency_p50_ms", "{:.1f}"),
        number("latency_p95_ms", "{:.1f}"),
        number("cost_per_1k_requests_usd", "{:.4f}"),
        others,
    ]


def _print_table(header: list[str], lines: list[list[str]]) -> None:
    table = [header, *lines]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@main.command(name="eval", short_help="Show every model's scores on the newest test split.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.option("--predictions", "model", default=None, help="Show MODEL's predictions next to the references.")
@click.option(
    "--worst",
    type=click.IntRange(min=1),
    default=None,
    help="With --predictions, show only the N lowest-scoring examples.",
)
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Lineage database.")
def eval_command(as_json: bool, model: str | None, worst: int | None, db: str) -> None:
    """Show the latest evaluation table (every model on the newest test split version), or one model's predictions."""
    from ft_assets.evaluation.report import one_line
    from ft_assets.lineage.queries import latest_evaluations, predictions

    if not Path(db).exists():
        raise click.ClickException(f"no lineage database at {db}: materialize evaluation_table first")
    if model is not None:
        rows = predictions(db, model, worst=worst)
        if not rows:
            raise click.ClickException(f"no predictions of {model!r} in {db}: materialize evaluation_table first")
        if as_json:
            click.echo(json.dumps(rows, indent=2, default=str))
            return
        click.echo(f"{rows[0]['model']} {rows[0]['model_version']} on test split {rows[0]['test_split_version']}")
        _print_table(
            ["test example", "id", "score", "reference", "prediction"],  # its number among those evaluated
            [
                [str(r["position"] + 1), str(r["example_id"]),
                 "-" if r["main_score"] is None else f"{r['main_score']:.3f}",
                 one_line(r["reference"], 60),
                 one_line(r["prediction"], 60) + (" [truncated]" if r["truncated"] else "")]
                for r in rows
            ],
        )  # fmt: skip
        return
    rows = latest_evaluations(db)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        raise click.ClickException(f"no evaluation is recorded in {db}: materialize evaluation_table first")
    task = rows[0].get("task") or "labels"
    click.echo(f"test split {rows[0]['test_split_version']}, task {task}; main metric with its 95% interval")
    _print_table(
        ["model", "version", "n", "main metric", "p50 ms", "p95 ms", "$/1k req", "other metrics"],
        [_metric_cells(row) for row in rows],
    )


@lineage.command(name="sync", short_help="Rebuild the lineage database from Dagster's event log.")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Lineage database.")
def sync_command(db: str) -> None:
    """Rebuild the lineage database from the Dagster instance's event log (DAGSTER_HOME)."""
    import dagster as dg

    from ft_assets.lineage.sync import NoEventLog, dagster_home, sync

    try:
        home = dagster_home()
    except NoEventLog as error:
        raise click.ClickException(str(error)) from error
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs_count()
        counts = sync(instance, db)
    if not counts["materializations"]:
        raise click.ClickException(
            f"the event log under DAGSTER_HOME={home} holds {runs} runs and no materialization with lineage: "
            "materialize assets with this DAGSTER_HOME first (ft-assets run, or dagster dev), or point "
            "DAGSTER_HOME at the instance that did"
        )
    click.echo(
        f"recorded {counts['materializations']} materializations, {counts['evaluations']} evaluation rows, "
        f"{counts['predictions']} predictions, {counts['fine_tune_metrics']} fine-tune metric rows and "
        f"{counts['promotions']} champion decisions into {db}"
    )
    if counts["members_missing"]:
        click.echo(f"warning: {counts['members_missing']} members files no longer exist", err=True)


main.add_command(champion)
main.add_command(run)

if __name__ == "__main__":
    main()
