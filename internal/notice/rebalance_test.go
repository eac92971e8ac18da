package notice_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/spotml/spotml/internal/notice"
)

// TestRebalanceRecommendation: the simulated metadata service serves AWS's
// events/recommendations/rebalance item as IMDSv2 does, read by the AWS
// SDK's own IMDS client (a token first, then the item) and by spotml's
// watcher, and it is no notice: instance-action stays 404.
func TestRebalanceRecommendation(t *testing.T) {
	srv := notice.NewServer(nil, nil)
	srv.Register("n1", notice.FormatAWS)
	srv.Register("z1", notice.FormatAzure)
	// The SDK client sets the path to the item's own (/latest/...): this
	// VM's metadata address is the node's prefix of the simulation.
	vm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Path = "/nodes/n1" + r.URL.Path
		srv.ServeHTTP(w, r)
	}))
	defer vm.Close()
	sdk := imds.New(imds.Options{Endpoint: vm.URL})
	read := func() (string, int) {
		t.Helper()
		out, err := sdk.GetMetadata(t.Context(), &imds.GetMetadataInput{Path: "events/recommendations/rebalance"})
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) {
			return "", re.HTTPStatusCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		defer out.Content.Close()
		b, _ := io.ReadAll(out.Content)
		return string(b), 200
	}
	if _, status := read(); status != http.StatusNotFound {
		t.Errorf("before a recommendation: status %d, want 404", status)
	}
	all := httptest.NewServer(srv)
	defer all.Close()
	w, err := notice.NewWatcher(notice.FormatAWS, notice.BaseURL(all.URL, "n1"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rw := w.(notice.RiskWatcher)
	if _, seen, err := rw.PollRisk(t.Context()); seen || err != nil {
		t.Errorf("watcher before a recommendation: %v, %v", seen, err)
	}

	at := time.Date(2026, 11, 30, 5, 1, 2, 500, time.UTC)
	srv.SetRebalance("n1", at)
	srv.SetRebalance("n1", at.Add(time.Hour)) // the first stays
	srv.SetRebalance("z1", at)                // not an AWS node: nothing
	if body, status := read(); status != 200 || body != `{"noticeTime":"2026-11-30T05:01:02Z"}` {
		t.Errorf("recommendation = %d %s", status, body)
	}
	r, seen, err := rw.PollRisk(t.Context())
	if !seen || err != nil || !r.Since.Equal(at.Truncate(time.Second)) || r.Format != notice.FormatAWS {
		t.Errorf("watcher: %+v, %v, %v", r, seen, err)
	}
	if _, seen, err := w.Poll(t.Context()); seen || err != nil {
		t.Errorf("a recommendation read as a notice: %v, %v", seen, err)
	}
	// Without a token, 401, as every IMDSv2 item.
	resp, err := http.Get(notice.BaseURL(all.URL, "n1") + "/latest/meta-data/events/recommendations/rebalance")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a token: %s", resp.Status)
	}
	zw, _ := notice.NewWatcher(notice.FormatAzure, notice.BaseURL(all.URL, "z1"), nil, nil)
	if _, ok := zw.(notice.RiskWatcher); ok {
		t.Error("the azure watcher claims to read rebalance recommendations")
	}
}
