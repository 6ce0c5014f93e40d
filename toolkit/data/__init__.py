"""Files that ship with toolkit: the built-in tiny model, and the held-out and calibration texts.

Paths only; reading them is the caller's business. The held-out text is Python standard-library
source that the tiny model never trained on (see scripts/train_tiny.py)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent
TINY = DATA / "tiny"  # the built-in tiny model's folder (config, tokenizer, fp32 safetensors)
HELDOUT = DATA / "heldout.txt"
CALIBRATION = DATA / "calibration.txt"


def heldout_text() -> str:
    """The bundled held-out text: standard-library source files the tiny model never trained on."""
    return HELDOUT.read_text(encoding="utf-8")
