"""Dagster resources: the artifact store, the lineage store and the IO manager that passes artifacts."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from ft_assets.artifacts import ArtifactRef, find_by_inputs, publish, remember_inputs, staging, work_folder
from ft_assets.defaults import LINEAGE_DB as DEFAULT_LINEAGE_DB


class ArtifactStore(dg.ConfigurableResource):
    """Folder of immutable, content-addressed artifacts: ``<root>/<asset>/<data_version>/``."""

    root: str = "data/artifacts"

    @contextmanager
    def stage(self, asset: str) -> Iterator[Path]:
        """Yield a staging folder for ``asset``; removed when the block fails or after publishing."""
        with staging(self.root, asset) as folder:
            yield folder

    @contextmanager
    def scratch(self, asset: str = "") -> Iterator[Path]:
        """Yield a hidden scratch folder beside ``asset``'s artifacts (default: the root); removed at the end."""
        with work_folder(Path(self.root) / asset, ".scratch-") as folder:
            yield folder

    def publish(self, folder: Path, asset: str, reports: Iterable[str] = ()) -> ArtifactRef:
        """Hash the staging folder (``reports`` left out of the version) and move it into place."""
        return publish(folder, asset, reports)

    def made_from(self, asset: str, key: str) -> ArtifactRef | None:
        """Return the artifact of ``asset`` already made from the inputs with this key, if any."""
        return find_by_inputs(self.root, asset, key)

    def remember(self, asset: str, key: str, ref: ArtifactRef) -> None:
        """Note that ``ref`` was made from the inputs with this key, so a rerun can reuse it."""
        remember_inputs(self.root, asset, key, ref)


class LineageStore(dg.ConfigurableResource):
    """The DuckDB lineage database. Every write opens a short connection and retries on locks."""

    path: str = DEFAULT_LINEAGE_DB
    lock_timeout_s: float = 120.0

    def record(
        self,
        context: dg.AssetExecutionContext,
        ref: ArtifactRef,
        parents: list[ArtifactRef | tuple[str, str]],
        config: dg.Config | dict[str, Any] | None = None,
        members_file: Path | None = None,
        device: str | None = None,
    ) -> dict[str, Any]:
        """Record a materialization with its parents, members, library versions and device (where one ran it).

        Returns the closing metadata entries, in reading order (pass them as ``recorded`` to
        ``ft_assets.metadata.reading_order``, which puts them last): ``data_version``, ``path``, ``lineage_query`` (the
        ``ft-assets lineage`` command that answers for this version), ``artifact`` (the reference the IO manager
        adds again, in place, so it does not land after the record) and ``lineage``, the JSON record that
        ``sync`` redoes it from, last.
        """
        from ft_assets.lineage.environment import library_versions
        from ft_assets.lineage.store import Materialization, record

        key = dg.AssetKey(ref.asset)
        config_dict = config.model_dump() if isinstance(config, dg.Config) else dict(config or {})
        materialization = Materialization(
            asset=ref.asset,
            data_version=ref.version,
            code_version=context.assets_def.code_versions_by_key.get(key),
            run_id=context.run.run_id,
            path=ref.path,
            config=config_dict,
            parents=[(p.asset, p.version) if isinstance(p, ArtifactRef) else tuple(p) for p in parents],
            members_file=str(members_file) if members_file else None,
            libraries=library_versions(),
            device=device,
        )
        members = None
        if members_file is not None:
            import pyarrow.parquet as pq

            members = pq.read_table(members_file)
        record(self.path, materialization, members)
        from ft_assets.upstream import artifact_metadata

        target = f"{ref.asset}@{ref.version}"
        db = "" if self.path == DEFAULT_LINEAGE_DB else f" --db {shlex.quote(self.path)}"
        return {
            "data_version": ref.version,
            "path": dg.MetadataValue.path(ref.path),
            "lineage_query": f"ft-assets lineage trace {target}{db} (what it was made from) · "
            f"ft-assets lineage impact {target}{db} (what was made from it)",
            **artifact_metadata(ref),
            "lineage": dg.MetadataValue.json(materialization.to_dict()),
        }

    def record_evaluations(self, rows: list[dict[str, Any]]) -> None:
        """Write evaluation rows (one per model version and test split version) to the ``evaluations`` table."""
        from datetime import UTC, datetime

        from ft_assets.lineage.store import record_evaluations

        now = datetime.now(UTC).isoformat()
        record_evaluations(self.path, [{"created_at": now, **row} for row in rows])

    def record_predictions(self, rows: list[dict[str, Any]]) -> None:
        """Write per-example predictions to the ``predictions`` table."""
        from ft_assets.lineage.store import record_predictions

        record_predictions(self.path, rows)

    def record_fine_tune_metrics(self, model_version: str, job_id: str, rows: list[dict[str, Any]]) -> None:
        """Write the per-step metrics of a fine-tuned model version to the ``fine_tune_metrics`` table."""
        from ft_assets.lineage.store import record_fine_tune_metrics

        record_fine_tune_metrics(self.path, model_version, job_id, rows)


