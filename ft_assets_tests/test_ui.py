"""The Dagster UI lists the project's assets: a real dagster-webserver process, queried over GraphQL."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEBSERVER = Path(sys.executable).parent / "dagster-webserver"
STARTUP_TIMEOUT_S = 90.0

GROUPS = {
    "raw_data": "data",
    "base_model_source": "training",
    "raw_examples": "data",
    "source_documents": "data",
    "synthetic_examples": "data",
    "cleaned_examples": "data",
    "train_split": "data",
    "validation_split": "data",
    "test_split": "data",
    "base_model": "training",
    "lora_adapter": "training",
    "merged_model": "training",
    "evaluation_table": "evaluation",
    "azure_training_files": "azure",
    "azure_finetune_job": "azure",
    "azure_fine_tuned_model": "azure",
    "azure_model_evaluation": "evaluation",
    "champion_model": "deployment",
}
EXPECTED_CHECKS = {
    "train_split": {"train_split_has_enough_examples", "format_valid", "splits_do_not_overlap"},
    "validation_split": {"format_valid", "splits_do_not_overlap"},
    "test_split": {"splits_do_not_overlap", "format_valid"},
    "merged_model": {"merged_model_matches_adapter"},
    "evaluation_table": {"adapter_beats_base"},
}

WORKSPACE_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

ASSETS_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name } }
      ... on Error { message }
    }
  }
}
"""


@dataclass
class Webserver:
    url: str
    process: subprocess.Popen
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, limit: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-limit:] if path.exists() else ""


def graphql(url: str, query: str, timeout_s: float = 30.0) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body = json.load(response)
    assert "errors" not in body, body["errors"]
    return body["data"]


def _wait_until_up(server: Webserver, deadline: float) -> None:
    """Poll /server_info until it answers, then until every code location has loaded."""
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {server.process.returncode}:\n{_log_tail(server.log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"dagster-webserver did not come up within {STARTUP_TIMEOUT_S:.0f} s:\n{_log_tail(server.log)}")
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=5) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    while True:
        workspace = graphql(server.url, WORKSPACE_QUERY)["workspaceOrError"]
        assert workspace["__typename"] == "Workspace", workspace
        entries = workspace["locationEntries"]
        if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
            for entry in entries:
                location = entry["locationOrLoadError"]
                assert location["__typename"] == "RepositoryLocation", f"{entry['name']} failed to load: {location}"
            return
        if time.monotonic() > deadline:
            pytest.fail(f"code locations did not load within {STARTUP_TIMEOUT_S:.0f} s: {entries}")
        time.sleep(0.25)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it includes the code server it spawned), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    scratch = tmp_path_factory.mktemp("ui")
    home = scratch / "dagster_home"
    home.mkdir()
    # A fresh instance; telemetry off so nothing is written beyond the server's own storage.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FT_ASSETS_ARTIFACTS": str(scratch / "artifacts"),
        "FT_ASSETS_LINEAGE_DB": str(scratch / "lineage.duckdb"),
        "PYTHONUNBUFFERED": "1",
    }
    port = _free_port()
    log = scratch / "webserver.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(WEBSERVER), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Webserver(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        _wait_until_up(server, time.monotonic() + STARTUP_TIMEOUT_S)
        yield server
    finally:
        _stop(process)


def test_ui_lists_the_assets_in_their_groups_with_their_checks(webserver: Webserver) -> None:
    nodes = graphql(webserver.url, ASSETS_QUERY)["assetNodes"]
    groups = {"/".join(node["assetKey"]["path"]): node["groupName"] for node in nodes}
    assert groups == GROUPS

    checks: dict[str, set[str]] = {}
    for node in nodes:
        result = node["assetChecksOrError"]
        assert result["__typename"] == "AssetChecks", result
        if result["checks"]:
            checks["/".join(node["assetKey"]["path"])] = {check["name"] for check in result["checks"]}
    assert checks == EXPECTED_CHECKS
