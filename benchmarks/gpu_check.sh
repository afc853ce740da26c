#!/usr/bin/env bash
# One-command GPU check (issue #13); benchmarks/README.md "GPU check" says what it runs.
#
#   benchmarks/gpu_check.sh --out DIR     # on one H100/H200: parity, throughput, a training run, the environment
#   benchmarks/gpu_check.sh --dry-run     # anywhere: the plan, each command checked on CPU
#
# The work is in benchmarks/gpu_check.py (per-part timeouts, process groups, JSON, the dry run's
# checks: clearer and testable in Python); this wrapper only picks the interpreter (python3 or
# $PYTHON) and runs it unbuffered, so the device's output tail shows progress as it happens.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$here/gpu_check.py" "$@"
