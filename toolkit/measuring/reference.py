"""The reference of a comparison: the full-precision variant's next-token log-probs on the quality
windows, which every other variant's KL divergence and top-1 agreement are measured against.

It is kept compactly and outside the report folder: in the toolkit cache
(``$TOOLKIT_CACHE/references/<key>.npz``), in llama.cpp's 2-byte base format (:mod:`toolkit.measuring.kl`),
keyed by the windows and the reference model, so that a resumed sweep scores against the same
reference and a report folder stays small. The sweep's results file only names the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from toolkit.builtin.tiny import cache_root
from toolkit.measuring.kl import Quantized, dequantize, quantize


def reference_key(windows: Sequence[Sequence[int]], model: str) -> str:
    """A key for the reference of ``model`` on these windows (16 hex digits)."""
    digest = hashlib.sha256(str(model).encode())
    digest.update(np.asarray(windows, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def reference_file(key: str) -> Path:
    return cache_root() / "references" / f"{key}.npz"


@dataclass
class Reference:
    """The reference's windows and its quantized log-probs, one [len-1, vocab] block per window."""

    windows: list[list[int]]
    blocks: list[Quantized]

    @classmethod
    def of(cls, windows: Sequence[Sequence[int]], logprobs: Sequence[np.ndarray]) -> "Reference":
        return cls([list(map(int, w)) for w in windows], [quantize(lp) for lp in logprobs])

    def logprobs(self) -> list[np.ndarray]:
        """The dequantized reference log-probs, as the statistics use them."""
        return [dequantize(b) for b in self.blocks]

    def save(self, path: Path) -> Path:
        """Write it (a temp file renamed into place, so a killed sweep never leaves half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"windows": np.asarray(self.windows, dtype=np.int64)}
        for i, b in enumerate(self.blocks):
            arrays.update({f"codes{i}": b.codes, f"scale{i}": b.scale, f"low{i}": b.low})
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path, windows: Sequence[Sequence[int]] | None = None) -> "Reference | None":
        """The reference in ``path``; None when there is none, or when it is for other windows."""
        if not path.exists():
            return None
        with np.load(path) as data:
            saved = data["windows"]
            if windows is not None and not np.array_equal(saved, np.asarray(windows)):
                return None
            blocks = [Quantized(data[f"codes{i}"], data[f"scale{i}"], data[f"low{i}"]) for i in range(len(saved))]
        return cls(saved.tolist(), blocks)

    def nbytes(self) -> int:
        return sum(b.codes.nbytes + b.scale.nbytes + b.low.nbytes for b in self.blocks)


def write_pointer(results: Path, key: str, model: str) -> None:
    """Record beside a results file which cached reference its rows were scored against."""
    pointer = results.with_name(results.stem + ".reference.json")
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(json.dumps({"key": key, "model": model, "file": str(reference_file(key))}) + "\n")
