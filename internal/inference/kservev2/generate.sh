#!/usr/bin/env bash
# Regenerates grpc_predict_v2.pb.go and grpc_predict_v2_grpc.pb.go from
# grpc_predict_v2.proto (go generate ./internal/inference/kservev2). The
# generated files are committed: building spotml needs no protoc.
#
# Needs protoc (Debian: apt-get install protobuf-compiler) and the Go
# plugins, installed at the versions the committed files were made with:
#
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
set -euo pipefail
cd "$(dirname "$0")"
pkg=github.com/spotml/spotml/internal/inference/kservev2
# The published .proto has no go_package option; M maps it to this package
# so that the file stays exactly as published.
protoc --proto_path=. \
	--go_out=. --go_opt=paths=source_relative --go_opt=Mgrpc_predict_v2.proto=$pkg \
	--go-grpc_out=. --go-grpc_opt=paths=source_relative --go-grpc_opt=Mgrpc_predict_v2.proto=$pkg \
	grpc_predict_v2.proto
