package gateway_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/spotml/spotml/internal/gateway"
	"github.com/spotml/spotml/internal/inference/kservev2"
)

// grpcReplica is a KServe v2 gRPC server on loopback (grpc-go's own, as
// spotml serve runs): it answers ModelInfer with its id in the answer's Id,
// or with the status fail holds.
type grpcReplica struct {
	kservev2.UnimplementedGRPCInferenceServiceServer
	id    string
	addr  string
	calls atomic.Int64
	fail  atomic.Int32 // a codes.Code; 0: answer
	keys  chan metadata.MD
	srv   *grpc.Server
}

func newGRPCReplica(t *testing.T, id string) *grpcReplica {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rp := &grpcReplica{id: id, addr: ln.Addr().String(), srv: grpc.NewServer(), keys: make(chan metadata.MD, 100)}
	kservev2.RegisterGRPCInferenceServiceServer(rp.srv, rp)
	go rp.srv.Serve(ln)
	t.Cleanup(rp.srv.Stop)
	return rp
}

func (rp *grpcReplica) ModelInfer(ctx context.Context, req *kservev2.ModelInferRequest) (*kservev2.ModelInferResponse, error) {
	rp.calls.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	select {
	case rp.keys <- md:
	default:
	}
	if c := codes.Code(rp.fail.Load()); c != codes.OK {
		return nil, status.Error(c, rp.id+" fails")
	}
	return &kservev2.ModelInferResponse{ModelName: req.ModelName, Id: rp.id}, nil
}

func (rp *grpcReplica) ServerLive(context.Context, *kservev2.ServerLiveRequest) (*kservev2.ServerLiveResponse, error) {
	rp.calls.Add(1)
	return &kservev2.ServerLiveResponse{Live: true}, nil
}

