// Package kservev2 is the Open Inference Protocol's gRPC API
// (inference.GRPCInferenceService, KServe v2 / Triton's predict protocol),
// generated from the published grpc_predict_v2.proto
// (https://github.com/kserve/kserve/blob/master/docs/predict-api/v2/grpc_predict_v2.proto)
// with protoc-gen-go and protoc-gen-go-grpc. Only generate.sh writes the
// .pb.go files; the proto is kept as published.
package kservev2

//go:generate bash generate.sh
