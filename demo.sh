#!/usr/bin/env bash
# The spotml demo, one command from a fresh clone:
#   bash demo.sh
# Builds spotml, starts it (`spotml up`: control plane, a local pool of spot
# nodes and one of on-demand nodes, each node a real agent process), trains a
# Fashion-MNIST model on the spot nodes while one of them is evicted, and
# ends with the model in the blob store and what the run cost against the
# same run on demand.
#
# Then it serves that model behind the spotml gateway (2 spot replicas, the
# builtin ONNX runtime) and classifies a test image with curl.
#
# Environment: SPOTML_DATA (default ./spotml-demo), SPOTML_ADDR (default
# 127.0.0.1:8080), SPOTML_GATEWAY_ADDR (default 127.0.0.1:8000),
# SKIP_TRAINING=1 to serve the model shipped in examples/fashion-mnist/
# instead of training one, KEEP_RUNNING=1 to leave spotml up running at the end.
set -euo pipefail
cd "$(dirname "$0")"

DATA=${SPOTML_DATA:-./spotml-demo}
ADDR=${SPOTML_ADDR:-127.0.0.1:8080}
GATEWAY=${SPOTML_GATEWAY_ADDR:-127.0.0.1:8000}
export SPOTML_SERVER="http://$ADDR"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Checking what the example needs (PyTorch, ONNX and the Fashion-MNIST data from Debian)"
missing=()
/usr/bin/python3 -c 'import torch, onnx' 2>/dev/null || missing+=(python3-torch python3-onnx)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

say "Building spotml and fetching ONNX Runtime for the builtin inference runtime"
go build -o bin/spotml ./cmd/spotml
bash scripts/fetch-onnxruntime.sh
spotml() { ./bin/spotml --data "$DATA" "$@"; }

say "Starting spotml up (data in $DATA, API on $ADDR; its log is $DATA/up.log)"
rm -rf "$DATA"
mkdir -p "$DATA"
./bin/spotml up --data "$DATA" --addr "$ADDR" --gateway-addr "$GATEWAY" >"$DATA/up.log" 2>&1 &
UP=$!
cleanup() {
  if [ "${KEEP_RUNNING:-0}" != 1 ] && kill -0 "$UP" 2>/dev/null; then
    kill -INT "$UP"; wait "$UP" 2>/dev/null || true
  fi
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -fsS "$SPOTML_SERVER/healthz" >/dev/null 2>&1 && break
  kill -0 "$UP" 2>/dev/null || { cat "$DATA/up.log"; exit 1; }
  sleep 0.1
done
echo "Web console: http://$ADDR/ — log in with the token in $DATA/token ($(cat "$DATA/token"))"

if [ "${SKIP_TRAINING:-0}" = 1 ]; then
  say "Skipping training (SKIP_TRAINING=1): the shipped model stands in for the job's output"
  spotml apply -f examples/fashion-mnist/pools.yaml
  spotml blob put examples/fashion-mnist/model.onnx outputs/fashion-mnist/out/model.onnx
else
say "Uploading the training script and applying the pools and the job"
spotml blob put examples/fashion-mnist/train.py examples/fashion-mnist/train.py
spotml apply -f examples/fashion-mnist/pools.yaml -f examples/fashion-mnist/job.yaml
spotml get pools

# Evict the training's node once it has saved a checkpoint, so that the demo
# always shows an eviction and a resume (the market may add its own).
(
  for _ in $(seq 600); do
    node=$(spotml get tasks fashion-mnist -o json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
t = json.load(sys.stdin)[0]
print(t.get("node", "") if t["state"] == "running" and t["attempt"] == 1 else "")' 2>/dev/null || true)
    if [ -n "$node" ] && spotml blob ls checkpoints/fashion-mnist/ 2>/dev/null | grep -q LATEST; then
      sleep 20
      printf '\n'; spotml evict "$node" --notice 15s | sed 's/^/    [demo] /'
      exit 0
    fi
    sleep 1
  done
) &
EVICTOR=$!

say "Training on spot nodes (progress below; spotml get events shows the timeline)"
status=0
spotml wait job fashion-mnist --timeout 30m || status=$?
kill "$EVICTOR" 2>/dev/null || true

say "What happened"
spotml get tasks fashion-mnist
spotml get events | grep -E 'Notice|Draining|Evicted|Requeued|Launched|Succeeded|Failed' || true
echo
echo "train log, attempt by attempt (spotml logs fashion-mnist/train):"
spotml logs fashion-mnist/train | grep -E -- '^----- attempt|fashion-mnist attempt|from scratch|resumed from|SIGTERM|epoch [0-9]+/[0-9]+ done|^\[.*\] done:' || true
[ "$status" -eq 0 ] || { echo "the job did not succeed (exit $status)"; exit "$status"; }

say "Outputs in the blob store ($DATA/blobs/outputs/fashion-mnist/)"
spotml blob ls outputs/fashion-mnist/
spotml blob get outputs/fashion-mnist/out/metrics.json - | /usr/bin/python3 -c '
import json, sys
m = json.load(sys.stdin)
print("test accuracy: %.2f %%" % (100 * m["test_accuracy"]))'
fi

say "Cost: spent on this run vs the same node-hours on demand"
spotml cost

say "Serving the model: spot replicas behind the gateway (examples/fashion-mnist/service.yaml)"
spotml apply -f examples/fashion-mnist/service.yaml
for i in $(seq 120); do
  ready=$(spotml get services fashion-mnist -o json | /usr/bin/python3 -c '
import json, sys
s = json.load(sys.stdin)[0]
print(sum(s["readyByPriority"].values()))')
  [ "$ready" -ge 2 ] && break
  [ "$i" -eq 120 ] && { echo "the service did not get 2 ready replicas in 2 minutes; see spotml get replicas, $DATA/up.log"; exit 1; }
  sleep 1
done
spotml get services
spotml get replicas fashion-mnist

for _ in $(seq 50); do  # the gateway reloads its routes every 200ms
  curl -fsS "http://$GATEWAY/v2/models/fashion-mnist/ready" >/dev/null 2>&1 && break
  sleep 0.1
done

say "Classifying a Fashion-MNIST test image (an ankle boot) through the gateway"
echo "curl -s http://$GATEWAY/v2/models/fashion-mnist/infer -H 'Content-Type: application/json' -d @examples/fashion-mnist/sample-request.json"
curl -fsS "http://$GATEWAY/v2/models/fashion-mnist/infer" -H 'Content-Type: application/json' \
  -d @examples/fashion-mnist/sample-request.json | /usr/bin/python3 -c '
import json, sys
classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
scores = json.load(sys.stdin)["outputs"][0]["data"]
best = max(range(10), key=lambda k: scores[k])
print("predicted: %s (class %d); scores: %s" % (classes[best], best, " ".join("%.1f" % v for v in scores)))'
echo "metadata: curl -s http://$GATEWAY/v2/models/fashion-mnist"

if [ "${KEEP_RUNNING:-0}" = 1 ]; then
  echo; echo "spotml up keeps running (pid $UP). Web console: http://$ADDR/ (token: $(cat "$DATA/token"), also in $DATA/token)."
  echo "Stop it with: kill -INT $UP"
fi
