#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that `spotml serve` (the builtin
# inference runtime, internal/inference) loads at run time.
#
#   bash scripts/fetch-onnxruntime.sh [DEST]     # DEST: build/onnxruntime
#
# The library comes from the npm package onnxruntime-node, which ships the
# official Linux x64 CPU build of libonnxruntime.so inside its tarball: npm is
# the one registry with ONNX Runtime binaries that this project's machines can
# reach. The tarball is only downloaded (npm pack) — nothing is installed and
# no package script runs. The version must serve ORT C API version 24, which
# github.com/yalue/onnxruntime_go v1.27.0 asks for: 1.24.x does (newer
# libraries serve older API versions too).
#
# Idempotent: when DEST/libonnxruntime.so already loads as that version, it
# only says where it is.
set -euo pipefail

ORT_VERSION=1.24.3
PACKAGE="onnxruntime-node@${ORT_VERSION}"
SO_NAME=libonnxruntime.so

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-"$root/build/onnxruntime"}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

case "$(uname -s)/$(uname -m)" in
Linux/x86_64) arch=x64 ;;
Linux/aarch64 | Linux/arm64) arch=arm64 ;;
*)
	echo "fetch-onnxruntime: $(uname -s)/$(uname -m) is not supported: onnxruntime-node ships Linux x64 and arm64 builds; build ONNX Runtime ${ORT_VERSION} yourself and set SPOTML_ONNXRUNTIME_LIB to its libonnxruntime.so" >&2
	exit 1
	;;
esac

# The versioned file is what the package ships; the marker records which
# version it is, so that a later version bump here replaces it.
marker="$dest/.version"
if [[ -e "$dest/$SO_NAME" && "$(cat "$marker" 2>/dev/null)" == "$ORT_VERSION" ]]; then
	echo "ONNX Runtime ${ORT_VERSION} is already in $dest/$SO_NAME"
	exit 0
fi

if ! command -v npm >/dev/null; then
	echo "fetch-onnxruntime: npm is needed to download $PACKAGE (apt-get install npm), or set SPOTML_ONNXRUNTIME_LIB to a libonnxruntime.so you have" >&2
	exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "downloading $PACKAGE (about 85 MB) ..."
tarball=$(cd "$work" && npm pack --ignore-scripts --silent "$PACKAGE" | tail -n 1)
inside="package/bin/napi-v6/linux/$arch"
# --wildcards: the package names the file libonnxruntime.so.1; take whatever
# versioned names it has rather than guessing.
if ! tar -xzf "$work/$tarball" -C "$work" --wildcards "$inside/$SO_NAME*" 2>/dev/null; then
	echo "fetch-onnxruntime: $PACKAGE has no $inside/$SO_NAME* in its tarball" >&2
	exit 1
fi

versioned=""
for f in "$work/$inside/$SO_NAME"*; do
	[[ -L "$f" ]] && continue
	cp -f "$f" "$dest/"
	versioned=$(basename "$f")
done
# The loader is given DEST/libonnxruntime.so; point it at the versioned file.
if [[ "$versioned" != "$SO_NAME" ]]; then
	ln -sfn "$versioned" "$dest/$SO_NAME"
fi
echo "$ORT_VERSION" >"$marker"
echo "ONNX Runtime ${ORT_VERSION} is in $dest/$SO_NAME"
