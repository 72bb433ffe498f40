"""Retraining by itself: watched sources, the retrain policy and Dagster's declarative automation.

- ``raw_data`` and ``base_model_source`` are observable source assets whose data version is a
  content hash (``ft_assets.watch``). The main job observes them first, so what it trains from is
  recorded; the ``watch_sources`` sensor observes them every 30 s and records an observation only
  when a version changed: watching launches no run, and touching a file changes nothing. Each tick
  logs (the tick's "View logs") every source's version, whether it changed, and what the policy
  does next.
- Every asset of the main job gets the condition of the retrain policy (``RetrainPolicy``):
  ``on_change`` requests it as soon as something upstream changed, a cron expression only at that
  tick and only if something changed since it was last requested or materialized. An asset never
  materialized is left to the main job (the first training is a user's choice), and nothing is
  requested while an upstream run is in flight. Checks ride along with their assets.
- The ``retraining`` automation sensor evaluates those conditions; it runs by default (the Automation
  page shows each tick and, per asset, which part of the condition held: the labels read as reasons;
  being Dagster's own sensor, it writes no tick log). Its runs carry the
  ``ft_assets/retraining`` tag, limited to one at a time in dagster.yaml, like the main job's runs.
"""

import functools
import operator
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG, extract_data_version_from_entry
from dagster._utils.warnings import disable_dagster_warnings

from ft_assets.code_versions import source_version
from ft_assets.defaults import BASE_MODEL_ENV, BUILTIN_SOURCE, RAW_FOLDER, RAW_FOLDER_ENV, RAW_PATTERN, raw_folder
from ft_assets.watch import HashCache, Observation, base_model_version, folder_version

POLICY_ENV = "FT_ASSETS_RETRAIN_POLICY"
ON_CHANGE = "on_change"
OFF = "off"
RETRAINING_TAG = "ft_assets/retraining"
RAW_DATA = dg.AssetKey("raw_data")
BASE_MODEL_SOURCE = dg.AssetKey("base_model_source")
HASH_CACHE = Path("data/cache/watch-hashes.json")
SENSOR_INTERVAL_S = 30
SETTLE_S = 2.0  # a file modified this recently may still be being written: look again next tick
# Azure assets skip without credentials: never wait for them, never count them missing.
AZURE = dg.AssetSelection.groups("azure").downstream()


@dataclass(frozen=True)
class RetrainPolicy:
    """When automation retrains: on any upstream change (``cron`` None), at cron ticks, or never (``enabled`` False)."""

    cron: str | None = None
    enabled: bool = True

    @classmethod
    def parse(cls, value: str | None) -> Self:
        """Parse ``on_change`` (also empty or None), ``off`` or a cron expression such as ``0 3 * * *`` (UTC)."""
        from dagster._utils.schedules import is_valid_cron_schedule

        text = (value or "").strip()
        if text in ("", ON_CHANGE):
            return cls()
        if text == OFF:
            return cls(enabled=False)
        if is_valid_cron_schedule(text):
            return cls(cron=text)
        raise ValueError(
            f"{POLICY_ENV}={value!r} is not a retrain policy: use '{ON_CHANGE}' (the default), '{OFF}', "
            "or a cron expression such as '0 3 * * *' (UTC)"
        )

    @classmethod
    def from_environment(cls) -> Self:
        """Return the policy named by ``FT_ASSETS_RETRAIN_POLICY`` (``on_change`` when unset)."""
        return cls.parse(os.environ.get(POLICY_ENV))

    def __str__(self) -> str:
        if not self.enabled:
            return OFF
        return f"cron '{self.cron}' (UTC)" if self.cron else ON_CHANGE

    def condition(self) -> dg.AutomationCondition:
        """Return the automation condition of every retrained asset under this policy.

        Its labels are what the Automation page shows per asset and tick, so each reads as a reason.
        """
        condition = dg.AutomationCondition
        changed = (
            condition.any_deps_updated()
            .since_last_handled()
            .with_label("something upstream changed since this asset was last requested or materialized")
        )
        guards = [
            (~condition.missing()).with_label("materialized once already (the main job makes the first version)"),
            (~condition.any_deps_missing().ignore(AZURE)).with_label("every upstream asset exists"),
            (~condition.any_deps_in_progress().ignore(AZURE)).with_label("no upstream asset is being materialized"),
            (~condition.in_progress()).with_label("no run of this asset is in progress"),
        ]
        if self.cron:
            tick = condition.cron_tick_passed(self.cron).with_label(f"the cron tick '{self.cron}' (UTC) has passed")
            return functools.reduce(operator.and_, [tick, changed, *guards]).with_label(
                f"retrain policy {self}: retrain at the cron tick if something upstream changed"
            )
        return functools.reduce(operator.and_, [changed, *guards]).with_label(
            "retrain policy on_change: retrain when something upstream changed"
        )

    def next_step(self, retraining: bool = True) -> str:
        """Return, as a sentence, what happens after a watched source changed under this policy."""
        if not self.enabled:
            return (
                f"Retrain policy off ({POLICY_ENV}): nothing will be retrained; materialize the main job by hand "
                "(ft-assets run)."
            )
        when = "at the next tick of that schedule" if self.cron else "on its next tick"
        if not retraining:
            return (
                f"Under retrain policy {self}, nothing made from it has been materialized yet, so nothing will be "
                "retrained: the main job makes the first version (ft-assets run)."
            )
        return (
            f"Under retrain policy {self}, the retraining sensor will request the main job's assets made from it "
            f"{when}; the Automation page shows its reason for each asset."
        )


