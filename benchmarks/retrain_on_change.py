"""By-hand check: under ``dagster dev``, a new raw file retrains with no click; with no change, nothing runs.

Usage: ``python benchmarks/retrain_on_change.py [--quiet-s 90] [--timeout-s 1800]``. In a fresh
project folder (shipped data, the repository's dagster.yaml and workspace.yaml) it runs the main
job once (``dagster job execute`` with the tests' tiny model config, to save time; the retraining
that follows uses the default settings, as automation does), starts ``dagster dev`` on 127.0.0.1
in its own session, waits ``--quiet-s`` seconds (no run may start), adds a .jsonl file of 40 valid
examples to data/raw, times until a run launched by the ``retraining`` sensor has materialized new
splits, adapter, merged model and evaluation (and the champion decision), then waits
``--quiet-s`` seconds again (no run may start). Prints the figures as JSON; exits 1 if a claim
does not hold. Too slow for the test suite (a default-size retraining takes minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import dagster as dg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ft_assets.automation import RETRAINING_TAG  # noqa: E402
from ft_assets_tests.project_runs import TINY_CONFIG, finish, instance_at, make_project, start_job  # noqa: E402

RETRAINED = ("train_split", "lora_adapter", "merged_model", "evaluation_table")
DAGSTER = Path(sys.executable).parent / "dagster"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _new_examples(source: Path, count: int = 40) -> str:
    """Return ``count`` valid examples made from shipped ones: new ids, new invoice numbers and totals."""
    lines = source.read_text().splitlines()[:count]
    rows = []
    for index, line in enumerate(lines):
        row = json.loads(line)
        row["id"] = f"bench-{index:04d}"
        user = row["messages"][1]
        shift = 7919 + index
        user["content"] = re.sub(r"\d+", lambda m, shift=shift: str(int(m.group()) + shift), user["content"])
        rows.append(json.dumps(row))
    return "\n".join(rows) + "\n"


def _runs(home: Path) -> list[dg.DagsterRun]:
    with instance_at(home) as instance:
        return list(reversed(instance.get_runs()))


def _materialized(home: Path, run_id: str) -> set[str]:
    from dagster._core.events import DagsterEventType

    with instance_at(home) as instance:
        records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
        return {r.asset_key.to_user_string() for r in records if r.asset_key}


def _ticks(home: Path, sensor: str, since: float) -> list[str]:
    """Return the statuses of ``sensor``'s ticks after ``since`` (epoch seconds)."""
    from dagster._core.definitions.run_request import InstigatorType

    with instance_at(home) as instance:
        states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                  if s.name == sensor]  # fmt: skip
        ticks = [t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=200)]
    return [t.status.value for t in ticks if t.timestamp >= since]


def _wait_up(url: str, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"dagster dev exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise SystemExit("dagster dev did not come up")


def _quiet(home: Path, seconds: float) -> dict[str, Any]:
    """Wait ``seconds``; return how many runs started and how the retraining sensor's ticks ended."""
    before, start = len(_runs(home)), time.time()
    time.sleep(seconds)
    return {
        "seconds": seconds,
        "runs_started": len(_runs(home)) - before,
        "retraining_ticks": _ticks(home, "retraining", start),
        "watch_ticks": _ticks(home, "watch_sources", start),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet-s", type=float, default=90.0)
    parser.add_argument("--timeout-s", type=float, default=1800.0)
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ft-retrain-") as scratch:
        project = make_project(Path(scratch))
        shutil.copy(ROOT / "workspace.yaml", project / "workspace.yaml")
        started = time.monotonic()
        job = start_job(project, "main", TINY_CONFIG)  # quick; the automated retraining uses the defaults
        if finish(job, timeout_s=args.timeout_s) != 0:
            print(job.output())
            return 1
        figures["main_job_s"] = round(time.monotonic() - started, 1)

        port = _free_port()
        env = {**os.environ, "DAGSTER_HOME": str(project)}
        for name in ("FT_ASSETS_ARTIFACTS", "FT_ASSETS_LINEAGE_DB", "FT_ASSETS_RETRAIN_POLICY"):
            env.pop(name, None)
        with open(project / "dev.log", "wb") as log:
            dev = subprocess.Popen(
                [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            _wait_up(f"http://127.0.0.1:{port}", dev, time.monotonic() + 120)
            figures["before_change"] = _quiet(project, args.quiet_s)

            added = time.monotonic()
            new_file = project / "data" / "raw" / "bench_new.jsonl"
            new_file.write_text(_new_examples(project / "data" / "raw" / "invoices_2026_h1.jsonl"))
            run = None
            while time.monotonic() - added < args.timeout_s:
                automated = [r for r in _runs(project) if r.tags.get(RETRAINING_TAG) == "automation"]
                if automated and run is None:
                    run = automated[0]
                    figures["run_launched_after_s"] = round(time.monotonic() - added, 1)
                if run is not None:
                    current = next(r for r in _runs(project) if r.run_id == run.run_id)
                    if current.is_finished:
                        figures["run_status"] = current.status.value
                        figures["run_finished_after_s"] = round(time.monotonic() - added, 1)
                        figures["materialized"] = sorted(_materialized(project, run.run_id))
                        break
                time.sleep(2)
            figures["after_change"] = _quiet(project, args.quiet_s)
        finally:
            os.killpg(dev.pid, signal.SIGTERM)
            try:
                dev.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
                dev.wait()
            figures["dev_log_tail"] = (project / "dev.log").read_text(errors="replace")[-1500:]
    ok = (
        figures["before_change"]["runs_started"] == 0
        and figures.get("run_status") == "SUCCESS"
        and set(RETRAINED) <= set(figures.get("materialized", []))
        and figures["after_change"]["runs_started"] == 0
    )
    if ok:
        figures.pop("dev_log_tail")
    print(json.dumps({"ok": ok, **figures}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
