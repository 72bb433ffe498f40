"""Data assets: raw files, source documents, cleaned examples and the three splits, with their checks."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ft_assets.artifacts import ArtifactRef
from ft_assets.code_versions import source_version
from ft_assets.defaults import RAW_FOLDER, RAW_FOLDER_ENV, RAW_PATTERN, raw_folder
from ft_assets.metadata import chat_preview, counts_table, excerpt, head_jsonl, reading_order, table
from ft_assets.readable import settings_table
from ft_assets.resources import ArtifactStore, LineageStore

GROUP = "data"
SPLIT_ASSETS = {"train": "train_split", "validation": "validation_split", "test": "test_split"}
GROUPING = "grouping.json"
RAW_CODE = source_version(__name__, "raw_examples")
SOURCES_CODE = source_version(__name__, "source_documents")
CLEANING_CODE = source_version(__name__, "cleaned_examples")
SPLIT_CODE = source_version(__name__, "splits")


class RawExamplesConfig(dg.Config):
    """Where the raw chat examples are read from."""

    folder: str = Field(
        default_factory=raw_folder,
        description="Folder whose *.jsonl files and *.json arrays (recursively) are the raw examples. A file or "
        f"folder named train, validation (valid, val, dev) or test keeps its rows in that split. Default "
        f"{RAW_FOLDER_ENV} or {RAW_FOLDER}, the folder automation watches.",
    )


class SourceDocumentsConfig(dg.Config):
    """Where the documents that synthetic generation may draw from are read from."""

    folder: str = Field("data/sources", description="Folder of source documents (every file, recursively).")


class CleaningConfig(dg.Config):
    """Rules for keeping, fixing and rejecting examples."""

    format: Literal["auto", "chat", "preference"] = Field(
        "auto",
        description="Row format: auto takes each row's own (a mix is reported); chat or preference rejects others.",
    )
    max_tokens: int = Field(4096, description="Reject examples whose estimated tokens exceed this.")
    strip_markdown: bool = Field(
        True, description="Remove markdown debris (emphasis, headings, horizontal rules, fences) from every turn."
    )
    suspicious: Literal["keep", "fix", "reject"] = Field(
        "fix",
        description="Answers with a leaked follow-up question or cut off mid-sentence: keep (flag only), fix (cut "
        "the follow-up; flag the rest) or reject.",
    )


class SplitsConfig(dg.Config):
    """How cleaned examples are divided into train, validation and test."""

    seed: int = Field(0, description="Seed of the group-to-split assignment.")
    ratios: list[float] = Field([0.8, 0.1, 0.1], description="Shares of train, validation and test (sum to 1).")
    min_examples: int = Field(10, description="Fail with a clear message below this many cleaned examples.")
    group_by_answer: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Keep rows that give the same answer in one split: auto does it for free-text answers (4+ words, "
        "not JSON, not only short 'Key: value' lines), not for labels that repeat by design.",
    )
    near_duplicate_threshold: float = Field(
        0.8,
        description="Group rows whose prompts' word sets, or free-text answers' word sets, have at least this "
        "Jaccard similarity (0 turns it off).",
    )


def _snapshot(
    context: dg.AssetExecutionContext,
    asset: str,
    folder: str,
    pattern: str,
    artifacts: ArtifactStore,
    lineage: LineageStore,
    config: dg.Config,
    *,
    required: bool = True,
) -> dg.Output[ArtifactRef]:
    from ft_assets.dataset.snapshot import snapshot

    source = Path(folder)
    with artifacts.stage(asset) as staging:
        try:
            manifest = snapshot(source, staging, pattern)
        except FileNotFoundError as error:
            raise dg.Failure(f"{asset}: {error}. Set the asset's config 'folder' to where your files are.") from error
        if not manifest["files"]:
            if required:
                raise dg.Failure(f"{asset}: no file matching {pattern} under {source}")
            context.log.warning(f"{asset}: {source} holds no file: nothing to draw from")
        ref = artifacts.publish(staging, asset)
    if manifest["ignored"]:
        context.log.warning(f"{asset}: ignored files not matching {pattern}: {', '.join(manifest['ignored'])}")
    parents = [(f"file:{(source / f['name']).as_posix()}", f["sha256"][:16]) for f in manifest["files"]]
    recorded = lineage.record(context, ref, parents, config)
    lines = sum(f["lines"] for f in manifest["files"])
    context.log.info(f"{asset}: {len(manifest['files'])} files, {lines} lines -> {ref.path}")
    files = [{**f, "sha256": f["sha256"][:16]} for f in manifest["files"]]
    return dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata=reading_order(
            {
                "files": len(manifest["files"]),
                "lines": lines,
                "bytes": sum(f["bytes"] for f in manifest["files"]),
                "ignored_files": len(manifest["ignored"]),
                "folder": source.as_posix(),
            },
            {
                "per_file": table(files, {"name": "string", "lines": "int", "bytes": "int", "sha256": "string"}),
                **(
                    {"ignored": table([{"name": n} for n in manifest["ignored"]], {"name": "string"})}
                    if manifest["ignored"]
                    else {}
                ),
            },
            recorded=recorded,
        ),
    )


@dg.asset(
    group_name=GROUP,
    code_version=RAW_CODE,
    kinds={"jsonl"},
    deps=["raw_data"],
    description="Snapshot of every *.jsonl file and *.json array under the raw folder (default data/raw). A changed "
    "file gives a new data version; each file's SHA-256 is kept in lineage.",
)
def raw_examples(
    context: dg.AssetExecutionContext, config: RawExamplesConfig, artifacts: ArtifactStore, lineage: LineageStore
) -> dg.Output[ArtifactRef]:
    """Copy the raw example files into an immutable artifact."""
    return _snapshot(context, "raw_examples", config.folder, RAW_PATTERN, artifacts, lineage, config)


@dg.asset(
    group_name=GROUP,
    code_version=SOURCES_CODE,
    description="Snapshot of the documents (default data/sources) that synthetic generation may draw from.",
)
def source_documents(
    context: dg.AssetExecutionContext, config: SourceDocumentsConfig, artifacts: ArtifactStore, lineage: LineageStore
) -> dg.Output[ArtifactRef]:
    """Copy the source documents into an immutable artifact."""
    return _snapshot(context, "source_documents", config.folder, "*", artifacts, lineage, config, required=False)


@dg.asset(
    group_name=GROUP,
    code_version=CLEANING_CODE,
    kinds={"jsonl"},
    description="Raw and synthetic examples after validation, fixes (CRLF, outer whitespace, markdown debris, leaked "
    "follow-up questions, dropped keys) and de-duplication. Every input line is either kept or listed in "
    "rejected.jsonl with its file, line and reasons; suspicious answers are flagged in report.json.",
)
def cleaned_examples(
    context: dg.AssetExecutionContext,
    config: CleaningConfig,
    raw_examples: ArtifactRef,
    synthetic_examples: ArtifactRef,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> dg.Output[ArtifactRef]:
    """Validate, fix and de-duplicate the raw and synthetic examples."""
    import json

    from ft_assets.dataset.prep import CLEANED_INDEX, REJECTED, PrepError, clean
    from ft_assets.dataset.snapshot import MANIFEST, snapshot_files
    from ft_assets.dataset.validate import CleanConfig

    manifest = json.loads(Path(raw_examples.path, MANIFEST).read_text())
    files = [*snapshot_files(Path(raw_examples.path)), synthetic_examples.file("examples.jsonl")]
    labels = [(Path(manifest["source"]) / f["name"]).as_posix() for f in manifest["files"]]
    labels.append("synthetic_examples/examples.jsonl")
    clean_config = CleanConfig(
        format=config.format,
        max_tokens=config.max_tokens,
        strip_markdown=config.strip_markdown,
        suspicious=config.suspicious,
    )
    with artifacts.stage("cleaned_examples") as staging:
        try:
            report = clean(files, staging, clean_config, labels=labels)
        except PrepError as error:
            raise dg.Failure(f"cleaned_examples: {error}") from error
        (staging / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        rejected = _rejected_sample(staging / REJECTED, report["by_reason"])
        preview = head_jsonl(staging / "cleaned.jsonl", 5)
        fixed, flagged = _fixed_and_flagged(staging / CLEANED_INDEX)
        ref = artifacts.publish(staging, "cleaned_examples")
    context.log.info(
        f"cleaned_examples: read {report['read']} = kept {report['kept']} + rejected {report['rejected']} "
        f"({report['duplicates']} duplicates)"
    )
    for warning in report["warnings"]:
        context.log.warning(f"cleaned_examples: {warning}")
    if report["quality"]:
        context.log.warning(f"cleaned_examples: suspicious rows flagged: {report['quality']} (see data_quality)")
    recorded = lineage.record(context, ref, [raw_examples, synthetic_examples], config)
    return dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata=reading_order(
            {
                "read": report["read"],
                "kept": report["kept"],
                "rejected": report["rejected"],
                "rejected_because": ", ".join(
                    f"{reason} {count}" for reason, count in sorted(report["by_reason"].items(), key=lambda kv: -kv[1])
                )
                or "nothing rejected",
                "duplicates": report["duplicates"],
                "fixed": fixed,
                "flagged": flagged,
                "from_synthetic": report["files"][-1]["kept"],
                "format": report["format"],
                "dagster/row_count": report["kept"],
            },
            {
                "rejects_by_reason": counts_table(report["by_reason"], "reason"),
                "rejected_rows": table(rejected, REJECTED_COLUMNS),
                "fixes": counts_table(report["fixes"], "fix"),
                "quality_flags": counts_table(report["quality"], "flag"),
                "data_quality": table(
                    [{**r, "flags": ", ".join(r["flags"])} for r in report["quality_rows"]],
                    {"file": "string", "line": "int", "flags": "string"},
                ),
                "per_file": table(report["files"], PER_FILE_COLUMNS),
                "rows_per_format": counts_table(report["formats"], "format"),
                "tokens_per_example": table([report["tokens"]], TOKEN_COLUMNS),
                "preview": chat_preview(preview),
                "settings": settings_table(config.model_dump()),
            },
            recorded=recorded,
        ),
    )


PER_FILE_COLUMNS = {"path": "string", "kind": "string", "read": "int", "kept": "int", "rejected": "int"}
REJECTED_COLUMNS = {"file": "string", "line": "int", "reasons": "string", "duplicate_of": "string", "raw": "string"}
TOKEN_COLUMNS = {"min": "int", "median": "float", "p90": "float", "max": "int", "total": "int"}
REJECTED_SHOWN = 20
REJECTED_SCAN_BYTES = 64 << 20  # stop looking for a rare reason's example after this much of rejected.jsonl


def _flaw(record: dict[str, Any]) -> str:
    """Return a rejected row's raw text as far as it shows the flaw: a window around a parse error, else its shape.

    ``rejected.jsonl`` keeps the whole raw line but not where the flaw is, so it is found again here:
    the position a JSON parser stops at, the first undecodable byte, or, for a row that parses but
    breaks the format, the row with its long strings shortened so that its keys and roles fit.
    """
    import json
    import re

    raw, reasons = record.get("raw", ""), record.get("reasons", [])
    if record.get("duplicate_of"):
        return raw  # the flaw is elsewhere: duplicate_of names the row it repeats
    if "blank_line" in reasons:
        return "⟦blank line⟧"
    if "invalid_utf8" in reasons and (bad := re.search(r"(?<!\\)\\x[0-9a-f]{2}", raw)):
        return excerpt(raw, bad.start(), bad.end())
    text = raw.removeprefix("\ufeff").rstrip("\r")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:  # a string never closed is flawed where the line ends
        return excerpt(text, len(text) if error.msg.startswith("Unterminated string") else error.pos)
    return raw if "invalid_json" in reasons else _shape(value)


def _shape(value: Any, budget: int = 150) -> str:
    """Return ``value`` as compact JSON, its strings cut to the longest length that keeps it within ``budget``."""
    import json

    def cut(item: Any, limit: int) -> Any:
        if isinstance(item, str) and len(item) > limit:
            return f"{item[:limit]}…({len(item)} chars)"
        if isinstance(item, list):
            return [cut(v, limit) for v in item]
        if isinstance(item, dict):
            return {k: cut(v, limit) for k, v in item.items()}
        return item

    text = ""
    for limit in (80, 40, 20, 10, 4):
        text = json.dumps(cut(value, limit), ensure_ascii=False, separators=(",", ":"))
        if len(text) <= budget:
            break
    return text


def _rejected_sample(path: Path, by_reason: dict[str, int], limit: int = REJECTED_SHOWN) -> list[dict[str, Any]]:
    """Return up to ``limit`` rejected rows, every reason shown when there is room, in input order.

    Reads ``rejected.jsonl`` only until each reason has its examples (at most ``REJECTED_SCAN_BYTES``).
    """
    import orjson

    wanted = {reason: min(count, limit) for reason, count in by_reason.items()}
    seen: dict[str, list[int]] = {reason: [] for reason in by_reason}
    rows: list[dict[str, Any]] = []
    scanned = 0
    with open(path, "rb") as handle:
        for line in handle:
            scanned += len(line)
            record = orjson.loads(line)
            useful = [r for r in record["reasons"] if len(seen.setdefault(r, [])) < wanted.get(r, limit)]
            if useful:
                for reason in useful:
                    seen[reason].append(len(rows))
                rows.append(record)
            if all(len(seen[r]) >= n for r, n in wanted.items()) or scanned > REJECTED_SCAN_BYTES:
                break
    chosen: list[int] = []
    queues = [list(seen[r]) for r in sorted(seen, key=lambda r: (-by_reason.get(r, 0), r))]
    while len(chosen) < limit and any(queues):
        for queue in queues:
            while queue and queue[0] in chosen:
                queue.pop(0)
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    shown = []
    for index in sorted(chosen):
        record = rows[index]
        duplicate_of = record.get("duplicate_of")
        shown.append(
            {
                "file": record["file"],
                "line": record["line"],
                "reasons": ", ".join(record["reasons"]),
                "duplicate_of": f"{duplicate_of['file']}:{duplicate_of['line']}" if duplicate_of else None,
                "raw": _flaw(record),
            }
        )
    return shown


def _fixed_and_flagged(index: Path) -> tuple[int, int]:
    """Return how many kept rows had at least one fix, and how many carry a data-quality flag."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = pq.read_table(index, columns=["fixes", "quality"])
    return tuple(  # type: ignore[return-value]
        int(pc.sum(pc.not_equal(columns[name], 0)).as_py() or 0) for name in ("fixes", "quality")
    )


