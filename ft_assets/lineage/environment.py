"""The library versions a materialization ran with, read from package metadata (nothing is imported)."""

from __future__ import annotations

import platform
from functools import cache
from importlib.metadata import PackageNotFoundError, version

LIBRARIES = ("dagster", "torch", "transformers", "peft", "trl")


@cache
def library_versions() -> dict[str, str]:
    """Return the versions of Python and of the installed ``LIBRARIES`` (those not installed are left out)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
