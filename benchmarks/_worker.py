"""Run a benchmark's worker function in a fresh interpreter, through toolkit's one launcher.

``run_worker("benchmarks/x.py:worker", {...}, timeout)`` gives the worker's returned dict, or
``{"error": ...}`` when it timed out, failed, or was killed.
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit import launcher

ROOT = Path(__file__).resolve().parent.parent


def run_worker(function: str, kwargs: dict, timeout: float) -> dict:
    """``function(**kwargs)`` in a fresh process with the repository on the path."""
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "TOKENIZERS_PARALLELISM": "false"}
    outcome = launcher.run(function, kwargs, env=env, cwd=ROOT, timeout=timeout)
    if not outcome.ok or outcome.value is None:
        return {"error": " ".join(str(outcome.error).split())[:600]}
    return outcome.value
