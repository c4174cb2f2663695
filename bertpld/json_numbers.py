"""Numbers as the run files hold them, for the report and its plots alike.

A value read from metrics.jsonl or summary.json may be missing, null, a bool or NaN (a diverged run);
both readers need the same rule for which values count, so it lives here, below both of them.
"""

from __future__ import annotations

import math
from typing import Any


def finite_number(v: Any) -> float | None:
    """`v` as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)
