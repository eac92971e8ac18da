package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// TestConsoleBatchInference: the console's BatchInference pages. The list
// is open before the batch is applied; the batch appears and runs to its
// end there without a reload (the watch stream's "batches" event), and its
// page shows the counts and the failed item with its reason.
func TestConsoleBatchInference(t *testing.T) {
	requireORT(t)
	b := newBrowser(t)
	c := newServingCluster(t)
	c.putModel("models/fmnist.onnx")
	in := filepath.Join(c.data, "blobs", "uploads")
	const n = 200
	writePNGs(t, in, n)
	if err := os.WriteFile(filepath.Join(in, "batch-0", "broken.png"), []byte("not a png"), 0o644); err != nil {
		t.Fatal(err)
	}
	token, err := os.ReadFile(filepath.Join(c.data, "token"))
	if err != nil {
		t.Fatal(err)
	}
	b.run("log in", 30*time.Second,
		chromedp.Navigate("http://"+c.addr+"/#/batchinferences"),
		chromedp.WaitVisible("form#login input#token", chromedp.ByQuery),
		chromedp.SendKeys("#token", strings.TrimSpace(string(token))+kb.Enter, chromedp.ByQuery),
		chromedp.WaitVisible(`main[data-page="batchinferences"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#live[data-state="live"]`, chromedp.ByQuery),
		waitText("main", "No batch inferences yet"))

	c.apply(pool("spot-a", "spot", 2) + batchYAML("score", "uploads/", "**/*.png", "spot-a", ""))
	row := `tr[data-batch="score"]`
	b.run("the batch appears and finishes", 90*time.Second,
		chromedp.WaitVisible(row, chromedp.ByQuery),
		waitText(row, "201/201"),
		waitText(row, "succeeded"))
	b.screenshot("20-batchinferences")

	b.run("the batch's page", 30*time.Second,
		chromedp.Click(row+" a", chromedp.ByQuery),
		chromedp.WaitVisible(`main[data-page="batchinference"]`, chromedp.ByQuery),
		waitText(`[data-card="items"]`, "201/201"),
		waitText(`[data-card="items"]`, "200 done, 1 failed"),
		waitText(`[data-card="inflight"]`, "0 pending"),
		waitText(`[data-card="cost"]`, "on demand"),
		waitText(`tr[data-item="batch-0/broken.png"]`, "decode image"))
	b.screenshot("21-batchinference")
	if ex := b.exceptions(); len(ex) > 0 {
		t.Errorf("the page threw:\n%s", strings.Join(ex, "\n"))
	}
}
