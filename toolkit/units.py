"""Byte sizes: the binary units, the one formatter every table and message uses, and the parser of
sizes such as ``"24GiB"``. No imports beyond the standard library."""

from __future__ import annotations

import re
from typing import Any

from toolkit.errors import InvalidSpec

KiB = 2**10
MiB = 2**20
GiB = 2**30

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def fmt_bytes(n: Any, missing: str = "-") -> str:
    """``1.50 GiB`` from a GiB up, else ``12.3 MiB``; ``missing`` for None or NaN."""
    if n is None or n != n:
        return missing
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.1f} MiB"


def parse_memory(value: str | int | float) -> int:
    """Parse a memory size into bytes.

    Args:
        value: An int (bytes) or a string like ``"24GiB"``, ``"16GB"``, ``"512MiB"``, ``"1.5TB"``.
            ``GB`` = 10**9, ``GiB`` = 2**30; a bare number is bytes.

    Returns:
        The size in bytes.

    Raises:
        InvalidSpec: When the value does not parse or is not positive.
    """
    if isinstance(value, bool):
        raise InvalidSpec(f"cannot parse memory {value!r}: use a size like '24GiB', '16GB' or '512MiB'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise InvalidSpec(f"memory must be positive, got {value!r}: use a size like '24GiB' or '16GB'")
        return int(value)
    m = re.fullmatch(r"\s*([-+]?[0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))  # sign: "must be positive"
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise InvalidSpec(f"cannot parse memory {value!r}: use a size like '24GiB', '16GB' or '512MiB'")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise InvalidSpec(f"memory must be positive, got {value!r}: use a size like '24GiB' or '16GB'")
    return size
