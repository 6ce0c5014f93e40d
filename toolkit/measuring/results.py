"""The results store of a sweep: a JSON-lines file written one finished row at a time (one
``write`` + ``fsync`` per row), so an interrupted sweep keeps what it measured and a re-run resumes
where it stopped; a row cut mid-line by a kill is dropped on read, not fatal. """

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from toolkit.launcher import json_default


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines results file; a line cut short by a kill is dropped (and the file
    repaired so later appends start on a fresh line)."""
    if not path.exists():
        return []
    rows, good_bytes = [], 0
    raw = path.read_bytes()
    for line in raw.splitlines(keepends=True):
        try:
            if line.endswith(b"\n"):
                rows.append(json.loads(line))
                good_bytes += len(line)
                continue
        except json.JSONDecodeError:
            pass
        break
    if good_bytes != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row atomically enough for a crash: a single write of a whole line, then fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, default=json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def records(frame: Any) -> list[dict[str, Any]]:
    """Rows as plain dicts (full float precision; missing values as None), without tracebacks."""
    clean = frame.drop(columns=[c for c in ("traceback",) if c in frame.columns])
    return [{k: (None if v is None or (isinstance(v, float) and v != v) else v) for k, v in row.items()}
            for row in clean.to_dict(orient="records")]