def _split_metadata(ref: ArtifactRef, name: str, report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a split's figures and tables."""
    import numpy as np
    import pyarrow.parquet as pq

    members = pq.read_table(ref.file("members.parquet"), columns=["tokens"])
    tokens = members["tokens"].to_numpy()
    stats = {"min": 0, "median": 0, "p90": 0, "max": 0}
    if len(tokens):
        stats = {
            "min": int(tokens.min()),
            "median": float(np.median(tokens)),
            "p90": float(np.percentile(tokens, 90)),
            "max": int(tokens.max()),
        }
    figures = {
        "rows": members.num_rows,
        "groups": report["grouping"]["groups_per_split"][name],  # as grouping formed them
        "tokens_total": int(tokens.sum()),
        "dagster/row_count": members.num_rows,
    }
    tables = {
        "tokens_per_example": table([stats], {k: v for k, v in TOKEN_COLUMNS.items() if k != "total"}),
        "preview": chat_preview(head_jsonl(ref.file("data.jsonl"), 5)),
        "all_splits": table(
            [{"split": name, **report[name]} for name in SPLIT_ASSETS if name in report],
            {"split": "string", "rows": "int", "tokens": "int"},
        ),
    }
    return figures, tables


def _grouping_metadata(grouping: dict[str, Any]) -> dict[str, Any]:
    """Return the tables of how the rows were grouped before splitting (the same on every split)."""
    joined = [{"joined_by": name, **counts} for name, counts in grouping["joined_by"].items()]
    formed = {
        "groups formed": grouping["groups"],
        "groups in train / validation / test": " / ".join(str(n) for n in grouping["groups_per_split"].values()),
        "rows assigned by the user": grouping["user_assigned_rows"],
        "largest groups (rows)": ", ".join(str(size) for size in grouping["largest_groups"]) or "none",
        "group by answer": grouping["group_by_answer"],
        "near-duplicate threshold": grouping["near_duplicate_threshold"],
    }
    return {
        "grouping": table(joined, {"joined_by": "string", "pairs": "int", "rows": "int"}),
        "groups_formed": table(
            [{"measure": k, "value": str(v)} for k, v in formed.items()], {"measure": "string", "value": "string"}
        ),
    }


@dg.multi_asset(
    outs={
        asset: dg.AssetOut(
            group_name=GROUP,
            code_version=SPLIT_CODE,
            kinds={"jsonl"},
            is_required=False,  # a selection of some splits publishes only those
            description=f"The {name} split of cleaned_examples (data.jsonl, training format) with members.parquet: "
            "example id, group, source file and line of every row. Groups never straddle two splits.",
        )
        for name, asset in SPLIT_ASSETS.items()
    },
    can_subset=True,
)
def splits(
    context: dg.AssetExecutionContext,
    config: SplitsConfig,
    cleaned_examples: ArtifactRef,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> Iterator[dg.Output[ArtifactRef]]:
    """Group cleaned examples, then divide the groups into train, validation and test, deterministically for a seed."""
    import json
    from contextlib import ExitStack

    from ft_assets.dataset.prep import GroupConfig, SplitConfig, SplitError, split

    try:
        split_config = SplitConfig(
            seed=config.seed,
            ratios=tuple(config.ratios),  # type: ignore[arg-type]
            min_examples=config.min_examples,
        )
        group_config = GroupConfig(config.group_by_answer, config.near_duplicate_threshold)
    except ValueError as error:
        raise dg.Failure(f"splits: {error}") from error
    chosen = context.op_execution_context.selected_output_names
    selected = [(name, asset) for name, asset in SPLIT_ASSETS.items() if asset in chosen]
    with artifacts.scratch() as scratch:
        try:
            report = split(Path(cleaned_examples.path), scratch, split_config, group_config)
        except SplitError as error:
            raise dg.Failure(f"splits: {error}") from error
        grouping = report["grouping"]
        context.log.info(f"splits: {grouping['groups']} groups; joined by {grouping['joined_by']}")
        with ExitStack() as stack:  # all selected splits are staged before any is published
            staged = {asset: stack.enter_context(artifacts.stage(asset)) for _, asset in selected}
            for name, asset in selected:
                shutil.move(scratch / f"{name}.jsonl", staged[asset] / "data.jsonl")
                shutil.move(scratch / f"{name}.members.parquet", staged[asset] / "members.parquet")
                (staged[asset] / GROUPING).write_text(json.dumps(grouping, indent=2, sort_keys=True))
            refs = {asset: artifacts.publish(staged[asset], asset) for _, asset in selected}
    # Published folders are immutable and content-addressed: a kill before the outputs below leaves
    # complete, unreferenced versions that a rerun reuses. A split whose checks did not all pass
    # in this run is never loaded by another run (ft_assets.upstream).
    for name, asset in selected:
        ref = refs[asset]
        context.log.info(f"{asset}: {report[name]['rows']} rows -> {ref.path}")
        recorded = lineage.record(context, ref, [cleaned_examples], config, members_file=ref.file("members.parquet"))
        figures, tables = _split_metadata(ref, name, report)
        yield dg.Output(
            ref,
            output_name=asset,
            data_version=dg.DataVersion(ref.version),
            metadata=reading_order(figures, {**tables, **_grouping_metadata(grouping)}, recorded=recorded),
        )


MIN_TRAIN_EXAMPLES = 10


@dg.asset_check(
    asset="train_split", blocking=True, description=f"train_split holds at least {MIN_TRAIN_EXAMPLES} examples."
)
def train_split_has_enough_examples(train_split: ArtifactRef) -> dg.AssetCheckResult:
    """Fail when there is too little to train on."""
    import pyarrow.parquet as pq

    rows = pq.read_metadata(train_split.file("members.parquet")).num_rows
    return dg.AssetCheckResult(
        passed=rows >= MIN_TRAIN_EXAMPLES, metadata={"rows": rows, "minimum": str(MIN_TRAIN_EXAMPLES)}
    )


@dg.multi_asset_check(
    name="splits_do_not_overlap",
    specs=[
        dg.AssetCheckSpec(
            "splits_do_not_overlap",
            asset=asset,
            additional_deps=[other for other in SPLIT_ASSETS.values() if other != asset],
            blocking=True,
            description="No example id, group, normalized duplicate, grouped free-text answer or near-duplicate "
            "prompt is in two splits. On every split, so a leaking set blocks all three; a split made alone is "
            "compared with the other splits it would be used with.",
        )
        for asset in SPLIT_ASSETS.values()
    ],
    ins={asset: dg.AssetIn(asset) for asset in SPLIT_ASSETS.values()},
    can_subset=True,
)
def splits_do_not_overlap(
    context: dg.AssetCheckExecutionContext,
    train_split: ArtifactRef,
    validation_split: ArtifactRef,
    test_split: ArtifactRef,
) -> Iterator[dg.AssetCheckResult]:
    """Compare the members of the three splits pairwise; report the result on each selected split."""
    import json

    from ft_assets.dataset.prep import overlaps

    grouping = json.loads(test_split.file(GROUPING).read_text())
    folders = {"train": train_split.path, "validation": validation_split.path, "test": test_split.path}
    found = overlaps(folders, grouping["near_duplicate_threshold"])
    metadata = {f"{pair} {column}": count for (pair, column), count in found.items()} if found else {"overlaps": 0}
    versions = {split.asset: split.version for split in (train_split, validation_split, test_split)}
    for key in sorted(context.selected_asset_check_keys, key=lambda check: check.asset_key.to_user_string()):
        yield dg.AssetCheckResult(
            asset_key=key.asset_key,
            check_name=key.name,
            passed=not any(found.values()),
            metadata={**metadata, "compared_versions": dg.MetadataValue.json(versions)},
        )


def _format_valid_check(asset: str) -> dg.AssetChecksDefinition:
    """Return the ``format_valid`` check of one split (one check per split, so any split can be run alone)."""

    @dg.asset_check(
        asset=asset,
        name="format_valid",
        blocking=True,
        description=f"Every row of {asset} passes validation again, with no reject and no fix.",
    )
    def format_valid(split: ArtifactRef) -> dg.AssetCheckResult:
        from ft_assets.dataset.prep import revalidate

        report = revalidate(split.file("data.jsonl"))
        return dg.AssetCheckResult(
            passed=report["rejected"] == 0 and not report["fixes"],
            metadata={
                "rows": report["read"],
                "rejected": report["rejected"],
                "rejects_by_reason": counts_table(report["by_reason"], "reason"),
                "fixes": counts_table(report["fixes"], "fix"),
            },
        )

    return format_valid


SPLIT_FORMAT_CHECKS = [_format_valid_check(asset) for asset in SPLIT_ASSETS.values()]
