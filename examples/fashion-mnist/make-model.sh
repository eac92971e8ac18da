#!/usr/bin/env bash
# Rebuilds examples/fashion-mnist/model.onnx, the small Fashion-MNIST model
# that spotml ships so that serving works where the training job was not run.
# It is exactly what the example job produces: train.py with its defaults
# (8 epochs, seed 1, about 3 minutes on 2 cores), run by hand.
#
#   bash examples/fashion-mnist/make-model.sh
#
# Needs /usr/bin/python3 with Debian's python3-torch, python3-onnx and dataset-fashion-mnist.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(cd "$out" && OUT_DIR="$out/out" SPOTML_CHECKPOINT_DIR="$out/ckpt" /usr/bin/python3 "$here/train.py")
cp "$out/out/model.onnx" "$here/model.onnx"
cp "$out/out/metrics.json" "$here/model.metrics.json"
echo "wrote $here/model.onnx ($(stat -c %s "$here/model.onnx") bytes); metrics in $here/model.metrics.json"
