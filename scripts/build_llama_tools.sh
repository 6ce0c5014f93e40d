#!/usr/bin/env bash
# Build llama.cpp's own `llama-bench` and `llama-perplexity` from the exact
# llama.cpp source vendored in a given llama-cpp-python sdist, so toolkit's
# figures can be checked against the engine's tools built from the same code.
#
# usage: build_llama_tools.sh [LLAMA_CPP_PYTHON_VERSION] [JOBS]
#   VERSION defaults to the installed llama-cpp-python (python -c ...), else 0.3.36
#   JOBS    defaults to 2 (the build is run under `nice -n 10`)
#
# env:
#   TOOLKIT_CACHE  cache root (default ~/.cache/toolkit)
#   PYTHON         python used for `pip download` (default: python3)
#   KEEP_BUILD=1   keep the cmake build tree (default: removed after install)
#
# Output: prints the bin dir on the last line of stdout:
#   ${TOOLKIT_CACHE:-~/.cache/toolkit}/llama.cpp-tools-VERSION/bin
# Idempotent: exits 0 immediately when both binaries exist and run.
#
# Flags are portable (GGML_NATIVE=OFF, AVX/AVX2/FMA/F16C/BMI2): a -march=native
# build crashes with SIGILL on VMs whose CPUID advertises AMX/AVX-512 features
# that the hypervisor does not actually allow.
#
# Linking is llama.cpp's default on Linux (BUILD_SHARED_LIBS=ON), as in the
# llama-cpp-python wheel toolkit runs: the tools load libllama/libggml*.so from
# $DEST/lib (RUNPATH $ORIGIN/../lib). A static build decoded the tiny model 2 %
# faster at one thread than the same source built shared (llama-bench tg64,
# 4133 against 4048 tok/s, 7 alternating rounds, 2026-12-06). Built shared,
# the reference is the engine as the wheel has it, and a ratio measures toolkit.
set -euo pipefail

PYTHON=${PYTHON:-python3}
VERSION=${1:-}
if [[ -z "$VERSION" ]]; then
    VERSION=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || echo 0.3.36)
fi
JOBS=${2:-2}
CACHE=${TOOLKIT_CACHE:-$HOME/.cache/toolkit}
DEST="$CACHE/llama.cpp-tools-$VERSION"
BIN="$DEST/bin"
SDIST_DIR="$CACHE/sdist"
TARBALL="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
TARGETS=(llama-bench llama-perplexity)

log() { echo "[build_llama_tools] $*" >&2; }

have_all() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ -x "$BIN/$t" ]] || return 1
    done
    # a binary that cannot even print its help (e.g. SIGILL) does not count
    "$BIN/llama-bench" --help >/dev/null 2>&1 || return 1
    # an earlier static build is replaced by the shared one (see the header)
    grep -q "shared" "$DEST/BUILD_INFO" 2>/dev/null || return 1
}

if have_all; then
    log "already built: $BIN"
    echo "$BIN"
    exit 0
fi

for tool in cmake c++ tar; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing '$tool' (apt-get install cmake g++, or pip install cmake)"; exit 2; }
done

mkdir -p "$SDIST_DIR" "$DEST"

# 1. sdist (cached)
if [[ ! -s "$TARBALL" ]]; then
    log "downloading llama-cpp-python==$VERSION sdist into $SDIST_DIR"
    dl=$(mktemp -d "$SDIST_DIR/dl.XXXXXX")
    "$PYTHON" -m pip download --no-deps --no-binary :all: --dest "$dl" "llama-cpp-python==$VERSION" >&2
    f=$(ls "$dl"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || ls "$dl"/llama-cpp-python-"$VERSION".tar.gz)
    mv "$f" "$TARBALL"
    rm -rf "$dl"
fi

# 2. unpack vendor/llama.cpp only
WORK=$(mktemp -d "$DEST/work.XXXXXX")
cleanup() { [[ "${KEEP_BUILD:-0}" == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT
top=$(tar -tzf "$TARBALL" 2>/dev/null | head -1 | cut -d/ -f1 || true)  # head closes the pipe early
log "unpacking $top/vendor/llama.cpp"
tar -xzf "$TARBALL" -C "$WORK" --wildcards "$top/vendor/llama.cpp/*"
SRC="$WORK/$top/vendor/llama.cpp"
[[ -f "$SRC/CMakeLists.txt" ]] || { log "no vendor/llama.cpp in $TARBALL"; exit 3; }

# 3. configure + build (portable flags, only the two tools)
log "configuring (portable CPU flags)"
cmake -S "$SRC" -B "$WORK/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON \
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_INSTALL_RPATH='$ORIGIN/../lib' \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF >&2

log "building ${TARGETS[*]} with -j$JOBS (slow: ~15 min on 2 cores)"
start=$(date +%s)
nice -n 10 cmake --build "$WORK/build" --config Release -j"$JOBS" --target "${TARGETS[@]}" >&2
log "build took $(( $(date +%s) - start )) s"

# 4. install
mkdir -p "$BIN" "$DEST/lib"
for t in "${TARGETS[@]}"; do
    install -m 755 "$WORK/build/bin/$t" "$BIN/$t"
done
cp -P "$WORK"/build/bin/lib*.so* "$DEST/lib/"
echo "$VERSION $(date -u +%FT%TZ) GGML_NATIVE=OFF AVX AVX2 FMA F16C BMI2 shared" > "$DEST/BUILD_INFO"
have_all || { log "installed binaries do not run"; exit 4; }
log "installed into $BIN"
echo "$BIN"