class ArtifactIOManager(dg.ConfigurableIOManager):
    """Passes ``ArtifactRef``s between assets through the materializations Dagster records.

    An output's reference goes into its materialization metadata; an input is the version its
    own run made, else the newest version whose checks passed (``ft_assets.upstream``).
    """

    root: str = "data/artifacts"

    def handle_output(self, context: dg.OutputContext, obj: ArtifactRef) -> None:
        """Record where the artifact lies in the materialization's metadata."""
        from ft_assets.upstream import artifact_metadata

        context.add_output_metadata(artifact_metadata(obj))

    def load_input(self, context: dg.InputContext) -> ArtifactRef:
        """Return the upstream artifact this run made, or the newest one that passed its checks.

        A check run on its own looks at the newest version of the asset it checks, whatever that
        version's checks said before; a re-execution uses what its parent runs made, if it passed.
        """
        from ft_assets.upstream import checks_passed, made_in_run, newest, newest_passed

        key, step = context.asset_key, context.step_context
        instance, run = step.instance, step.dagster_run
        ref = made_in_run(instance, run.run_id, key)
        parent = run.parent_run_id
        while ref is None and parent is not None:  # a re-execution: what its parent runs made
            ref = made_in_run(instance, parent, key)
            if ref is not None and not checks_passed(instance, parent, key):
                context.log.warning(f"{key.to_user_string()}: the parent run's version did not pass its checks")
                ref = None
                break
            parent_run = instance.get_run_by_id(parent)
            parent = parent_run.parent_run_id if parent_run else None
        if ref is None and _checks_only(step, key):
            ref = newest(instance, key)  # a check-only step judges the newest version
        if ref is None:
            ref = newest_passed(instance, key)
            if ref is None:
                raise dg.Failure(
                    f"{key.to_user_string()} has no materialized version whose checks passed: materialize it first"
                )
        if not Path(ref.path).exists():
            raise dg.Failure(f"artifact folder {ref.path} of {key.to_user_string()} is gone: re-materialize it")
        context.log.debug(f"{key.to_user_string()}: loading version {ref.version}")
        return ref


def _checks_only(step: Any, key: dg.AssetKey) -> bool:
    """Tell whether ``step`` runs checks only, one of them on ``key``."""
    entities = step.job_def.asset_layer.get_selected_entity_keys_for_node(step.node_handle)
    checks = [entity for entity in entities if isinstance(entity, dg.AssetCheckKey)]
    return bool(checks) and len(checks) == len(entities) and key in {check.asset_key for check in checks}


def _from_env(name: str) -> dg.EnvVar | None:
    """Return ``EnvVar(name)`` when the variable is set, else None (so an unset variable means 'not configured')."""
    return dg.EnvVar(name) if os.environ.get(name) else None


class LLMResource(dg.ConfigurableResource):
    """Azure OpenAI, OpenAI or an OpenAI-compatible server, through the real ``openai`` client.

    Credentials come only from environment variables (``from_environment``): the key is never
    logged, stored in metadata or written to an artifact. With none set, assets that need a
    model skip or fall back to their offline path, naming the variables to set.
    """

    azure_endpoint: str | None = Field(None, description="AZURE_OPENAI_ENDPOINT")
    api_key: str | None = Field(None, description="AZURE_OPENAI_API_KEY, or OPENAI_API_KEY without an Azure endpoint")
    api_version: str | None = Field(None, description="OPENAI_API_VERSION (Azure)")
    base_url: str | None = Field(None, description="OPENAI_BASE_URL: an OpenAI-compatible server (vLLM, Ollama)")
    use_entra_id: bool = Field(False, description="Azure: authenticate with Entra ID (azure-identity) instead of a key")
    timeout_s: float = Field(60.0, description="Timeout of one request")
    chat_model: str = Field("gpt-4o-mini", description="Model (Azure: deployment) that generates synthetic data")
    input_usd_per_1m: float = Field(0.15, description="Price of a million input tokens of chat_model")
    output_usd_per_1m: float = Field(0.60, description="Price of a million output tokens of chat_model")
    cache_dir: str = Field("data/cache/llm", description="Folder of cached responses (a repeated request is free)")

    @classmethod
    def from_environment(cls, **overrides: Any) -> LLMResource:
        """Build the resource from the standard environment variables (as ``EnvVar``s, never their values)."""
        azure = _from_env("AZURE_OPENAI_ENDPOINT")
        key = _from_env("AZURE_OPENAI_API_KEY") if azure else _from_env("OPENAI_API_KEY")
        values: dict[str, Any] = {
            "azure_endpoint": azure,
            "api_key": key,
            "api_version": _from_env("OPENAI_API_VERSION"),
            "base_url": None if azure else _from_env("OPENAI_BASE_URL"),
        }
        return cls(**{**values, **overrides})

    def client_settings(self) -> Any:
        """Return the pure client settings (``ft_assets.llm.client.ClientSettings``)."""
        from ft_assets.llm.client import ClientSettings

        provider = None
        if self.use_entra_id and self.azure_endpoint and not self.api_key:
            provider = _entra_id_token_provider()
        return ClientSettings(
            azure_endpoint=self.azure_endpoint,
            api_key=self.api_key,
            api_version=self.api_version,
            base_url=self.base_url,
            token_provider=provider,
            timeout_s=self.timeout_s,
        )


def _entra_id_token_provider() -> Any:
    try:
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider
    except ImportError as error:
        raise dg.Failure("use_entra_id needs azure-identity: pip install azure-identity") from error
    return get_bearer_token_provider(DefaultAzureCredential(), "https://cognitiveservices.azure.com/.default")
