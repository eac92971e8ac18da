#!/usr/bin/env bash
# Runs every fuzz target for a few seconds each, from the repository root:
#
#   bash scripts/fuzz.sh            # FUZZTIME=5s per target
#   FUZZTIME=10m bash scripts/fuzz.sh FuzzParse
#
# Each target starts from its corpus in its package's testdata/fuzz/TARGET/
# (plain `go test` runs that corpus too). A failing input is written there;
# commit it with the fix so that it stays a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-5s}"
targets=(
  "./internal/spec FuzzParse"          # the spec decoder (YAML and JSON)
  "./internal/inference FuzzDecode"    # both inference decoders (TF Serving, KServe v2)
  "./internal/inference FuzzDecodeBinary"  # KServe v2's binary tensor extension
  "./internal/server FuzzAgentAPI"     # the agent API's request bodies
)
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then
    continue
  fi
  echo "fuzz $pkg $name for $fuzztime"
  # Go's fuzzer can end a clean run with "context deadline exceeded"
  # when a worker is still busy at -fuzztime's end on a loaded machine
  # (no failing input, nothing written): that alone is run once more.
  if ! out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" 2>&1); then
    echo "$out"
    if grep -q 'context deadline exceeded' <<<"$out" && ! grep -q 'Failing input written' <<<"$out"; then
      echo "fuzz $pkg $name: the fuzzer's own deadline, no failing input; running it again"
      go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg"
    else
      exit 1
    fi
  else
    echo "$out" | tail -3
  fi
done
