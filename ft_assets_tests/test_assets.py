import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ft_assets.definitions import defs
from ft_assets.lineage import queries
from ft_assets.lineage.store import connect
from ft_assets.lineage.sync import sync
from ft_assets_tests.conftest import ROOT
from ft_assets_tests.project_runs import local_resources

DATA_ASSETS = [
    "raw_examples",
    "source_documents",
    "synthetic_examples",
    "cleaned_examples",
    "train_split",
    "validation_split",
    "test_split",
]


@pytest.fixture
def project(tmp_path):
    shutil.copytree(ROOT / "data" / "raw", tmp_path / "raw")
    shutil.copytree(ROOT / "data" / "sources", tmp_path / "sources")
    return tmp_path


def _folders(project: Path) -> dict:
    return {
        "raw_examples": {"config": {"folder": str(project / "raw")}},
        "source_documents": {"config": {"folder": str(project / "sources")}},
    }


def _materialize(project: Path, instance: dg.DagsterInstance, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("data").execute_in_process(
        instance=instance, raise_on_error=raise_on_error, resources=local_resources(project),
        run_config={"ops": _folders(project)},
    )  # fmt: skip


def _versions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata["data_version"].value
        for event in result.get_asset_materialization_events()
    }


def test_data_job_materializes_data_assets_with_checks_and_lineage(project):
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(project, instance)
        assert result.success
        versions = _versions(result)
        assert set(versions) == set(DATA_ASSETS)
        checks = result.get_asset_check_evaluations()
        assert {(c.asset_key.to_user_string(), c.check_name) for c in checks} == {
            ("train_split", "train_split_has_enough_examples"),
            ("train_split", "splits_do_not_overlap"),
            ("validation_split", "splits_do_not_overlap"),
            ("test_split", "splits_do_not_overlap"),
            ("train_split", "format_valid"),
            ("validation_split", "format_valid"),
            ("test_split", "format_valid"),
        }
        assert all(c.passed for c in checks)
        cleaned = next(
            e.step_materialization_data.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "cleaned_examples"
        )
        assert cleaned["read"].value == cleaned["kept"].value + cleaned["rejected"].value
        reasons = {r.data["reason"] for r in cleaned["rejects_by_reason"].records}
        assert "example_missing_assistant_message" in reasons
        splits = {
            e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key.to_user_string().endswith("_split")
        }
        # each split counts the groups grouping formed in it: together, every group formed
        formed = {r.data["measure"]: r.data["value"] for r in splits["train_split"]["groups_formed"].records}
        assert sum(m["groups"].value for m in splits.values()) == int(formed["groups formed"])
        for asset, version in versions.items():
            assert (project / "artifacts" / asset / version).is_dir()

        db = project / "lineage.duckdb"
        upstream = {r["asset"] for r in queries.trace(db, "train_split")}
        assert {"cleaned_examples", "raw_examples", "synthetic_examples", "source_documents"} <= upstream
        assert "file:" + (project / "raw" / "invoices_2026_h1.jsonl").as_posix() in upstream
        with connect(db, read_only=True) as connection:
            members = connection.execute(
                "SELECT asset, count(*) FROM members WHERE data_version IN (?, ?, ?) GROUP BY asset",
                [versions["train_split"], versions["validation_split"], versions["test_split"]],
            ).fetchall()
            before = connection.execute("SELECT count(*) FROM members").fetchone()
        assert sum(n for _, n in members) == cleaned["kept"].value

        db.unlink()
        counts = sync(instance, db)
        assert counts["materializations"] == len(DATA_ASSETS)
        with connect(db, read_only=True) as connection:
            assert connection.execute("SELECT count(*) FROM members").fetchone() == before
        assert {r["asset"] for r in queries.trace(db, "train_split")} == upstream


