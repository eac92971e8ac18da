package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"

	"github.com/spotml/spotml/internal/gateway"
	"github.com/spotml/spotml/internal/inference/kservev2"
)

// BenchmarkGRPCProxy measures a unary KServe v2 call (one 28×28 image in
// raw contents) straight to a grpc-go replica, through the gateway (a
// transparent HTTP/2 proxy in net/http: grpc.go), and through the other way
// a gRPC proxy is built: a grpc-go server with an unknown-service handler
// and a raw-bytes codec, forwarding on a grpc.ClientConn (rawProxy below, a
// sketch with no balancing, keys or retries: a lower bound on its cost).
// This is the measurement behind grpc.go's choice.
//
//	go test -run XXX -bench GRPCProxy -benchmem ./internal/gateway
func BenchmarkGRPCProxy(b *testing.B) {
	rp := &benchReplica{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	kservev2.RegisterGRPCInferenceServiceServer(srv, rp)
	go srv.Serve(ln)
	defer srv.Stop()
	replica := ln.Addr().String()

	g := gateway.New(gateway.Config{})
	g.Update([]gateway.Route{{Service: "m", Replicas: []gateway.Replica{{ID: "m-1", Addr: replica}}}})
	front := httptest.NewUnstartedServer(g)
	gateway.ServeProtocols(front.Config)
	front.Start()
	defer front.Close()

	raw, stop := startRawProxy(b, replica)
	defer stop()

	req := &kservev2.ModelInferRequest{ModelName: "m",
		Inputs:           []*kservev2.ModelInferRequest_InferInputTensor{{Name: "input", Datatype: "FP32", Shape: []int64{1, 1, 28, 28}}},
		RawInputContents: [][]byte{make([]byte, 4*28*28)}}
	for _, conc := range []int{1, 64} {
		for _, target := range []struct{ name, addr string }{
			{"direct", replica},
			{"gateway-h2proxy", front.Listener.Addr().String()},
			{"grpcgo-rawproxy", raw},
		} {
			b.Run(fmt.Sprintf("c=%d/%s", conc, target.name), func(b *testing.B) {
				conn, err := grpc.NewClient("passthrough:///"+target.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				client := kservev2.NewGRPCInferenceServiceClient(conn)
				if _, err := client.ModelInfer(context.Background(), req); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.SetParallelism(conc)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := client.ModelInfer(context.Background(), req); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

type benchReplica struct {
	kservev2.UnimplementedGRPCInferenceServiceServer
}

var benchAnswer = &kservev2.ModelInferResponse{ModelName: "m", RawOutputContents: [][]byte{make([]byte, 40)},
	Outputs: []*kservev2.ModelInferResponse_InferOutputTensor{{Name: "logits", Datatype: "FP32", Shape: []int64{1, 10}}}}

func (benchReplica) ModelInfer(context.Context, *kservev2.ModelInferRequest) (*kservev2.ModelInferResponse, error) {
	return benchAnswer, nil
}

// rawCodec passes messages through as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

// startRawProxy runs the grpc-go alternative: every call, whatever its
// service, forwarded as bytes to one replica.
func startRawProxy(b *testing.B, replica string) (string, func()) {
	cc, err := grpc.NewClient("passthrough:///"+replica, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		b.Fatal(err)
	}
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	handler := func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		md, _ := metadata.FromIncomingContext(ss.Context())
		ctx := metadata.NewOutgoingContext(ss.Context(), md)
		cs, err := cc.NewStream(ctx, desc, method)
		if err != nil {
			return err
		}
		var in []byte
		for {
			if err := ss.RecvMsg(&in); err == io.EOF {
				break
			} else if err != nil {
				return err
			}
			if err := cs.SendMsg(&in); err != nil {
				return err
			}
		}
		if err := cs.CloseSend(); err != nil {
			return err
		}
		if h, err := cs.Header(); err == nil {
			ss.SendHeader(h)
		}
		var out []byte
		for {
			if err := cs.RecvMsg(&out); err == io.EOF {
				ss.SetTrailer(cs.Trailer())
				return nil
			} else if err != nil {
				return err
			}
			if err := ss.SendMsg(&out); err != nil {
				return err
			}
		}
	}
	srv := grpc.NewServer(grpc.UnknownServiceHandler(handler), grpc.ForceServerCodec(rawCodec{}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	return ln.Addr().String(), func() { srv.Stop(); cc.Close() }
}
