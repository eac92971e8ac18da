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
# A missing library or test dataset is a failure here, not a skip.
export SPOTML_REQUIRE_ORT=1
go test -count=1 -timeout 30m "$@" ./...
