"""The one rule for what names a Hugging Face hub repository (``org/name``), used by inspect, fetch,
load, models and recipes alike."""

from __future__ import annotations

import re

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_id(name: str) -> bool:
    """True for ``org/name``: two parts of letters, digits, ``.``, ``_`` or ``-``, and not a relative
    path such as ``./x`` or ``../x`` (a name that exists on disk is the caller's to prefer)."""
    return bool(HUB_ID.fullmatch(name)) and not name.startswith((".", "/"))
