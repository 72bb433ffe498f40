"""Helpers of the browser tests: find Chromium, run `dagster dev` on a fresh project, read what the UI should show."""

from __future__ import annotations

import contextlib
import decimal
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets_tests.conftest import ROOT
from ft_assets_tests.project_runs import instance_at, make_project
from ft_assets_tests.test_ui import Webserver, _free_port, _wait_until_up, graphql

DAGSTER = Path(sys.executable).parent / "dagster"
CHROMIUM_ENV = "FT_ASSETS_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
NO_BROWSER = (
    "no Chromium found: install it (apt-get install -y chromium, or brew install --cask chromium) or set "
    f"{CHROMIUM_ENV} to a Chrome/Chromium binary to run the browser tests"
)
# What the project's run must not see: settings that would reach a cloud or move its files out of the project.
PRIVATE_ENV_PREFIXES = ("FT_ASSETS_", "AZURE_OPENAI_", "OPENAI_")
STOP_GRACE_S = 20.0


def find_chromium() -> str | None:
    """Return the Chrome/Chromium binary to drive: ``FT_ASSETS_CHROMIUM`` or the first one on PATH."""
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        found = shutil.which(named) or (named if Path(named).is_file() else None)
    else:
        found = next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)
    return found if found and _runs(found) else None


def _runs(binary: str) -> bool:
    """Return whether ``binary --version`` answers (a snap stub or a broken install does not)."""
    try:
        return subprocess.run([binary, "--version"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def fresh_project(folder: Path) -> Path:
    """Lay out a project like a fresh clone (data/raw, data/sources, dagster.yaml and workspace.yaml)."""
    make_project(folder)
    shutil.copy(ROOT / "workspace.yaml", folder / "workspace.yaml")
    return folder


def _default_sigint() -> None:
    # A process started in the background of a non-interactive shell inherits SIGINT ignored; `dagster dev` maps
    # SIGTERM to its SIGINT handler, so it would then ignore SIGTERM too. Give it the default handler back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_dagster_dev(project: Path, timeout_s: float = 120.0) -> Webserver:
    """Start `dagster dev -w workspace.yaml` in ``project`` (DAGSTER_HOME too), its own process group; wait until up."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(PRIVATE_ENV_PREFIXES)}
    env |= {"DAGSTER_HOME": str(project), "PYTHONUNBUFFERED": "1"}
    port = _free_port()
    log = project / "dagster-dev.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,  # noqa: PLW1509 (no threads of ours run while it forks)
        )
    server = Webserver(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        _wait_until_up(server, time.monotonic() + timeout_s)
    except BaseException:
        stop_dagster_dev(process)
        raise
    return server


def stop_dagster_dev(process: subprocess.Popen) -> None:
    """SIGTERM `dagster dev` (it shuts its webserver, daemon and code server down), then SIGKILL what is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the group outlives its leader: code server, run workers
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def location_name(url: str) -> str:
    """Return the name of the one code location the webserver serves."""
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
    entries = graphql(url, query)["workspaceOrError"]["locationEntries"]
    assert len(entries) == 1, entries
    return entries[0]["name"]


def run_status(url: str, run_id: str) -> str:
    """Return a run's status as the webserver reports it (QUEUED, STARTED, SUCCESS, FAILURE, ...)."""
    query = f'{{ runOrError(runId: "{run_id}") {{ __typename ... on Run {{ status }} }} }}'
    found = graphql(url, query)["runOrError"]
    return found.get("status", found["__typename"])


def run_errors(home: Path, run_id: str) -> str:
    """Return the step and run failures a run recorded, one per line, with their error messages."""
    from dagster._core.events import DagsterEventType

    lines = []
    with instance_at(home) as instance:
        for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}):
            error = getattr(getattr(entry.dagster_event, "event_specific_data", None), "error", None)
            lines.append(f"{entry.step_key or 'run'}: {entry.message} {error.to_string() if error else ''}".strip())
    return "\n".join(lines)


def latest_metadata(home: Path, asset: str) -> dict[str, dg.MetadataValue]:
    """Return the metadata of the newest materialization of ``asset`` (what the asset page shows)."""
    with instance_at(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None and event.asset_materialization is not None, f"{asset} was never materialized"
    return dict(event.asset_materialization.metadata)


def records(value: dg.MetadataValue) -> list[dict[str, Any]]:
    """Return the rows of a table metadata value (``TableMetadataValue``, which the UI shows inline)."""
    assert isinstance(value, dg.TableMetadataValue), (
        f"expected a typed table (TableMetadataValue, shown inline), got {type(value).__name__}"
    )
    return [record.data for record in value.records]


def shown(value: Any) -> str:
    """Return a value as the UI prints it: JavaScript's ``String()`` of the JSON value (1.0 is "1", True "true")."""
    value = getattr(value, "value", value)  # a MetadataValue: its Python value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        if 1e-7 <= abs(value) < 1e-4:  # JavaScript writes these without an exponent, Python with one
            return format(decimal.Decimal(repr(value)), "f")
        return repr(value).replace("e-0", "e-").replace("e+0", "e+")
    return str(value)
