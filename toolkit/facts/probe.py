"""What hardware is here, and how much memory is free on it.

``probe()`` looks at the real machine (NVML for CUDA GPUs, sysctl for Apple unified memory,
psutil or /proc/meminfo for RAM, bounded by a container's cgroup and ``ulimit -v``).
``device_for()`` turns CLI-style flags into the device to plan for. Nothing here imports torch;
NVML and torch are optional and looked up lazily.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from toolkit.errors import InvalidSpec
from toolkit.facts.devices import (APPLE_BANDWIDTH, DEFAULT_SPEC_CC, Device, device_from_spec, mps_working_set,
                                   parse_compute_capability, with_gpus)
from toolkit.facts.process import status_bytes
from toolkit.units import MiB, parse_memory


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
    return max(0, soft - (status_bytes("VmSize") or 0))


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