def _chat_line(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


def test_cleaned_examples_metadata_reads_figures_first_rejects_with_their_flaw_and_lineage_last(tmp_path):
    """The asset page opens on the counts; rejected rows show why (around a parse error) and what they repeat."""
    long_question = "Summarise the attached supplier invoice for the finance team, keeping only the vendor. " * 3
    lines = [_chat_line(f"Invoice {i}: {long_question}", f"Vendor: Supplier {i}") for i in range(12)]
    lines.append(lines[2])  # line 13: an exact duplicate of line 3
    broken = _chat_line(long_question, "x").replace('"role": "assistant"', '"role" "assistant"')
    lines.append(broken)  # line 14: a colon missing, 270 characters in
    lines.append(json.dumps({"messages": [{"role": "user", "content": "No answer here"}]}))  # line 15
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "invoices.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "sources").mkdir()
    selection = {"raw_examples", "source_documents", "synthetic_examples", "cleaned_examples"}
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey(name) for name in selection}
    )
    config = {**_folders(tmp_path), "synthetic_examples": {"config": {"max_sources": 0}}}
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance, resources=local_resources(tmp_path), run_config={"ops": config}
        )
    assert result.success
    metadata = next(
        e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "cleaned_examples"
    )
    keys = list(metadata)
    assert keys[:3] == ["read", "kept", "rejected"], keys
    first_table = next(i for i, key in enumerate(keys) if isinstance(metadata[key], dg.TableMetadataValue))
    assert all(isinstance(metadata[k], dg.IntMetadataValue | dg.FloatMetadataValue | dg.TextMetadataValue)
               for k in keys[:first_table]), "figures first, then tables"  # fmt: skip
    assert {"duplicates", "fixed", "format"} <= set(keys[:first_table])
    assert (metadata["read"].value, metadata["kept"].value, metadata["rejected"].value) == (15, 12, 3)
    assert keys[-1] == "lineage", "the lineage record comes last"
    assert keys.index("lineage_query") < keys.index("lineage")
    assert metadata["lineage_query"].value.startswith("ft-assets lineage trace cleaned_examples@")

    rejected = metadata["rejected_rows"]
    assert isinstance(rejected, dg.TableMetadataValue)
    assert [c.name for c in rejected.schema.columns] == ["file", "line", "reasons", "duplicate_of", "raw"]
    rows = {r.data["line"]: r.data for r in rejected.records}
    label = (tmp_path / "raw" / "invoices.jsonl").as_posix()
    assert rows[13]["reasons"] == "exact_duplicate" and rows[13]["duplicate_of"] == f"{label}:3"
    assert rows[14]["reasons"] == "invalid_json" and rows[14]["duplicate_of"] is None
    assert '{"role" ⟦"⟧assistant", "content": "x"}]}' in rows[14]["raw"], "the flaw shows, 270 characters in"
    assert rows[15]["reasons"] == "example_missing_assistant_message"
    assert '"role":"user"' in rows[15]["raw"]
    assert all(len(r.data["raw"]) <= 160 for r in rejected.records)


def test_versions_follow_content(project):
    with dg.DagsterInstance.ephemeral() as instance:
        first = _versions(_materialize(project, instance))
        again = _versions(_materialize(project, instance))
        assert first == again
        with open(project / "raw" / "invoices_2026_h2.jsonl", "a") as handle:
            handle.write(
                '{"id": "inv-new", "messages": [{"role": "user", "content": "Invoice from Gasline, total 12.00"},'
                ' {"role": "assistant", "content": "Category: Utilities\\nVendor: Gasline"}]}\n'
            )
        changed = _versions(_materialize(project, instance))
        assert changed["raw_examples"] != first["raw_examples"]
        assert changed["cleaned_examples"] != first["cleaned_examples"]
        assert changed["source_documents"] == first["source_documents"]
        assert (project / "artifacts" / "raw_examples" / first["raw_examples"]).is_dir(), "old versions stay"


def test_missing_raw_folder_fails_with_a_clear_message(project):
    shutil.rmtree(project / "raw")
    with dg.DagsterInstance.ephemeral() as instance:
        result = _materialize(project, instance, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("raw_examples")
    assert "does not exist" in failure.error.message


def test_definitions_load_without_heavy_imports():
    code = (
        "import sys, ft_assets.definitions; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert output == ""


def test_dagster_validates_the_workspace():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "DAGSTER_HOME": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


@pytest.mark.parametrize("selection", ["train_split", "*azure_finetune_job"])
def test_any_asset_runs_alone_or_with_its_upstream(project, selection):
    """A split alone (its siblings and their checks left out) and an asset with everything upstream both run."""
    with dg.DagsterInstance.ephemeral() as instance:
        assert _materialize(project, instance).success
        keys = dg.AssetSelection.from_coercible(selection).resolve(defs.resolve_asset_graph())
        job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(keys))
        ops = _folders(project) if selection.startswith("*") else {}
        result = job.execute_in_process(instance=instance, resources=local_resources(project), run_config={"ops": ops})
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    if selection == "train_split":
        assert materialized == {"train_split"}
        checks = {c.check_name for c in result.get_asset_check_evaluations()}
        assert checks == {"format_valid", "train_split_has_enough_examples", "splits_do_not_overlap"}
    else:
        assert {"cleaned_examples", "train_split", "validation_split"} <= materialized
        assert "test_split" not in materialized, "azure_training_files reads train and validation only"
        assert "azure_finetune_job" not in materialized, "without credentials the Azure assets skip"
