import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent


def chat(user: str, answer: str, **extra: object) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Label the invoice."},
            {"role": "user", "content": user},
            {"role": "assistant", "content": answer},
        ],
        **extra,
    }


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts become JSON; bytes and str are written as they are) one per line."""
    with open(path, "wb") as handle:
        for row in rows:
            if isinstance(row, bytes):
                handle.write(row + b"\n")
            elif isinstance(row, str):
                handle.write(row.encode() + b"\n")
            else:
                handle.write(json.dumps(row).encode() + b"\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def shipped_raw() -> Path:
    return ROOT / "data" / "raw"


settings.register_profile("default", max_examples=60)
settings.register_profile("long", max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
