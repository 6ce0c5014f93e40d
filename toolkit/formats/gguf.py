"""GGUF files (llama.cpp's format), read in pure Python: the metadata and the tensor table, never
the tensor data. Type tables follow ggml's own headers."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

from toolkit.errors import InvalidModel

# GGML tensor types: id -> (name, elements per block, bytes per block), from ggml/include/ggml.h
# (enum ggml_type) and the block structs in ggml/src/ggml-common.h (e.g. block_q4_0 = fp16 scale
# + 16 bytes of nibbles for 32 weights = 18 bytes; block_q4_K = 2 fp16 + 12 scale bytes + 128 = 144
# bytes for 256 weights).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20), 6: ("q5_0", 32, 22),
    7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34), 9: ("q8_1", 32, 36), 10: ("q2_k", 256, 84),
    11: ("q3_k", 256, 110), 12: ("q4_k", 256, 144), 13: ("q5_k", 256, 176), 14: ("q6_k", 256, 210),
    15: ("q8_k", 256, 292), 16: ("iq2_xxs", 256, 66), 17: ("iq2_xs", 256, 74), 18: ("iq3_xxs", 256, 98),
    19: ("iq1_s", 256, 50), 20: ("iq4_nl", 32, 18), 21: ("iq3_s", 256, 110), 22: ("iq2_s", 256, 82),
    23: ("iq4_xs", 256, 136), 24: ("i8", 1, 1), 25: ("i16", 1, 2), 26: ("i32", 1, 4), 27: ("i64", 1, 8),
    28: ("f64", 1, 8), 29: ("iq1_m", 256, 56), 30: ("bf16", 1, 2), 34: ("tq1_0", 256, 54),
    35: ("tq2_0", 256, 66),
}
# general.file_type -> llama.cpp's name for the mix (enum llama_ftype in include/llama.h).
GGUF_FILE_TYPES = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s",
    12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k",
    19: "iq2_xxs", 20: "iq2_xs", 21: "q2_k_s", 22: "iq3_xs", 23: "iq3_xxs", 24: "iq1_s", 25: "iq4_nl",
    26: "iq3_s", 27: "iq3_m", 28: "iq2_s", 29: "iq2_m", 30: "iq4_xs", 31: "iq1_m", 32: "bf16",
}


class _Reader:
    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.fh, self.name = fh, name

    def read(self, n: int) -> bytes:
        b = self.fh.read(n)
        if len(b) < n:
            raise InvalidModel(f"{self.name} is truncated inside its GGUF header: re-download the file")
        return b

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.read(8))[0]

    def string(self) -> str:
        n = self.u64()
        if n > 2**24:
            raise InvalidModel(f"{self.name} has a corrupt GGUF string length ({n}): re-download the file")
        return self.read(n).decode("utf-8", errors="replace")


# GGUF value types (gguf spec, ggml/docs/gguf.md): id -> struct format
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_value(r: _Reader, vtype: int, keep_arrays: bool) -> Any:
    if vtype in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[vtype]
        return struct.unpack(fmt, r.read(struct.calcsize(fmt)))[0]
    if vtype == 8:
        return r.string()
    if vtype == 9:
        etype, n = r.u32(), r.u64()
        if etype in _GGUF_SCALARS:
            size = struct.calcsize(_GGUF_SCALARS[etype])
            data = r.read(size * n)
            if keep_arrays and n <= 4096:
                return list(struct.unpack(f"<{n}{_GGUF_SCALARS[etype][1]}", data))
            return {"array_length": n}
        values = [_gguf_value(r, etype, False) for _ in range(n)]
        return values if keep_arrays and n <= 4096 else {"array_length": n}
    raise InvalidModel(f"{r.name} has an unknown GGUF value type {vtype}: the file is corrupt or from a newer "
                       "GGUF version; re-download it or update toolkit")


def read_gguf(path: str | os.PathLike) -> dict:
    """Read a GGUF file's metadata and tensor table (not the tensor data), in pure Python.

    Returns:
        ``{"version", "metadata": {key: value}, "tensors": [{"name","shape","type","numel","bytes","offset"}],
        "data_start"}`` (``offset`` is relative to ``data_start``);
        long arrays (the tokenizer vocabulary) are replaced by ``{"array_length": n}``.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        r = _Reader(fh, path.name)
        if r.read(4) != b"GGUF":
            raise InvalidModel(f"{path.name} is not a GGUF file (bad magic): pass a .gguf from llama.cpp's convert scripts")
        version = r.u32()
        if version == 1:
            n_tensors, n_kv = r.u32(), r.u32()
        else:
            n_tensors, n_kv = r.u64(), r.u64()
        meta = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = _gguf_value(r, r.u32(), keep_arrays=True)
        tensors = []
        data_end = 0  # end of the last tensor, relative to the start of the data section
        for _ in range(n_tensors):
            name = r.string()
            dims = [r.u64() for _ in range(r.u32())]
            ttype = r.u32()
            offset = r.u64()
            if ttype not in GGML_TYPES:
                raise InvalidModel(f"{path.name}: tensor {name!r} has unknown ggml type {ttype}: update toolkit")
            tname, block, tsize = GGML_TYPES[ttype]
            n = _numel(dims)
            tensors.append({"name": name, "shape": dims, "type": tname, "numel": n, "bytes": n // block * tsize,
                            "offset": offset})
            data_end = max(data_end, offset + n // block * tsize)
        # The data section starts at the next multiple of general.alignment (gguf spec, default 32).
        align = meta.get("general.alignment") or 32
        data_start = -(-fh.tell() // align) * align if isinstance(align, int) and align > 0 else fh.tell()
        size = path.stat().st_size
        if tensors and data_start + data_end > size:
            raise InvalidModel(f"{path.name} is truncated: its tensor data needs {data_start + data_end} bytes but the "
                               f"file has {size}; re-download the file (or finish the download)")
    return {"version": version, "metadata": meta, "tensors": tensors, "data_start": data_start}


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
