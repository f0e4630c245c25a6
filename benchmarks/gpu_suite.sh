#!/usr/bin/env bash
# The GPU suite on a machine with torch but without Ray, MLflow or a package index (the lent GPU machine).
#   here, once:        benchmarks/gpu_suite.sh --fetch-wheels    # the few small wheels the suite needs (~6 MB, cp312)
#   on the machine:    benchmarks/gpu_suite.sh --out "$OUT"      # installs them into a private folder, runs the suite
# (the device tool carries the ignored wheel folder: carry=["benchmarks/_wheels"]).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/_wheels
PACKAGES="pydantic==2.14.4 pydantic-core annotated-types typing-inspection typing-extensions mrcfile==1.5.4 starfile==0.5.13 safetensors==0.8.0 gemmi"
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p "$WHEELS"
    python3 -m pip download --quiet --dest "$WHEELS" --python-version 3.12 --only-binary=:all: --no-deps \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 $PACKAGES
    du -sh "$WHEELS"
    exit 0
fi
SITE=$(mktemp -d)
python3 -m pip install --quiet --no-index --find-links "$WHEELS" --target "$SITE" --no-deps $PACKAGES
PYTHONPATH="$SITE:$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" python3 benchmarks/gpu_suite.py "$@"
