#!/usr/bin/env bash
# The README's test command: every test of spotml, from the repository root.
#
#   bash scripts/test.sh
#
# Fetches ONNX Runtime for the builtin inference runtime first (once; see
# scripts/fetch-onnxruntime.sh), so that the serving tests run rather than
# skip. Extra arguments go to `go test` (e.g. -run Serving -v).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-onnxruntime.sh >/dev/null
export SPOTML_ONNXRUNTIME_LIB="$PWD/build/onnxruntime/libonnxruntime.so"
# The serving tests' ONNX Runtime library and Fashion-MNIST test set
# (dataset-fashion-mnist) must be here: missing, they fail rather than skip.
# The training example (python3-torch, python3-onnx) and the browser test
# (chromium) still skip without their packages unless SPOTML_REQUIRE_EXAMPLE=1
# and SPOTML_REQUIRE_BROWSER=1 are set, as .ci/run does. See the README's
# "Run the tests".
export SPOTML_REQUIRE_ORT=1
go test -count=1 -timeout 30m "$@" ./...
