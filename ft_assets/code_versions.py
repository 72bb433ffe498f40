"""Code versions of assets: a short hash of the source files that do an asset's work.

Editing the cleaning code changes ``cleaned_examples``'s code version, so Dagster marks it
(and what is downstream) as changed, without anyone having to remember to bump a string.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def source_version(*modules: str) -> str:
    """Return a 12-character hash of the named modules' source files (not imported)."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"no source for module {name}")
        digest.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return digest.hexdigest()[:12]
