"""Devices as pure values: what a GPU, an Apple chip or the CPU offers, from its spec.

``device_from_spec()`` builds a ``Device`` from a spec such as ``"T4"``, ``"2xH100"`` or
``"24GiB"`` so plans can be made for hardware you do not have; :mod:`toolkit.facts.probe` fills
the same ``Device`` from the real machine.
"""

from __future__ import annotations

import html
import re
from dataclasses import asdict, dataclass, replace

from toolkit.errors import InvalidSpec
from toolkit.units import GiB, fmt_bytes, parse_memory


@dataclass
class Device:
    """One accelerator (or the CPU) and its memory, as a pure value.

    Attributes:
        kind: ``"cuda"``, ``"cpu"`` or ``"mps"``.
        name: Human-readable name, e.g. ``"NVIDIA A100-SXM4-80GB"``.
        total_bytes: Memory of one device.
        free_bytes: Memory free on one device right now (other processes included).
        count: Number of identical devices (tensor parallel / sharding).
        compute_capability: CUDA compute capability, e.g. ``(8, 0)``; None elsewhere.
        bandwidth_bytes_s: Peak memory bandwidth of one device, when known.
        source: Where the numbers came from (``"nvml"``, ``"spec:T4"``, ``"psutil"`` ...).
    """

    kind: str
    name: str
    total_bytes: int
    free_bytes: int
    count: int = 1
    compute_capability: tuple[int, int] | None = None
    bandwidth_bytes_s: float | None = None
    source: str = ""

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        return d

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(_fmt_field(k, v))}</td></tr>"
            for k, v in self.to_dict().items()
        )
        return f"<table>{rows}</table>"


def _fmt_field(key: str, value: object) -> str:
    if key.endswith("_bytes") and isinstance(value, int):
        return fmt_bytes(value)
    if key == "bandwidth_bytes_s" and value:
        return f"{value / 1e9:.0f} GB/s"
    return str(value)


# name -> (memory, compute capability, memory bandwidth bytes/s). Memory is the vendor's nominal
# capacity (NVIDIA "GB" on these boards is GiB-sized HBM/GDDR; nvidia-smi reports 1-3% less
# because of ECC/reserved memory). Bandwidth and cc are from NVIDIA's product spec sheets and the
# CUDA GPUs compute-capability table (developer.nvidia.com/cuda-gpus).
GPU_SPECS: dict[str, tuple[int, tuple[int, int], float]] = {
    "T4": (16 * GiB, (7, 5), 320e9),  # NVIDIA T4 datasheet: 16 GB GDDR6, 320+ GB/s
    "V100": (16 * GiB, (7, 0), 900e9),  # V100 SXM2 datasheet: 16 GB HBM2, 900 GB/s
    "V100-32GB": (32 * GiB, (7, 0), 900e9),  # V100 SXM2 32 GB
    "A10G": (24 * GiB, (8, 6), 600e9),  # AWS g5 A10G: 24 GB GDDR6, 600 GB/s
    "A10": (24 * GiB, (8, 6), 600e9),  # NVIDIA A10 datasheet: 24 GB, 600 GB/s
    "L4": (24 * GiB, (8, 9), 300e9),  # NVIDIA L4 datasheet: 24 GB, 300 GB/s
    "L40S": (48 * GiB, (8, 9), 864e9),  # NVIDIA L40S datasheet: 48 GB, 864 GB/s
    "A6000": (48 * GiB, (8, 6), 768e9),  # RTX A6000 datasheet: 48 GB, 768 GB/s
    "A100-40GB": (40 * GiB, (8, 0), 1555e9),  # A100 datasheet: 40 GB HBM2, 1,555 GB/s
    "A100-80GB": (80 * GiB, (8, 0), 2039e9),  # A100 datasheet: 80 GB HBM2e SXM, 2,039 GB/s
    "H100": (80 * GiB, (9, 0), 3.35e12),  # H100 SXM datasheet: 80 GB, 3.35 TB/s
    "H100-PCIE": (80 * GiB, (9, 0), 2.0e12),  # H100 PCIe datasheet: 80 GB, 2 TB/s
    "H200": (141 * 10**9, (9, 0), 4.8e12),  # H200 datasheet: 141 GB HBM3e, 4.8 TB/s
    "RTX-3090": (24 * GiB, (8, 6), 936e9),  # GeForce RTX 3090 spec: 24 GB GDDR6X, 936 GB/s
    "RTX-4090": (24 * GiB, (8, 9), 1008e9),  # GeForce RTX 4090 spec: 24 GB GDDR6X, 1,008 GB/s
    "RTX-5090": (32 * GiB, (12, 0), 1792e9),  # GeForce RTX 5090 spec: 32 GB GDDR7, 1,792 GB/s
}
# Bare names that mean one SKU: "A100" is the original 40 GB board.
GPU_ALIASES = {"A100": "A100-40GB", "A100-80G": "A100-80GB", "A100-40G": "A100-40GB", "V100-16GB": "V100",
               "H100-80GB": "H100", "H100-SXM": "H100", "4090": "RTX-4090", "3090": "RTX-3090",
               "H200-141GB": "H200", "T4-16GB": "T4", "L4-24GB": "L4", "A10G-24GB": "A10G"}
