"""Benchmark ``ft-assets prep`` against a plain-Python, cookbook-style validator on the same file.

Usage: ``python benchmarks/prep_speed.py --rows 1000000`` (and ``--rows 10000000 --no-baseline``
for the out-of-core check). Generates ~270-byte chat examples (1% duplicates, 0.5% broken
rows) in a temporary folder, flushes it to disk and reads it once so both contenders start
from a warm page cache, then times the baseline (json.loads + the cookbook's format checks +
a hash set of lines, nothing written) and ``ft-assets prep`` as a subprocess. A second prep
run samples the resident memory of its whole process tree every 50 ms (sampling costs CPU,
so it is kept out of the timed run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROLES = {"system", "user", "assistant", "function"}
KEYS = {"role", "content", "name", "function_call", "weight"}
WORDS = [
    *("invoice", "vendor", "total", "due", "net", "terms", "paper", "toner"),
    *("flight", "hotel", "rail", "energy", "audit", "advisory", "license"),
]


def generate(path: Path, rows: int, seed: int = 1) -> None:
    """Write ``rows`` chat examples of about 270 bytes each."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        previous = ""
        for n in range(rows):
            roll = rng.random()
            if roll < 0.01 and previous:
                out.write(previous)
                continue
            if roll < 0.015:
                out.write('{"messages": [{"role": "user", "content": "trunc\n')
                continue
            words = " ".join(rng.choice(WORDS) for _ in range(12))
            line = (
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "Label the invoice."},
                            {
                                "role": "user",
                                "content": f"Invoice {n}: {words} total {rng.randint(1, 9999)}.{n % 100:02d}",
                            },
                            {
                                "role": "assistant",
                                "content": f"Category: {rng.choice(WORDS)}\nVendor: {rng.choice(WORDS)}",
                            },
                        ]
                    }
                )
                + "\n"
            )
            out.write(line)
            previous = line


def baseline(path: Path) -> dict[str, int]:
    """Cookbook-style validation: one json.loads per line, the format checks, a set of line hashes."""
    errors: dict[str, int] = {}
    seen: set[int] = set()
    duplicates = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                errors["invalid_json"] = errors.get("invalid_json", 0) + 1
                continue
            if not isinstance(row, dict):
                errors["data_type"] = errors.get("data_type", 0) + 1
                continue
            messages = row.get("messages")
            if not messages:
                errors["missing_messages_list"] = errors.get("missing_messages_list", 0) + 1
                continue
            for message in messages:
                if "role" not in message or "content" not in message:
                    errors["message_missing_key"] = errors.get("message_missing_key", 0) + 1
                if any(k not in KEYS for k in message):
                    errors["message_unrecognized_key"] = errors.get("message_unrecognized_key", 0) + 1
                if message.get("role") not in ROLES:
                    errors["unrecognized_role"] = errors.get("unrecognized_role", 0) + 1
                content = message.get("content")
                if not content or not isinstance(content, str):
                    errors["missing_content"] = errors.get("missing_content", 0) + 1
            if not any(m.get("role") == "assistant" for m in messages):
                errors["example_missing_assistant_message"] = errors.get("example_missing_assistant_message", 0) + 1
            key = hash(line)
            if key in seen:
                duplicates += 1
            seen.add(key)
    return {"duplicates": duplicates, **errors}


def run_timed(command: list[str]) -> tuple[float, str]:
    """Run ``command``; return wall seconds and its output."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{command} failed:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - start, result.stdout


def run_sampled(command: list[str]) -> int:
    """Run ``command``; return the peak RSS of its process tree in bytes."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{command} failed:\n{output}")
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the generated file (default: /tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        data = Path(tmp) / "examples.jsonl"
        generate(data, args.rows)
        os.sync()
        with open(data, "rb") as handle:
            while handle.read(1 << 24):
                pass
        size = data.stat().st_size
        print(f"rows {args.rows:,}  file {size / 1e6:.0f} MB")
        prep_cmd = [sys.executable, "-m", "ft_assets.cli", "prep", str(data), "--out", str(Path(tmp) / "out")]
        if not args.no_baseline:
            start = time.perf_counter()
            result = baseline(data)
            base_seconds = time.perf_counter() - start
            print(f"baseline validator: {base_seconds:.2f} s ({result})")
        seconds, output = run_timed(prep_cmd)
        print(f"ft-assets prep: {seconds:.2f} s  ({output.strip()})")
        if not args.no_baseline:
            print(f"ratio prep/baseline: {seconds / base_seconds:.2f} (target <= 0.60)")
        peak = run_sampled(prep_cmd)
        print(f"ft-assets prep peak RSS (whole process tree): {peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
