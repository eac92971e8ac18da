#!/usr/bin/env bash
# Builds the real Kubernetes the tests run against (internal/kubetest):
# kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from
# k8s.io/kubernetes v1.37.2, through the wrapper module in scripts/kube, and
# etcd 3.7.3 from go.etcd.io/etcd/server/v3 (scripts/kube/etcd). Everything
# comes from the Go module proxy; see ../shared/kubernetes-here.md.
#
#   bash scripts/kube-build.sh            # into build/kube/v1.37.2/bin
#   KUBE_BIN_DIR=/elsewhere bash scripts/kube-build.sh
#
# A binary already in the output directory that reports the right version is
# kept, so a warm run costs seconds; a cold one takes 15-25 minutes on 2 cores
# (the Go build cache then makes a rebuild of a lost binary quick). Builds run
# one package at a time (-p 1) to keep peak memory near 2.5 GB. The tests find
# the binaries through SPOTML_KUBE_BIN (same default directory).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

KUBE_VERSION=v1.37.2
ETCD_VERSION=3.7.3
out="${KUBE_BIN_DIR:-$repo/build/kube/$KUBE_VERSION/bin}"
mkdir -p "$out"
export CGO_ENABLED=0
par="${KUBE_BUILD_P:-1}"

# have NAME WANT: the binary is there and its --version output names WANT.
have() {
  [ -x "$out/$1" ] && "$out/$1" --version 2>/dev/null | grep -q -- "$2"
}

ver=k8s.io/component-base/version
ldflags="-s -w -X $ver.gitVersion=$KUBE_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=37 -X $ver.gitTreeState=clean -X $ver.buildDate=1970-01-01T00:00:00Z"

# The apiserver first: it is the longest build and the others reuse its cache.
for name in kube-apiserver kube-controller-manager kube-scheduler kubelet; do
  if have "$name" "Kubernetes $KUBE_VERSION"; then
    echo "kube-build: $name $KUBE_VERSION already in $out"
    continue
  fi
  echo "kube-build: building $name $KUBE_VERSION ($(date -u +%H:%M:%S))"
  start=$SECONDS
  # Into a temporary name first: an interrupted build leaves no binary that
  # a later run would take for a finished one.
  (cd scripts/kube && go build -p "$par" -trimpath -ldflags "$ldflags" -o "$out/.$name.tmp" "./$name")
  mv -f "$out/.$name.tmp" "$out/$name"
  echo "kube-build: $name built in $((SECONDS - start))s"
done

if have etcd "etcd Version: $ETCD_VERSION"; then
  echo "kube-build: etcd $ETCD_VERSION already in $out"
else
  echo "kube-build: building etcd $ETCD_VERSION ($(date -u +%H:%M:%S))"
  start=$SECONDS
  (cd scripts/kube/etcd && go build -p "$par" -trimpath -ldflags "-s -w" -o "$out/.etcd.tmp" .)
  mv -f "$out/.etcd.tmp" "$out/etcd"
  echo "kube-build: etcd built in $((SECONDS - start))s"
fi
echo "kube-build: binaries in $out"
