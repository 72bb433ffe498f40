"""Staging and scratch folders: a living writer's folder is never swept, a dead writer's always is."""

import builtins
import os
import signal
import subprocess
import sys
import time

from ft_assets import artifacts
from ft_assets.artifacts import sweep, work_folder

HOLD = """
import sys, time
from ft_assets.artifacts import work_folder
with work_folder(sys.argv[1], ".staging-") as folder:
    (folder / "part.bin").write_bytes(b"x")
    print(folder, flush=True)
    time.sleep(60)
"""


def _writer(parent):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(parent)], stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def test_a_living_writers_folder_stays_and_a_killed_writers_folder_is_swept(tmp_path):
    process, folder = _writer(tmp_path)
    try:
        assert sweep(tmp_path) == [] and os.path.isdir(folder), "the writer is alive"
        with work_folder(tmp_path, ".scratch-") as mine:  # another writer in the same folder sweeps first
            assert os.path.isdir(folder) and mine.is_dir()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert [str(p) for p in sweep(tmp_path)] == [folder]
    assert list(tmp_path.iterdir()) == [], "nothing is left, lock files included"


def test_a_finished_writer_leaves_nothing(tmp_path):
    with work_folder(tmp_path, ".staging-") as folder:
        (folder / "a").write_text("a")
    assert list(tmp_path.iterdir()) == []


def test_without_file_locks_only_old_folders_are_swept(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_fcntl(name, *args, **kwargs):
        if name == "fcntl":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fcntl)
    with work_folder(tmp_path, ".staging-") as live:
        assert sweep(tmp_path) == [] and live.is_dir(), "a fresh lock file means a living writer"
        old = time.time() - artifacts.UNLOCKED_SWEEP_AGE_S - 60
        os.utime(f"{live}.lock", (old, old))
        assert sweep(tmp_path) == [live]
