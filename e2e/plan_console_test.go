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

// TestConsolePlan: a viewer opens the console's Plan page, sees the
// server's traces, plans the example service on two of them and gets the
// per-tier table and the curves, with no error on the page.
func TestConsolePlan(t *testing.T) {
	b := newBrowser(t)
	traces := t.TempDir()
	day := `{"metadata": {"gap_seconds": 600}, "data": [` + strings.TrimSuffix(strings.Repeat("2, ", 150), ", ") + `]}`
	os.WriteFile(filepath.Join(traces, "stable.json"), []byte(day), 0o644)
	os.WriteFile(filepath.Join(traces, "gone.json"), []byte(strings.Replace(day, "2, 2, 2, 2, 2, 2", "0, 0, 0, 0, 0, 0", 1)), 0o644)
	c := newCluster(t, "--traces-dir", traces)
	viewer := strings.TrimSpace(c.mustCLI("token", "create", "planner", "--role", "viewer"))

	b.run("log in", 30*time.Second,
		chromedp.Navigate("http://"+c.addr+"/#/plan"),
		chromedp.WaitVisible("form#login input#token", chromedp.ByQuery),
		chromedp.SendKeys("#token", viewer+kb.Enter, chromedp.ByQuery),
		chromedp.WaitVisible(`main[data-page="plan"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#plan-traces option[value="stable.json"]`, chromedp.ByQuery))
	b.run("plan", 60*time.Second,
		chromedp.SetValue("#plan-start", "0s", chromedp.ByQuery),
		chromedp.SetValue("#plan-duration", "20h", chromedp.ByQuery),
		chromedp.SetValue("#plan-offsets", "5", chromedp.ByQuery),
		chromedp.SetValue("#plan-qps", "40", chromedp.ByQuery),
		chromedp.Click("#plan-go", chromedp.ByQuery),
		chromedp.WaitVisible(`#plan-results tr[data-tier="strict"]`, chromedp.ByQuery),
		waitText("#plan-results", "prod (spec)"),
		chromedp.WaitVisible("#chart-plan-ready canvas", chromedp.ByQuery),
		chromedp.WaitVisible("#chart-plan-avail canvas", chromedp.ByQuery))
	b.screenshot("plan")
	var rows int
	b.run("rows", 5*time.Second, chromedp.Evaluate(`document.querySelectorAll('#plan-results tr[data-tier]').length`, &rows))
	if rows != 3 {
		t.Errorf("%d tier rows, want dev, prod and strict", rows)
	}
	// A spec without a service is refused on the page, with the reason.
	b.run("bad spec", 20*time.Second,
		chromedp.SetValue("#plan-spec", "kind: Nothing", chromedp.ByQuery),
		chromedp.Click("#plan-go", chromedp.ByQuery),
		waitText("#plan-status", "kind"))
	if ex := b.exceptions(); len(ex) > 0 {
		t.Errorf("the page threw: %v", ex)
	}
}
