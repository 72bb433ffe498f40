"""Numbers as storage and display want them (no imports beyond math: narrow code versions)."""

import math
from typing import Any


def finite(value: Any) -> Any:
    """Return ``value``, or None for a float that is NaN or infinite (stored as NULL, shown as an empty cell)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
