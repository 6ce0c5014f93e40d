"""What hardware is here, and how much memory is free on it.

``probe()`` looks at the real machine (NVML for CUDA GPUs, sysctl for Apple unified memory,
psutil or /proc/meminfo for RAM). ``device_from_spec()`` and ``device_for()`` build a ``Device``
from a spec such as ``"T4"``, ``"2xH100"`` or ``"24GiB"`` so plans can be made for hardware you do
not have. Nothing here imports torch; NVML and torch are optional and looked up lazily.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from toolkit.errors import InvalidSpec

GiB = 2**30
MiB = 2**20

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


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
        return f"{value / GiB:.2f} GiB"
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


# ---------------------------------------------------------------------------------------------
# probing the real machine


def _probe_nvml() -> list[Device]:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded on machines without a GPU
        return []
    devices = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                cc = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h))
            except Exception:
                cc = None
            bw = None
            try:  # bus width (bits) x max memory clock (MHz) x 2 (DDR) / 8
                bw = pynvml.nvmlDeviceGetMemoryBusWidth(h) * pynvml.nvmlDeviceGetMaxClockInfo(
                    h, pynvml.NVML_CLOCK_MEM) * 1e6 * 2 / 8
            except Exception:
                pass
            devices.append(Device("cuda", name, int(mem.total), int(mem.free), 1, cc, bw, "nvml"))
    except Exception:
        return devices
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return devices


def _probe_torch_cuda() -> list[Device]:
    # Only when torch is already imported: importing it here would cost seconds and ~400 MB.
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            props = torch.cuda.get_device_properties(i)
            out.append(Device("cuda", props.name, int(total), int(free), 1,
                              (props.major, props.minor), None, "torch.cuda.mem_get_info"))
        return out
    except Exception:
        return []


def _sysctl(name: str) -> str | None:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout.strip()
    except Exception:
        return None


def _probe_mps() -> list[Device]:
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return []
    total = _sysctl("hw.memsize")
    if not total or not total.isdigit():
        return []
    total_b = int(total)
    wired = _sysctl("iogpu.wired_limit_mb")  # user override of the GPU wired limit, 0 = default
    limit = int(wired) * MiB if wired and wired.isdigit() and int(wired) > 0 else mps_working_set(total_b)
    free = min(limit, _ram()[1])
    brand = _sysctl("machdep.cpu.brand_string") or "Apple Silicon"
    chip = brand.replace("Apple ", "").upper().replace(" ", "-")
    return [Device("mps", brand, total_b, free, 1, None, APPLE_BANDWIDTH.get(chip), "sysctl")]


def _ram() -> tuple[int, int]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except ImportError:
        pass
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info[k] = int(v.split()[0]) * 1024
        return info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    except Exception:
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        total = pages * os.sysconf("SC_PAGE_SIZE") if pages else 0
        return total, total


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _sysctl("machdep.cpu.brand_string") if sys.platform == "darwin" else (platform.processor() or "CPU")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _inactive_file(stat: Path, key: str) -> int:
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_memory(proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
                  root: str | os.PathLike = "/sys/fs/cgroup") -> tuple[int, int] | None:
    """(limit, free) of this process's memory cgroup, the tightest along its path, or None when no
    limit is set. Containers (Docker, Kubernetes, systemd slices) limit memory this way while
    ``/proc/meminfo`` still shows the host's. Free is limit − usage + inactive file pages (page
    cache the kernel reclaims before it kills), as ``docker stats`` counts it. cgroup v2 and v1."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    base = Path(root)
    found: list[tuple[int, int]] = []
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2: 0::/path
            top, files = base, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1: N:memory:/path
            top, files = base / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = top / rel.lstrip("/")
        while True:
            limit, usage = _read_int(folder / files[0]), _read_int(folder / files[1])
            if limit is not None and usage is not None and limit < 2**60:  # v1 "no limit" is ~2**63
                free = limit - usage + _inactive_file(folder / "memory.stat", files[2])
                found.append((limit, max(0, min(free, limit))))
            if folder == top or top not in folder.parents:
                break
            folder = folder.parent
    return min(found, key=lambda lf: lf[1]) if found else None