@functools.cache
def _hash_cache() -> HashCache:
    """Return this process's file hash cache (loaded once, kept up to date in memory and on disk)."""
    return HashCache.load(HASH_CACHE)


def observe_raw_data(folder: str | None = None, cache: HashCache | None = None) -> Observation:
    """Return the content version of the raw example files (what ``raw_examples`` snapshots by default)."""
    return folder_version(Path(folder or raw_folder()), RAW_PATTERN, cache or _hash_cache())


def observe_base_model(source: str | None = None, cache: HashCache | None = None) -> Observation:
    """Return the version of the base model source (``FT_ASSETS_BASE_MODEL``, default builtin)."""
    return base_model_version(source or os.environ.get(BASE_MODEL_ENV, BUILTIN_SOURCE), cache or _hash_cache())


WATCHED: dict[dg.AssetKey, Callable[[], Observation]] = {
    RAW_DATA: observe_raw_data,
    BASE_MODEL_SOURCE: observe_base_model,
}


def watched_source(context: dg.AssetExecutionContext) -> Iterator[dg.ObserveResult]:
    """Observe the content version of one watched source."""
    found = WATCHED[context.asset_key]()
    yield dg.ObserveResult(
        asset_key=context.asset_key, data_version=dg.DataVersion(found.version), metadata=found.metadata
    )


WATCH_CODE = source_version(__name__, "watched_source")


def _observable(key: dg.AssetKey, group: str, description: str) -> dg.AssetsDefinition:
    """Return the observable source asset of a watched source (an AssetsDefinition, so specs can be mapped)."""
    spec = dg.AssetSpec(key, group_name=group, description=description, code_version=WATCH_CODE)
    with disable_dagster_warnings():  # multi_observable_source_asset is beta
        return dg.multi_observable_source_asset(specs=[spec], name=key.to_python_identifier())(watched_source)


raw_data = _observable(
    RAW_DATA,
    "data",
    f"The raw example files ({RAW_PATTERN} under {RAW_FOLDER_ENV}, default {RAW_FOLDER}), watched: the data "
    "version is a hash of their content (touching a file changes nothing). raw_examples snapshots them.",
)
base_model_source = _observable(
    BASE_MODEL_SOURCE,
    "training",
    f"The base model source ({BASE_MODEL_ENV}, default builtin), watched: 'builtin', a local folder's content hash "
    "or a hub id's revision in the local cache (nothing is downloaded).",
)
WATCHED_SOURCES = dg.AssetSelection.assets(RAW_DATA, BASE_MODEL_SOURCE)


def latest_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str | None:
    """Return the data version of the newest observation of ``key``, if any."""
    record = instance.get_latest_data_version_record(key, is_source=True)
    version = extract_data_version_from_entry(record.event_log_entry) if record else None
    return version.value if version else None


