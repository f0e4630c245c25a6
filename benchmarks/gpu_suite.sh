#!/usr/bin/env bash
# The GPU suite on a machine with torch but without Ray, MLflow or a package index (the lent GPU machine).
#   here, once:        benchmarks/gpu_suite.sh --fetch-wheels    # the few small wheels the suite needs (~11 MB, cp312)
#   on the machine:    benchmarks/gpu_suite.sh --out "$OUT"      # installs them into a private folder, runs the suite
#                      benchmarks/gpu_suite.sh --device-tests --out "$OUT" ...   # first the device tests (CPU and CUDA
#                      cases; log in OUT/device_tests.log), then the suite with the other arguments
# (the device tool carries the ignored wheel folder: carry=["benchmarks/_wheels"]).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/_wheels
PACKAGES="pydantic==2.14.4 pydantic-core annotated-types typing-inspection typing-extensions mrcfile==1.5.4 starfile==0.5.13 safetensors==0.8.0 gemmi PyWavelets==1.8.0"
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p "$WHEELS"
    python3 -m pip download --quiet --dest "$WHEELS" --python-version 3.12 --only-binary=:all: --no-deps \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 $PACKAGES
    du -sh "$WHEELS"
    exit 0
fi
SITE=$(mktemp -d)
python3 -m pip install --quiet --no-index --find-links "$WHEELS" --target "$SITE" --no-deps $PACKAGES
export PYTHONPATH="$SITE:$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ "${1:-}" == "--device-tests" ]]; then
    shift
    [[ "${1:-}" == "--out" ]] || { echo "--device-tests must be followed by --out DIR" >&2; exit 2; }
    mkdir -p "$2"
    # pytest's ini options name plugins this machine may lack (timeout): addopts cleared, the import mode kept
    timeout 150 python3 -m pytest -o addopts= -p no:cacheprovider --import-mode=importlib -q tests/test_devices.py \
        tests/test_local_route.py::test_the_in_process_route_learns_checkpoints_and_resumes_on_each_device \
        >"$2/device_tests.log" 2>&1 || true
    tail -3 "$2/device_tests.log"
fi
python3 benchmarks/gpu_suite.py --work "$(mktemp -d)" "$@"