def address_space_headroom() -> int | None:
    """Bytes this process may still map under ``ulimit -v`` (RLIMIT_AS), or None when unlimited."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    from toolkit.trackers import _status_kib

    return max(0, soft - (_status_kib("VmSize") or 0))


def probe_cpu() -> Device:
    """Return the CPU with total and available RAM, bounded by a container's memory cgroup and by
    ``ulimit -v``, which stop allocations before the machine's RAM runs out."""
    total, free = _ram()
    source = "psutil" if "psutil" in sys.modules else "meminfo"
    limited = cgroup_memory()
    if limited is not None and limited[1] < free:
        total, free, source = min(total, limited[0]), limited[1], "cgroup"
    headroom = address_space_headroom()
    if headroom is not None and headroom < free:
        free, source = headroom, "RLIMIT_AS"
    return Device("cpu", _cpu_name() or "CPU", total, free, 1, None, None, source)


def probe() -> list[Device]:
    """List the devices on this machine with their free memory.

    CUDA GPUs come from NVML (free memory as the driver sees it, other processes included), or
    from ``torch.cuda.mem_get_info`` when torch is already imported; Apple GPUs from sysctl; the
    CPU is always last.

    Returns:
        Devices, accelerators first.
    """
    cuda = _probe_nvml() or _probe_torch_cuda()
    return [*cuda, *_probe_mps(), probe_cpu()]


def best_device(devices: list[Device] | None = None) -> Device:
    """Pick the device a plan should use: all CUDA GPUs of the first kind, else MPS, else CPU."""
    devices = devices if devices is not None else probe()
    cuda = [d for d in devices if d.kind == "cuda"]
    if cuda:
        first = cuda[0]
        same = [d for d in cuda if d.name == first.name]
        return replace(first, count=len(same), free_bytes=min(d.free_bytes for d in same))
    for kind in ("mps", "cpu"):
        for d in devices:
            if d.kind == kind:
                return d
    return probe_cpu()


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


def device_for(memory: str | int | None = None, kind: str | None = None, gpus: int | None = None,
               compute_capability: str | tuple[int, int] | None = None) -> Device:
    """Build a device from CLI-style flags.

    Args:
        memory: Memory per device (``"24GiB"``), or None to use the probed amount.
        kind: ``"cuda"``, ``"cpu"``, ``"mps"`` or a spec such as ``"T4"``/``"2xA100-80GB"``.
        gpus: Number of GPUs (overrides the spec's count).
        compute_capability: e.g. ``"8.0"``; overrides the spec's or the probed value.

    Returns:
        The device to plan for. With every argument None this is the best probed device.
    """
    cc = parse_compute_capability(compute_capability)
    dev: Device
    if kind is not None and kind.lower() not in ("cuda", "cpu", "mps", "gpu"):
        dev = device_from_spec(kind)
    elif memory is not None:
        size = parse_memory(memory)
        k = (kind or "cuda").lower()
        k = "cuda" if k == "gpu" else k
        if k == "mps":
            dev = Device("mps", "Apple GPU", size, size, 1, None, None, f"flags:{memory}")
        elif k == "cpu":
            dev = Device("cpu", "CPU", size, size, 1, None, None, f"flags:{memory}")
        else:
            dev = Device("cuda", f"GPU {memory}", size, size, 1, cc or DEFAULT_SPEC_CC, None, f"flags:{memory}")
    else:
        devices = probe()
        if kind is None:
            dev = best_device(devices)
        else:
            k = "cuda" if kind.lower() == "gpu" else kind.lower()
            found = [d for d in devices if d.kind == k]
            if not found:
                raise InvalidSpec(
                    f"no {k} device found on this machine: plan for one anyway with --memory "
                    f"(e.g. --device {k} --memory 24GiB) or a spec like --device T4"
                )
            dev = best_device(found) if k == "cuda" else found[0]
    if memory is not None and dev.source.startswith("spec:"):
        size = parse_memory(memory)
        dev = replace(dev, total_bytes=size, free_bytes=size)
    dev = with_gpus(dev, gpus)
    if cc is not None:
        dev = replace(dev, compute_capability=cc)
    return dev


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``toolkit probe`` flags."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main_probe(args: argparse.Namespace) -> int:
    """``toolkit probe``: print the devices found on this machine."""
    devices = probe()
    if getattr(args, "json", False):
        print(json.dumps([d.to_dict() for d in devices], indent=2))
        return 0
    print(f"{'kind':<5} {'name':<40} {'total':>10} {'free':>10} {'cc':>5}  source")
    for d in devices:
        cc = ".".join(map(str, d.compute_capability)) if d.compute_capability else "-"
        print(f"{d.kind:<5} {d.name[:40]:<40} {d.total_bytes / GiB:>6.1f} GiB {d.free_bytes / GiB:>6.1f} GiB "
              f"{cc:>5}  {d.source}")
    return 0
