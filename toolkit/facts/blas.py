"""Which BLAS mlx[cpu] multiplies with, and a faster one put in its place before mlx is imported.

The ``mlx[cpu]`` wheel for Linux (mlx 0.32.4) links the reference BLAS it bundles (``mlx_cpu.libs/libblas``,
netlib's Fortran loops). Its float32 and bfloat16 matmuls ran at ~3 GFLOPS on this project's 2-core
machine; with OpenBLAS answering the same ``cblas_sgemm`` calls, 85 GFLOPS on one OpenBLAS thread (the
default here, see below) and 180 on two (a 1024x1024 by 1024x2048 float32 matmul on 2 idle cores, 2026-12-06). A shared library loaded with ``RTLD_GLOBAL`` before mlx's own is
searched first when the dynamic linker binds mlx's BLAS symbols, so loading a system OpenBLAS that way
before ``import mlx.core`` is enough: nothing in mlx changes, only which library answers. torch is imported
before that (where installed; mlx_lm imports it anyway), so that torch keeps its own BLAS and LAPACK.

``TOOLKIT_MLX_BLAS`` chooses: ``auto`` (the default: a system OpenBLAS when one is found, else the
bundled BLAS), ``bundled`` (leave mlx as its wheel ships it), or the path of a BLAS library to load.
Debian/Ubuntu: ``apt-get install libopenblas0-pthread`` (the project's bootstrap installs it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass

ENV = "TOOLKIT_MLX_BLAS"


@dataclass(frozen=True)
class BlasChoice:
    """What :func:`prefer_fast_blas_for_mlx` did: ``library`` is the path loaded ahead of mlx's own
    BLAS, or None when mlx multiplies with the BLAS its wheel bundles; ``why`` says which and why."""

    library: str | None
    why: str


_choice: BlasChoice | None = None


def find_openblas() -> str | None:
    """A system OpenBLAS shared library (its soname as the dynamic linker finds it), or None."""
    return ctypes.util.find_library("openblas")


def resolve() -> BlasChoice:
    """What :func:`prefer_fast_blas_for_mlx` loads in a process started now (nothing is loaded here)."""
    wanted = os.environ.get(ENV, "auto").strip() or "auto"
    if sys.platform == "darwin":
        return BlasChoice(None, "macOS: mlx uses Accelerate")
    if wanted == "bundled":
        return BlasChoice(None, f"{ENV}=bundled: the BLAS mlx's wheel bundles")
    path = find_openblas() if wanted == "auto" else wanted
    if path is None:
        return BlasChoice(None, "no system OpenBLAS found (apt-get install libopenblas0-pthread): the reference "
                                "BLAS mlx[cpu]'s wheel bundles, ~20x slower matmuls")
    return BlasChoice(path, f"{path} loaded ahead of the reference BLAS mlx[cpu]'s wheel bundles")


def prefer_fast_blas_for_mlx() -> BlasChoice:
    """Load a faster BLAS than mlx[cpu]'s bundled reference BLAS, globally, before mlx is imported.

    Idempotent; the first call decides (:func:`resolve`). Does nothing on macOS (mlx uses Accelerate
    there), when mlx is already imported (its symbols are bound), or when ``TOOLKIT_MLX_BLAS=bundled``.

    Raises:
        OSError: ``TOOLKIT_MLX_BLAS`` names a library that cannot be loaded.
    """
    global _choice
    if _choice is not None:
        return _choice
    if "mlx.core" in sys.modules:
        _choice = BlasChoice(None, "mlx was imported before toolkit could choose its BLAS: the bundled one")
        return _choice
    choice = resolve()
    if choice.library:
        if "torch" not in sys.modules and importlib.util.find_spec("torch") is not None:
            # torch first (mlx_lm imports it anyway): libtorch_cpu binds its symbols as it loads, so it keeps its
            # own BLAS and LAPACK; loaded after OpenBLAS joined the global scope, its LAPACK calls (sgetrf_,
            # spotrf_: torch.linalg, GPTQ's Cholesky) would go to OpenBLAS instead
            importlib.import_module("torch")
        # One OpenBLAS thread unless the user chose otherwise: Debian's OpenBLAS 0.3.21 (pthreads) hung at process
        # exit here after an mlx prefill (gotoblas_quit -> blas_thread_shutdown_ joined a worker that never
        # woke; traced with gdb), and with no worker threads there is nothing to join. It halves the matmul
        # speed on 2 idle cores (1024x1024 by 1024x2048 float32: 85 GFLOPS at 1 thread, 180 at 2, the bundled
        # BLAS 5.5); OPENBLAS_NUM_THREADS set by the user wins. OpenBLAS reads it when it loads, so it is set
        # only around the load.
        forced = "OPENBLAS_NUM_THREADS" not in os.environ
        if forced:
            os.environ["OPENBLAS_NUM_THREADS"] = "1"
        try:
            ctypes.CDLL(choice.library, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise OSError(f"{ENV}={os.environ.get(ENV)!r}: cannot load {choice.library}: {exc}. Set {ENV} to the "
                          "path of a BLAS shared library, to 'auto' (a system OpenBLAS when found) or to "
                          "'bundled'") from exc
        finally:
            if forced:
                del os.environ["OPENBLAS_NUM_THREADS"]
    _choice = choice
    return _choice


def mlx_blas() -> BlasChoice | None:
    """The choice made in this process, or None when no mlx backend was loaded."""
    return _choice
