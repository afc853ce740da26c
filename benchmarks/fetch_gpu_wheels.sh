#!/usr/bin/env bash
# Download into .whl/ the Python wheels that benchmarks/gpu_check.py needs on the lent GPU
# machine (Python 3.12, torch 2.11, no package registry reachable): what train.py and the
# gpu-marked tests import that the machine's image lacks. Run it once here, where pip can
# reach a registry; the device command then installs them with
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#
# The list (about 0.4 MiB, all pure Python):
#   hydra-core 1.3.8            train.py (`import hydra`), tests/test_hardware.py (`import train`)
#   omegaconf 2.3.1             train.py, training/rundir.py
#   antlr4-python3-runtime 4.9.3  omegaconf's and hydra's override parser (pinned 4.9.*)
# Already on the machine (KINDS.md's package list), so not carried: PyYAML (omegaconf),
# packaging (hydra), pytest + pluggy + iniconfig, tokenizers, numpy, tqdm, transformers.
# Not needed by the check: datasets (only data=hf), wandb (only logging.wandb.mode!=disabled),
# hydra-joblib-launcher (only the local_parallel sweep launcher).
#
#   benchmarks/fetch_gpu_wheels.sh                 # into .whl/ (ignored by .gitignore)
#   benchmarks/fetch_gpu_wheels.sh --with-pytest   # also pytest 9.0.3, pluggy, iniconfig, packaging (0.5 MiB)
#                                                  # for an image without them (pygments, its last need, is there)
#
# Versions are the ones this repository is developed with; one version of each name stays in
# .whl/ (two of the same name stop the install there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl
WITH_PYTEST=0
for arg in "$@"; do
    case "$arg" in
        --with-pytest) WITH_PYTEST=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

BINARY=(hydra-core==1.3.8 omegaconf==2.3.1)
if [ "$WITH_PYTEST" = 1 ]; then
    BINARY+=(pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 packaging==26.2)
fi
mkdir -p "$DEST"
# Drop every wheel of the names this script manages first (earlier versions, or the pytest set
# of an earlier --with-pytest run, which would shadow the machine's own pytest).
rm -f "$DEST"/hydra_core-*.whl "$DEST"/omegaconf-*.whl "$DEST"/antlr4_python3_runtime-*.whl \
      "$DEST"/pytest-*.whl "$DEST"/pluggy-*.whl "$DEST"/iniconfig-*.whl "$DEST"/packaging-*.whl

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${BINARY[@]}"
# antlr4-python3-runtime 4.9.3 is published as a source distribution only (no wheel on PyPI):
# build its wheel here. It is pure Python (py3-none-any), so the wheel built here runs there.
"$PY" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3

# Prove the device's install line accepts the set: same flags, into a scratch target.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$tmp/site" "$DEST"/*.whl
for pkg in hydra omegaconf antlr4; do
    [ -d "$tmp/site/$pkg" ] || { echo "fetch_gpu_wheels: $pkg missing after the test install" >&2; exit 1; }
done
ls -l "$DEST"
echo "total: $(du -ch "$DEST"/*.whl | tail -1 | cut -f1) in $(ls "$DEST"/*.whl | wc -l) wheels; install line checked"
