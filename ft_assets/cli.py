"""The ``ft-assets`` command: data preparation, lineage queries and runs of the main job."""

from __future__ import annotations

import sys
from pathlib import Path

import click


def _ratios(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three numbers like 0.8,0.1,0.1, got {value!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise click.BadParameter(f"expected three non-negative numbers summing to 1, got {value!r}")
    return parts  # type: ignore[return-value]


@click.group()
def main() -> None:
    """Turn example data into fine-tuned models, with lineage you can query."""


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the split assignment.")
@click.option("--ratios", default="0.8,0.1,0.1", show_default=True, callback=_ratios, help="train,validation,test")
@click.option("--max-tokens", default=4096, show_default=True, help="Reject examples above this token estimate.")
@click.option("--format", "fmt", default="auto", type=click.Choice(["auto", "chat", "preference"]), show_default=True)
@click.option("--keep-markdown", is_flag=True, help="Do not strip markdown marks from assistant answers.")
@click.option("--workers", type=int, default=None, help="Worker processes (default: one per core).")
def prep(
    inputs: tuple[str, ...],
    out_dir: Path,
    seed: int,
    ratios: tuple[float, float, float],
    max_tokens: int,
    fmt: str,
    keep_markdown: bool,
    workers: int | None,
) -> None:
    """Clean, deduplicate and split JSONL INPUTS (files or folders) into --out."""
    from ft_assets.dataset.prep import PrepError, SplitConfig
    from ft_assets.dataset.prep import prep as run_prep
    from ft_assets.dataset.scan import CleanConfig

    config = CleanConfig(format=fmt, max_tokens=max_tokens, strip_markdown=not keep_markdown)
    try:
        report = run_prep(inputs, out_dir, config, SplitConfig(seed=seed, ratios=ratios), workers=workers)
    except PrepError as error:
        click.echo(f"ft-assets prep: {error}", err=True)
        sys.exit(2)
    splits = ", ".join(f"{name} {info['rows']}" for name, info in report["splits"].items())
    click.echo(
        f"read {report['read']}, kept {report['kept']}, rejected {report['rejected']} "
        f"({report['duplicates']} duplicates); {splits} -> {out_dir}"
    )


if __name__ == "__main__":
    main()