// grpcFront serves g over HTTP/1.1 and h2c as spotml gateway does, and
// returns a client generated from grpc_predict_v2.proto connected to it.
func grpcFront(t *testing.T, g *gateway.Gateway) kservev2.GRPCInferenceServiceClient {
	t.Helper()
	front := httptest.NewUnstartedServer(g)
	gateway.ServeProtocols(front.Config)
	front.Start()
	t.Cleanup(front.Close)
	conn, err := grpc.NewClient("passthrough:///"+front.Listener.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kservev2.NewGRPCInferenceServiceClient(conn)
}

func TestGRPCRouting(t *testing.T) {
	a, b := newGRPCReplica(t, "a-1"), newGRPCReplica(t, "b-1")
	g := gateway.New(gateway.Config{})
	g.Update([]gateway.Route{
		{Service: "a", Replicas: []gateway.Replica{{ID: "a-1", Addr: a.addr}}},
		{Service: "b", Keys: []string{"kb"}, Replicas: []gateway.Replica{{ID: "b-1", Addr: b.addr}}},
	})
	client := grpcFront(t, g)
	ctx := t.Context()

	// By the model name in the message.
	r, err := client.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: "a"})
	if err != nil || r.Id != "a-1" {
		t.Fatalf("ModelInfer a: %v %v", r, err)
	}
	// By the metadata, which wins over the message.
	r, err = client.ModelInfer(metadata.AppendToOutgoingContext(ctx, "spotml-service", "b", "x-api-key", "kb"), &kservev2.ModelInferRequest{ModelName: "a"})
	if err != nil || r.Id != "b-1" {
		t.Fatalf("ModelInfer with spotml-service b: %v %v", r, err)
	}
	// The key that the gateway checked is not passed on; other metadata is.
	md := <-b.keys
	if len(md.Get("x-api-key")) != 0 || len(md.Get("spotml-service")) != 0 {
		t.Errorf("replica got %v: the key and the routing metadata must not be passed on", md)
	}
	if _, err := client.ModelInfer(metadata.AppendToOutgoingContext(ctx, "x-api-key", "kb", "trace-id", "t1"), &kservev2.ModelInferRequest{ModelName: "b"}); err != nil {
		t.Fatal(err)
	}
	if md := <-b.keys; md.Get("trace-id")[0] != "t1" {
		t.Errorf("replica got %v: other metadata must pass", md)
	}
	// A ServerLive named to a service goes to a replica; one that names
	// none is the gateway's own.
	before := a.calls.Load()
	if _, err := client.ServerLive(metadata.AppendToOutgoingContext(ctx, "spotml-service", "a"), &kservev2.ServerLiveRequest{}); err != nil || a.calls.Load() != before+1 {
		t.Errorf("ServerLive to a: %v, calls %d", err, a.calls.Load()-before)
	}
	if l, err := client.ServerLive(ctx, &kservev2.ServerLiveRequest{}); err != nil || !l.Live || a.calls.Load() != before+1 {
		t.Errorf("ServerLive at the gateway: %v %v", l, err)
	}

	for _, tc := range []struct {
		name string
		ctx  context.Context
		req  *kservev2.ModelInferRequest
		code codes.Code
		msg  string
	}{
		{"unknown model", ctx, &kservev2.ModelInferRequest{ModelName: "nope"}, codes.NotFound, `model "nope" not found`},
		{"no model name", ctx, &kservev2.ModelInferRequest{}, codes.InvalidArgument, "names no model"},
		{"no key", ctx, &kservev2.ModelInferRequest{ModelName: "b"}, codes.Unauthenticated, "x-api-key"},
		{"wrong key", metadata.AppendToOutgoingContext(ctx, "x-api-key", "nope"), &kservev2.ModelInferRequest{ModelName: "b"}, codes.Unauthenticated, "x-api-key"},
		{"unknown service in metadata", metadata.AppendToOutgoingContext(ctx, "spotml-service", "zz"), &kservev2.ModelInferRequest{ModelName: "a"}, codes.NotFound, `"zz"`},
	} {
		_, err := client.ModelInfer(tc.ctx, tc.req)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("%s: %v, want %v with %q", tc.name, err, tc.code, tc.msg)
		}
	}
	// ServerMetadata names no model: the metadata must name the service.
	if _, err := client.ServerMetadata(ctx, &kservev2.ServerMetadataRequest{}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spotml-service") {
		t.Errorf("ServerMetadata without a service: %v", err)
	}
	// A replica's own status passes through untouched.
	a.fail.Store(int32(codes.ResourceExhausted))
	if _, err := client.ModelInfer(ctx, &kservev2.ModelInferRequest{ModelName: "a"}); status.Code(err) != codes.ResourceExhausted || status.Convert(err).Message() != "a-1 fails" {
		t.Errorf("replica's status: %v", err)
	}
}

