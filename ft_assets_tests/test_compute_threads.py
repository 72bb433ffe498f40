"""Thread pools sized to the CPUs a process may use, idle threads sleeping; the user's own settings kept."""

import os
import subprocess
import sys

from ft_assets import compute_threads


def test_cores_follow_the_affinity_mask_and_the_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(compute_threads, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    everything = compute_threads.available_cores()
    assert everything >= 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert compute_threads.available_cores() == everything
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one thread
    assert compute_threads.available_cores() == 1
    if hasattr(os, "sched_setaffinity") and everything > 1:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
        (tmp_path / "cpu.max").write_text("max 100000\n")
        assert compute_threads.available_cores() == 1


def test_configure_runs_before_torch_and_keeps_what_the_user_set():
    script = (
        "import os, sys\n"
        "import ft_assets.training.base_model\n"  # the first training module a step imports
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "OPENBLAS_", "RAYON_", "GOMP_"))}
    out = subprocess.run([sys.executable, "-c", script.replace("os.environ['OMP_WAIT_POLICY']",
                         "os.environ.get('OMP_WAIT_POLICY', 'spin-' + os.environ.get('GOMP_SPINCOUNT', ''))")],
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    policy, threads, torch_threads = out.stdout.split()
    assert policy in ("PASSIVE", f"spin-{compute_threads.SPIN_COUNT}"), policy
    assert int(threads) == compute_threads.available_cores() == int(torch_threads)
    mine = subprocess.run([sys.executable, "-c", script], env={**env, "OMP_NUM_THREADS": "1",
                          "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True, check=True)  # fmt: skip
    assert mine.stdout.split() == ["ACTIVE", "1", "1"]


def test_idle_threads_sleep_at_once_when_other_tasks_want_the_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(compute_threads, "LOADAVG", tmp_path / "loadavg")
    monkeypatch.setattr(compute_threads, "available_cores", lambda: 2)
    for name in (
        "OMP_WAIT_POLICY",
        "GOMP_SPINCOUNT",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "RAYON_NUM_THREADS",
    ):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "loadavg").write_text("0.10 0.20 0.30 1/300 4242\n")  # only this process runs
    compute_threads.configure()
    assert os.environ["GOMP_SPINCOUNT"] == compute_threads.SPIN_COUNT and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delenv("GOMP_SPINCOUNT")
    (tmp_path / "loadavg").write_text("2.10 1.20 0.30 3/300 4242\n")  # two busy tasks besides this one
    compute_threads.configure()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is kept
    compute_threads.configure()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in os.environ