def _anything_made_from(context: dg.SensorEvaluationContext, key: dg.AssetKey) -> bool:
    """Return whether any asset made directly from ``key`` has been materialized (True when the graph is unknown)."""
    repository = context.repository_def
    if repository is None or not repository.asset_graph.has(key):
        return True
    children = repository.asset_graph.get(key).child_keys
    return not children or any(context.instance.get_latest_materialization_event(child) for child in children)


def watch_sources_sensor(policy: RetrainPolicy | None = None) -> dg.SensorDefinition:
    """Return the ``watch_sources`` sensor; its tick log names what happens next under ``policy``.

    ``policy`` None reads ``FT_ASSETS_RETRAIN_POLICY`` at each tick.
    """

    @dg.sensor(
        name="watch_sources",
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Hash the raw example files and the base model source; record an observation of raw_data or "
        "base_model_source only when its content changed. Launches no run: the retraining sensor decides. Each "
        "tick's log (View logs) says what it found and what happens next.",
    )
    def watch_sources(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        """Record an observation for each watched source whose content version changed; log why, in sentences."""
        current = RetrainPolicy.from_environment() if policy is None else policy
        events, unchanged = [], []
        for key, observe in WATCHED.items():
            name = key.to_user_string()
            found = observe()
            recorded = latest_version(context.instance, key)
            age = time.time() - found.newest_mtime
            if age < SETTLE_S:
                unchanged.append(f"{name} (still being written)")
                context.log.info(
                    f"{name} is still being written (a file changed {age:.1f} s ago): no observation is recorded "
                    f"yet; it is looked at again on the next tick, in {SENSOR_INTERVAL_S} s."
                )
            elif found.version == recorded:
                unchanged.append(f"{name} {found.version}")
                context.log.info(
                    f"{name} is unchanged (version {found.version}): no observation is recorded and there is "
                    "nothing new to retrain from."
                )
            else:
                events.append(
                    dg.AssetObservation(asset_key=key, metadata=found.metadata, tags={DATA_VERSION_TAG: found.version})
                )
                what = (
                    f"{name} is observed for the first time (version {found.version})"
                    if recorded is None
                    else f"{name} changed ({recorded} → {found.version})"
                )
                retraining = current.enabled and _anything_made_from(context, key)
                context.log.info(f"{what}; an observation is recorded. {current.next_step(retraining)}")
        if not events:
            return dg.SensorResult(skip_reason=f"unchanged: {', '.join(unchanged)}")
        # A tick with observations and no run shows as skipped: say why instead of "returned an empty result".
        recorded_now = ", ".join(f"{e.asset_key.to_user_string()} {e.tags[DATA_VERSION_TAG]}" for e in events)
        return dg.SensorResult(
            asset_events=events,
            skip_reason=f"recorded {recorded_now}; this sensor launches no run (retrain policy {current})",
        )

    return watch_sources


watch_sources = watch_sources_sensor()


def automate(defs: dg.Definitions, target: dg.AssetSelection, policy: RetrainPolicy | None = None) -> dg.Definitions:
    """Give the materializable assets of ``target`` the policy's condition; add the watch and retraining sensors.

    ``policy`` defaults to ``FT_ASSETS_RETRAIN_POLICY``; with ``off`` the sources are still watched
    (the UI shows what is stale) but nothing is requested.
    """
    policy = RetrainPolicy.from_environment() if policy is None else policy
    sensors: list[dg.SensorDefinition] = [watch_sources_sensor(policy)]
    if policy.enabled:
        retrained = target.materializable()
        condition = policy.condition()
        with disable_dagster_warnings():  # map_resolved_asset_specs is in preview
            defs = defs.map_resolved_asset_specs(
                func=lambda spec: spec.replace_attributes(automation_condition=condition), selection=retrained
            )
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "retraining",
                target=retrained,
                default_status=dg.DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=SENSOR_INTERVAL_S,
                run_tags={RETRAINING_TAG: "automation"},
                description=f"Retrain policy: {policy} ({POLICY_ENV}). Requests the main job's assets when raw_data "
                "or base_model_source (or anything upstream) changed; one retraining at a time. This sensor writes "
                "no tick log: its reasons are on the Automation page (each tick, each asset, which part of the "
                "condition held), and watch_sources' tick log says what changed.",
            )
        )
    return dg.Definitions.merge(defs, dg.Definitions(sensors=sensors))
