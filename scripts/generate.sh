#!/usr/bin/env bash
# Sets up a fresh machine (idempotent) and runs a pipeline on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/synth generate "${@:-pipelines/instruct.yaml}"
