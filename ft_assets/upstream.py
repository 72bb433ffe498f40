"""Which version of an upstream asset a step loads: versions travel with the run.

A step loads the version its own run materialized (so concurrent runs on other data never mix
versions). When its run did not materialize the upstream asset, it loads the newest version
whose checks all ran in the run that made it, none failing blocking: a version whose blocking
checks failed, or whose checks were cut short or are still running, is never consumed. The
version and its folder come from the materialization Dagster recorded (its ``artifact``
metadata), never from a shared pointer.
"""

from __future__ import annotations

import json

import dagster as dg
from dagster._core.events import DagsterEventType

from ft_assets.artifacts import ArtifactRef

ARTIFACT_METADATA = "artifact"
CANDIDATES = 50  # newest materializations looked at


def artifact_metadata(ref: ArtifactRef) -> dict[str, dg.MetadataValue]:
    """Return the materialization metadata a later step loads ``ref`` from."""
    return {ARTIFACT_METADATA: dg.MetadataValue.json({"asset": ref.asset, "version": ref.version, "path": ref.path})}


def _ref(record: dg.EventLogRecord) -> ArtifactRef | None:
    materialization = record.asset_materialization
    value = materialization.metadata.get(ARTIFACT_METADATA) if materialization else None
    if value is None:
        return None
    data = value.value if isinstance(value, dg.JsonMetadataValue) else json.loads(str(value.value))
    return ArtifactRef(**data)


def made_in_run(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> ArtifactRef | None:
    """Return the artifact of ``key`` that run ``run_id`` materialized, if it did."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
    for record in reversed(records):
        if record.asset_key == key and (ref := _ref(record)) is not None:
            return ref
    return None


def checks_passed(instance: dg.DagsterInstance, run_id: str, key: dg.AssetKey) -> bool:
    """Tell whether every check planned on ``key`` in run ``run_id`` was evaluated, and none failed blocking.

    A check planned but never evaluated (the run was killed, or is still going) counts as not passed.
    """
    types = {DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, DagsterEventType.ASSET_CHECK_EVALUATION}
    planned, evaluated = set(), set()
    for record in instance.get_records_for_run(run_id, of_type=types).records:
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data if event else None
        if data is None or data.asset_key != key:
            continue
        if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED:
            planned.add(data.check_name)
        elif data.passed or data.blocking is False:  # an unknown blocking flag counts as blocking
            evaluated.add(data.check_name)
        else:
            return False
    return planned <= evaluated


def newest(instance: dg.DagsterInstance, key: dg.AssetKey) -> ArtifactRef | None:
    """Return the newest artifact of ``key``, whatever its checks said (what a check on ``key`` looks at)."""
    for record in instance.fetch_materializations(key, limit=CANDIDATES).records:
        if (ref := _ref(record)) is not None:
            return ref
    return None


def newest_passed(instance: dg.DagsterInstance, key: dg.AssetKey) -> ArtifactRef | None:
    """Return the newest artifact of ``key`` whose checks in the run that made it passed (``checks_passed``)."""
    for record in instance.fetch_materializations(key, limit=CANDIDATES).records:
        if (ref := _ref(record)) is not None and checks_passed(instance, record.run_id, key):
            return ref
    return None
