"""``ft-assets champion``: the current champion and its history; promote or roll back by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ft_assets.defaults import LINEAGE_DB as DEFAULT_DB

DEFAULT_STABLE_PATH = "data/champion"


def _score(score: float | None, low: float | None, high: float | None) -> str:
    if score is None:
        return "-"
    return f"{score:.3f}" + ("" if low is None else f" [{low:.3f}, {high:.3f}]")


def _show(current: dict[str, Any] | None, rows: list[dict[str, Any]]) -> None:
    if current is None:
        click.echo("no champion yet")
    else:
        click.echo(
            f"champion: {current['asset']}@{current['version']}  {current['main_metric']} "
            f"{_score(current['main_score'], current['ci_low'], current['ci_high'])} on test split "
            f"{current['test_split_version']}  (since {current['champion_since'][:19]})"
        )
        click.echo(f"stable path: {current['stable_path']}  ->  {current['path']}")
    for row in rows:
        manual = f" (manual {row['override']})" if row["override"] else ""
        click.echo(
            f"{row['decided_at'][:19]}  {row['candidate_asset']}@{row['candidate_version']}  "
            f"{row['decision']}{manual}: {row['reason']}"
        )


@click.group(invoke_without_command=True, short_help="Show the serving model and every promotion decision.")
@click.option("--json", "as_json", is_flag=True, help="Print {current, history} as JSON.")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="Lineage database.")
@click.pass_context
def champion(ctx: click.Context, as_json: bool, db: str) -> None:
    """Show the model that serves and every promotion decision, newest first."""
    ctx.obj = {"db": db}  # `champion --db X promote ...` acts on X too
    if ctx.invoked_subcommand is not None:
        return
    from ft_assets.champion.store import current_summary, history

    rows = history(db)
    current = current_summary(rows)
    if as_json:
        click.echo(json.dumps({"current": current, "history": rows}, indent=2, default=str))
    else:
        _show(current, rows)


def _override(db: str, target: Any, kind: str, reason: str, stable_path: str) -> None:
    from ft_assets.champion.store import override

    try:
        row = override(db, target, kind, reason, stable_path)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{target.name} is the champion ({kind} by hand: {reason}); {row['stable_path']} points at it")


@champion.command(short_help="Make a model version the champion, by hand.")
@click.argument("version")
@click.option("--reason", required=True, help="Why, in words (kept in the promotions table).")
@click.option("--db", default=None, help=f"Lineage database (default: the group's --db, else {DEFAULT_DB}).")
@click.option("--stable-path", default=DEFAULT_STABLE_PATH, show_default=True,
              help="Folder that points at the champion; used only before any decision named one.")  # fmt: skip
@click.pass_context
def promote(ctx: click.Context, version: str, reason: str, db: str | None, stable_path: str) -> None:
    """Make the merged model (or Azure fine-tune) with data version VERSION the champion, by hand."""
    from ft_assets.champion.store import find_model

    db = db or ctx.obj["db"]
    if not Path(db).exists():
        raise click.ClickException(f"no lineage database at {db}: materialize the main job first")
    target = find_model(db, version)
    if target is None:
        raise click.ClickException(f"no merged_model or azure_fine_tuned_model version {version} in {db}")
    _override(db, target, "promote", reason, stable_path)


@champion.command(short_help="Make the previous champion the champion again, by hand.")
@click.option("--reason", required=True, help="Why, in words (kept in the promotions table).")
@click.option("--db", default=None, help=f"Lineage database (default: the group's --db, else {DEFAULT_DB}).")
@click.pass_context
def rollback(ctx: click.Context, reason: str, db: str | None) -> None:
    """Make the champion before the current one the champion again, by hand (repeat to go further back)."""
    from ft_assets.champion.store import history, rollback_target

    db = db or ctx.obj["db"]
    target = rollback_target(history(db))
    if target is None:
        raise click.ClickException("there is no earlier champion to roll back to")
    _override(db, target, "rollback", reason, DEFAULT_STABLE_PATH)