# Apple chip -> unified memory bandwidth (bytes/s), from Apple's product pages / press releases.
APPLE_BANDWIDTH = {
    "M1": 68.25e9, "M1-PRO": 200e9, "M1-MAX": 400e9, "M1-ULTRA": 800e9,
    "M2": 100e9, "M2-PRO": 200e9, "M2-MAX": 400e9, "M2-ULTRA": 800e9,
    "M3": 100e9, "M3-PRO": 150e9, "M3-MAX": 400e9, "M3-ULTRA": 819e9,
    "M4": 120e9, "M4-PRO": 273e9, "M4-MAX": 546e9,
}
# Metal's recommendedMaxWorkingSetSize: macOS lets the GPU wire about 2/3 of RAM on machines with
# up to 36 GB and about 3/4 above (the iogpu.wired_limit_mb default, as reported in llama.cpp
# discussion #2182 and Apple's Metal feature tables). Used when the real value cannot be read.
MPS_SMALL_FRACTION = 2 / 3
MPS_LARGE_FRACTION = 3 / 4
MPS_LARGE_THRESHOLD = 36 * GiB
DEFAULT_SPEC_CC = (8, 0)  # a bare "24GiB" GPU spec is assumed Ampere-class (bf16-capable)


def mps_working_set(total_bytes: int) -> int:
    """Approximate Metal's recommended working set for a Mac with ``total_bytes`` of RAM."""
    fraction = MPS_LARGE_FRACTION if total_bytes > MPS_LARGE_THRESHOLD else MPS_SMALL_FRACTION
    return int(total_bytes * fraction)


def _cuda_spec(name: str, count: int) -> Device:
    key = GPU_ALIASES.get(name, name)
    total, cc, bw = GPU_SPECS[key]
    return Device("cuda", key, total, total, count, cc, bw, f"spec:{name}")


def device_from_spec(spec: str) -> Device:
    """Build a ``Device`` from a spec string, for planning without the hardware.

    Args:
        spec: ``"24GiB"`` (generic CUDA GPU, cc 8.0), a GPU name (``"T4"``, ``"A100-80GB"``,
            ``"RTX-4090"`` ...), ``"2xH100"`` (N identical GPUs), an Apple chip with memory
            (``"M2-Max-32GB"``), or ``"cpu:16GiB"`` / ``"mps:32GiB"`` / ``"cuda:24GiB"``.

    Returns:
        A Device whose free memory equals its total (nothing else running).

    Raises:
        InvalidSpec: When the spec is not recognised.
    """
    raw = spec.strip()
    count = 1
    m = re.fullmatch(r"(\d+)\s*[xX]\s*(.+)", raw)
    if m:
        count, raw = int(m.group(1)), m.group(2).strip()
        if count < 1:
            raise InvalidSpec(f"GPU count must be at least 1 in {spec!r}: use e.g. '2xH100'")
    if ":" in raw:
        kind, _, mem = raw.partition(":")
        kind = kind.lower()
        if kind not in ("cpu", "cuda", "mps"):
            raise InvalidSpec(f"unknown device kind {kind!r} in {spec!r}: use cpu:16GiB, cuda:24GiB or mps:32GiB")
        size = parse_memory(mem)
        if kind == "cpu":
            return Device("cpu", "CPU", size, size, 1, None, None, f"spec:{spec}")
        if kind == "mps":
            return Device("mps", "Apple GPU", size, mps_working_set(size), 1, None, None, f"spec:{spec}")
        return Device("cuda", f"GPU {mem}", size, size, count, DEFAULT_SPEC_CC, None, f"spec:{spec}")
    upper = raw.upper().replace("_", "-").replace(" ", "-")
    if upper.startswith("RTX") and not upper.startswith("RTX-"):
        upper = "RTX-" + upper[3:]
    if upper in GPU_SPECS or upper in GPU_ALIASES:
        dev = _cuda_spec(upper, count)
        return replace(dev, source=f"spec:{spec}")
    m = re.fullmatch(r"(M[1-4](?:-(?:PRO|MAX|ULTRA))?)-(\d+(?:\.\d+)?)\s*(GB|GIB)", upper)
    if m:
        total = int(float(m.group(2)) * GiB)  # Apple's "32GB" of unified memory is 32 GiB
        return Device("mps", f"Apple {m.group(1)}", total, mps_working_set(total), 1, None,
                      APPLE_BANDWIDTH.get(m.group(1)), f"spec:{spec}")
    try:
        size = parse_memory(raw)
    except InvalidSpec:
        known = ", ".join(sorted(GPU_SPECS))
        raise InvalidSpec(
            f"unknown device spec {spec!r}: use a memory size ('24GiB'), a GPU name ({known}), "
            "'2xH100', 'M2-Max-32GB' or 'cpu:16GiB'"
        ) from None
    return Device("cuda", f"GPU {raw}", size, size, count, DEFAULT_SPEC_CC, None, f"spec:{spec}")


def parse_compute_capability(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """Parse ``"8.0"`` / ``"86"`` / ``(8, 0)`` into a tuple."""
    if value is None or isinstance(value, tuple):
        return value
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(value))
    if not m:
        raise InvalidSpec(f"cannot parse compute capability {value!r}: use a value like '8.0' or '7.5'")
    return int(m.group(1)), int(m.group(2))


def with_gpus(dev: Device, gpus: int | None) -> Device:
    """``dev`` as ``gpus`` identical devices; None leaves it as it is."""
    if gpus is None:
        return dev
    if gpus < 1:
        raise InvalidSpec(f"--gpus must be at least 1, got {gpus}")
    if dev.kind != "cuda" and gpus > 1:
        raise InvalidSpec(f"--gpus {gpus} needs CUDA devices, but the device is {dev.kind}: "
                          "drop --gpus or use --device cuda")
    return replace(dev, count=gpus)