func TestGRPCBalancingDrainingAndRetries(t *testing.T) {
	r1, r2, r3 := newGRPCReplica(t, "m-1"), newGRPCReplica(t, "m-2"), newGRPCReplica(t, "m-3")
	g := gateway.New(gateway.Config{})
	route := func(draining1 bool) {
		g.Update([]gateway.Route{{Service: "m", Replicas: []gateway.Replica{
			{ID: "m-1", Addr: r1.addr, Draining: draining1}, {ID: "m-2", Addr: r2.addr}, {ID: "m-3", Addr: r3.addr}}}})
	}
	route(false)
	client := grpcFront(t, g)
	call := func() string {
		t.Helper()
		r, err := client.ModelInfer(t.Context(), &kservev2.ModelInferRequest{ModelName: "m"})
		if err != nil {
			t.Fatalf("ModelInfer: %v", err)
		}
		return r.Id
	}
	seen := map[string]int{}
	for range 60 {
		seen[call()]++
	}
	if len(seen) != 3 {
		t.Errorf("calls per replica %v: want all three used", seen)
	}

	// A noticed replica gets no new call.
	route(true)
	n1 := r1.calls.Load()
	for range 30 {
		call()
	}
	if d := r1.calls.Load() - n1; d != 0 {
		t.Errorf("draining replica got %d calls", d)
	}

	// A draining replica that refuses with UNAVAILABLE (it is shutting
	// down): the call goes to another one.
	r2.fail.Store(int32(codes.Unavailable))
	r3.srv.Stop() // and m-3 is gone: connection refused
	g.Update([]gateway.Route{{Service: "m", Replicas: []gateway.Replica{
		{ID: "m-2", Addr: r2.addr, Draining: true}, {ID: "m-3", Addr: r3.addr}, {ID: "m-1", Addr: r1.addr}}}})
	for range 10 {
		if id := call(); id != "m-1" {
			t.Fatalf("answered by %s, want m-1", id)
		}
	}
	st := g.Stats()[0]
	if st.Errors != 0 || st.Requests != 100 {
		t.Errorf("service stats: %d calls, %d errors; want the 100 calls counted, none failed", st.Requests, st.Errors)
	}

	// The same UNAVAILABLE from a replica that stays is its answer, not
	// retried.
	g.Update([]gateway.Route{{Service: "m", Replicas: []gateway.Replica{{ID: "m-2", Addr: r2.addr}}}})
	if _, err := client.ModelInfer(t.Context(), &kservev2.ModelInferRequest{ModelName: "m"}); status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "m-2 fails" {
		t.Errorf("UNAVAILABLE from a replica that stays: %v", err)
	}
	// No replica left to take it: UNAVAILABLE from the gateway.
	g.Update([]gateway.Route{{Service: "m"}})
	if _, err := client.ModelInfer(t.Context(), &kservev2.ModelInferRequest{ModelName: "m"}); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no ready replica") {
		t.Errorf("no replica: %v", err)
	}
}

// TestGRPCMalformedCalls: a call whose message cannot be routed by its model
// name gets INVALID_ARGUMENT saying what is wrong and how to name the
// service instead, as a gRPC status (HTTP 200, grpc-status in the headers).
func TestGRPCMalformedCalls(t *testing.T) {
	g := gateway.New(gateway.Config{})
	g.Update([]gateway.Route{{Service: "m", Replicas: []gateway.Replica{{ID: "m-1", Addr: "127.0.0.1:1"}}}})
	front := httptest.NewUnstartedServer(g)
	gateway.ServeProtocols(front.Config)
	front.Start()
	t.Cleanup(front.Close)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{Protocols: &p}}
	t.Cleanup(client.CloseIdleConnections)

	frame := func(flag byte, n uint32, msg []byte) []byte {
		return append([]byte{flag, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}, msg...)
	}
	name := []byte{0x0a, 0x01, 'm'} // field 1, "m"
	for _, tc := range []struct {
		name, path string
		body       []byte
		code       codes.Code
		msg        string
	}{
		{"no message", "/inference.GRPCInferenceService/ModelInfer", nil, codes.InvalidArgument, "no request message"},
		{"compressed", "/inference.GRPCInferenceService/ModelInfer", frame(1, 3, name), codes.InvalidArgument, "compressed"},
		{"cut short", "/inference.GRPCInferenceService/ModelInfer", frame(0, 30, name), codes.InvalidArgument, "declares 30 bytes but 3 came"},
		{"not protobuf", "/inference.GRPCInferenceService/ModelMetadata", frame(0, 2, []byte{0x0a, 0x05}), codes.InvalidArgument, "malformed"},
		{"another service", "/my.Service/Do", frame(0, 3, name), codes.InvalidArgument, "spotml-service"},
	} {
		req, _ := http.NewRequest("POST", front.URL+tc.path, bytes.NewReader(tc.body))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		resp.Body.Close()
		got, msg := resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 || got != strconv.Itoa(int(tc.code)) || !strings.Contains(msg, tc.msg) {
			t.Errorf("%s: %s %s grpc-status %s %q, want %d with %q", tc.name, resp.Proto, resp.Status, got, msg, tc.code, tc.msg)
		}
	}
}
