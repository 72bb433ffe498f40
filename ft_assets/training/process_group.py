"""Tie an out-of-process training run (the trainer and whatever it starts) to the Dagster run that launched it.

Parent side: ``ProcessGroupPipesClient`` starts the command in its own session (POSIX) or process
group (Windows). When the Pipes call ends any other way than a clean exit (Dagster's termination,
an exception), or the run is marked finished from outside (its run worker died while this step
runs in a step process of its own, or it was force-terminated), it interrupts the whole group,
waits ``termination_timeout_seconds`` and kills what is left; after a clean exit it kills
stragglers. Child side: ``exit_with_parent()`` ends a process, and its group, as soon as the
process that runs the Pipes call is gone, even after ``kill -9``: Linux's
``PR_SET_PDEATHSIG`` where available, and on every POSIX system a watchdog thread that polls the
parent (macOS has no ``prctl``). On Windows only the parent side applies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError

RUN_PID_ENV = "FT_ASSETS_RUN_PID"
RUN_PGID_ENV = "FT_ASSETS_RUN_PGID"
PR_SET_PDEATHSIG = 1
RUN_POLL_SECONDS = 2.0
POSIX = os.name == "posix"


class ProcessGroupPipesClient(dg.PipesSubprocessClient):
    """``PipesSubprocessClient`` whose process tree lives and dies with the run.

    A thread polls the run's status while the process runs. The child learns this process's PID
    (``FT_ASSETS_RUN_PID``) and group so that ``exit_with_parent()`` can end the tree if this
    process dies without cleaning up.
    """

    def run(  # type: ignore[override]
        self,
        *,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        extras: Mapping[str, Any] | None = None,
        command: str | Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        """Run ``command`` in a Pipes session, in a new process group that never outlives this call."""
        with dg.open_pipes_session(
            context=context, context_injector=self.context_injector, message_reader=self.message_reader, extras=extras
        ) as session:
            output = None if self.forward_stdio else subprocess.DEVNULL
            process = subprocess.Popen(
                command,
                cwd=cwd or self.cwd,
                env={**os.environ, **self.env, **(env or {}), **session.get_bootstrap_env_vars(), **run_identity()},
                stdout=output,
                stderr=output,
                **new_group_options(),
            )
            grace = self.termination_timeout_seconds if self.forward_termination else 0
            done, ended = threading.Event(), list[str]()
            threading.Thread(
                target=_stop_when_run_ends,
                args=(context.instance, context.run.run_id, process, grace, done, ended),
                name="stop-when-run-ends",
                daemon=True,
            ).start()
            try:
                process.wait()
            except BaseException:  # Dagster's termination arrives as DagsterExecutionInterruptedError
                context.log.info(f"[pipes] interrupted: stopping process group {process.pid}")
                stop_group(process, grace)
                raise
            finally:
                done.set()
                kill_group(process)
            if process.returncode != 0:
                why = f" (stopped: the run was marked {ended[0]} from outside)" if ended else ""
                raise DagsterPipesExecutionError(
                    f"External execution process failed with code {process.returncode}{why}"
                )
        return dg.PipesClientCompletedInvocation(session)


def _stop_when_run_ends(
    instance: dg.DagsterInstance,
    run_id: str,
    process: subprocess.Popen[Any],
    grace_seconds: float,
    done: threading.Event,
    ended: list[str],
) -> None:
    """Stop the group once the run is marked finished while the process still runs; note the status in ``ended``."""
    while not done.wait(RUN_POLL_SECONDS):
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            ended.append(run.status.value)
            stop_group(process, grace_seconds)
            return


def run_identity() -> dict[str, str]:
    """Environment variables that tell a child which process (and group) is the run's."""
    identity = {RUN_PID_ENV: str(os.getpid())}
    if POSIX:
        identity[RUN_PGID_ENV] = str(os.getpgrp())
    return identity


def new_group_options() -> dict[str, Any]:
    """``Popen`` options that start the child in a process group of its own."""
    if POSIX:
        return {"start_new_session": True}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]


def stop_group(process: subprocess.Popen[Any], grace_seconds: float) -> None:
    """Interrupt the group led by ``process`` (like Ctrl-C), wait up to ``grace_seconds``, then kill it."""
    if grace_seconds > 0:
        try:
            if POSIX:
                os.killpg(process.pid, signal.SIGINT)
            else:
                process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            process.wait(timeout=grace_seconds)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass
    kill_group(process)


def kill_group(process: subprocess.Popen[Any]) -> None:
    """Kill every process left in the group led by ``process`` (Windows: the process), and reap it."""
    try:
        if POSIX:
            os.killpg(process.pid, signal.SIGKILL)
        elif process.poll() is None:
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty
    process.wait()


def exit_with_parent(poll_seconds: float = 0.5) -> None:
    """End this process, and its group, as soon as the run process that started it is gone.

    Does nothing unless ``ProcessGroupPipesClient`` started the process (or a launcher it started,
    such as ``torchrun``, did). The group is killed only when it is not the run process's own group.
    """
    value = os.environ.get(RUN_PID_ENV)
    if not value or not POSIX:
        return
    run_pid, parent = int(value), os.getppid()
    run_group = os.environ.get(RUN_PGID_ENV)
    group = os.getpgrp() if run_group and int(run_group) != os.getpgrp() else None

    def orphaned() -> bool:
        return os.getppid() != parent or _gone(run_pid)

    def end() -> None:
        if group is not None:
            os.killpg(group, signal.SIGKILL)  # this process included
        os._exit(1)

    if orphaned():
        end()
    _parent_death_signal(orphaned, end)
    threading.Thread(target=_watch, args=(orphaned, end, poll_seconds), name="exit-with-parent", daemon=True).start()


def _watch(orphaned: Callable[[], bool], end: Callable[[], None], poll_seconds: float) -> None:
    while not orphaned():
        time.sleep(poll_seconds)
    end()


def _parent_death_signal(orphaned: Callable[[], bool], end: Callable[[], None]) -> None:
    """Linux: have the kernel send SIGTERM when the parent dies, and end the group on it then.

    A SIGTERM that is not about the parent keeps its default meaning. Skipped where there is no
    ``prctl``, off the main thread, or when SIGTERM already has a handler.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return

    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        if orphaned():
            end()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    if prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts as exited where ``/proc`` tells); POSIX only."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
