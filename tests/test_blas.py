"""mlx[cpu]'s BLAS: toolkit loads a system OpenBLAS ahead of the reference BLAS the wheel bundles.

The dynamic linker is the witness: ``LD_DEBUG=bindings`` prints which library each of libmlx's BLAS
symbols was bound to. Skipped only where no system OpenBLAS is installed outside CI; in CI (``CI``
set) the bootstrap installs it, and a missing one fails.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("mlx_lm")

from toolkit.facts.blas import find_openblas  # noqa: E402

if sys.platform != "linux":
    pytest.skip("the bundled reference BLAS is the Linux mlx[cpu] wheel's", allow_module_level=True)
if find_openblas() is None and not os.environ.get("CI"):
    pytest.skip("no system OpenBLAS (apt-get install libopenblas0-pthread); required when CI is set",
                allow_module_level=True)

MATMUL = ("import toolkit.backends.mlx, mlx.core as mx; from toolkit.facts.blas import mlx_blas; "
          "print(mlx_blas().library); mx.eval(mx.ones((64, 64)) @ mx.ones((64, 64)))")


def _python(code: str, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with ``env``; it must exit 0 when ``ok``."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if ok:
        assert run.returncode == 0, run.stderr[-2000:]
    return run


def _sgemm_binding(blas: str) -> tuple[str, str]:
    """(what toolkit says it loaded, the library the dynamic linker bound libmlx's cblas_sgemm to)."""
    run = _python(MATMUL, {**os.environ, "LD_DEBUG": "bindings", "TOOLKIT_MLX_BLAS": blas})
    lines = [ln for ln in run.stderr.splitlines() if "libmlx" in ln and "`cblas_sgemm'" in ln]
    assert lines, "libmlx's cblas_sgemm was never bound: " + run.stderr[-2000:]
    return run.stdout.strip().splitlines()[-1], lines[0].split(" to ", 1)[1].split(" [", 1)[0]


def test_mlx_multiplies_with_the_system_openblas() -> None:
    said, bound = _sgemm_binding("auto")
    assert said == find_openblas()
    assert "openblas" in os.path.basename(os.path.realpath(bound)), bound


def test_bundled_leaves_mlx_as_its_wheel_ships_it() -> None:
    said, bound = _sgemm_binding("bundled")
    assert said == "None"
    assert "mlx_cpu.libs" in bound and "openblas" not in bound, bound


def test_a_blas_that_cannot_be_loaded_is_a_clear_error() -> None:
    run = _python("import toolkit.backends.mlx", {**os.environ, "TOOLKIT_MLX_BLAS": "/nonexistent/libblas.so"},
                  ok=False)
    assert run.returncode != 0
    assert "TOOLKIT_MLX_BLAS='/nonexistent/libblas.so': cannot load" in run.stderr
    assert "'bundled'" in run.stderr


def test_the_environment_record_names_the_blas() -> None:
    from toolkit.measuring.environment import environment

    assert environment(devices=False)["mlx_blas"] == find_openblas()


def test_torch_keeps_its_own_lapack_beside_mlx() -> None:
    """OpenBLAS joins the process's global scope; torch, loaded first, still binds LAPACK to its own copy."""
    pytest.importorskip("torch")
    code = ("import toolkit.backends.mlx, torch; a = torch.randn(8, 8, dtype=torch.float64) + 8 * torch.eye(8, "
            "dtype=torch.float64); torch.linalg.solve(a, a)")
    run = _python(code, {**os.environ, "LD_DEBUG": "bindings", "TOOLKIT_MLX_BLAS": "auto"})
    torch_lapack = [ln for ln in run.stderr.splitlines() if "libtorch_cpu" in ln.split(" to ", 1)[0]
                    and "`dgetrf_'" in ln]
    assert torch_lapack, "torch's dgetrf_ was never bound: " + run.stderr[-2000:]
    assert all("openblas" not in ln.split(" to ", 1)[1] for ln in torch_lapack), torch_lapack


@pytest.mark.parametrize("wanted,expected", [(None, 1), ("2", 2)])
def test_one_openblas_thread_unless_the_user_sets_it(wanted, expected) -> None:
    """Debian's OpenBLAS 0.3.21 hung at exit joining a worker thread after mlx work: one thread by default."""
    code = ("import ctypes, os, toolkit.backends.mlx; lib = ctypes.CDLL('" + str(find_openblas()) + "'); "
            "print(lib.openblas_get_num_threads(), os.environ.get('OPENBLAS_NUM_THREADS'))")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if wanted:
        env["OPENBLAS_NUM_THREADS"] = wanted
    run = _python(code, env)
    threads, left = run.stdout.split()[-2:]
    assert int(threads) == expected
    assert left == (wanted or "None")  # the variable is set only around the load
