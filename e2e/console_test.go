package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
)

// The web console in a real browser (Debian's chromium, driven over the
// DevTools protocol by chromedp) against a real `spotml up`.

// findBrowser returns the Chromium to drive: $SPOTML_CHROMIUM or the first
// one on PATH. Without one the test skips, or fails when
// SPOTML_REQUIRE_BROWSER=1 (CI sets it).
func findBrowser(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SPOTML_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no Chromium found: apt-get install chromium, or set SPOTML_CHROMIUM"
	if os.Getenv("SPOTML_REQUIRE_BROWSER") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// artifacts is where the screenshots go: $SPOTML_ARTIFACTS/console or
// build/artifacts/console in the repository.
func artifacts(t *testing.T) string {
	dir := os.Getenv("SPOTML_ARTIFACTS")
	if dir == "" {
		dir, _ = filepath.Abs(filepath.Join("..", "build", "artifacts"))
	}
	dir = filepath.Join(dir, "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser is one headless Chromium with a fresh profile.
type browser struct {
	t       *testing.T
	ctx     context.Context
	shot    string // screenshot directory
	mu      *sync.Mutex
	console *[]string // what the page logged and threw
}

// exceptions returns the uncaught exceptions the page threw so far.
func (b *browser) exceptions() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, l := range *b.console {
		if strings.HasPrefix(l, "exception: ") {
			out = append(out, l)
		}
	}
	return out
}

func newBrowser(t *testing.T) *browser {
	exe := findBrowser(t)
	// Not t.TempDir: Chromium may still write to its profile while the
	// test's directories are removed.
	profile, err := os.MkdirTemp("", "spotml-chromium")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1366, 900),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // root in CI
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	var console []string
	var mu sync.Mutex
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelA()
		os.RemoveAll(profile)
		mu.Lock()
		defer mu.Unlock()
		if t.Failed() && len(console) > 0 {
			t.Logf("browser console:\n%s", tail(strings.Join(console, "\n"), 4000))
		}
	})
	listenConsole(ctx, &mu, &console)
	if err := chromedp.Run(ctx); err != nil { // starts the browser
		t.Fatalf("start %s: %v", exe, err)
	}
	return &browser{t: t, ctx: ctx, shot: artifacts(t), mu: &mu, console: &console}
}

// run runs actions with a deadline; on failure it saves a screenshot
// named after the step.
func (b *browser) run(step string, d time.Duration, actions ...chromedp.Action) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		b.screenshot("failed-" + step)
		var html string
		hctx, hcancel := context.WithTimeout(b.ctx, 5*time.Second)
		chromedp.Run(hctx, chromedp.OuterHTML("main", &html, chromedp.ByQuery))
		hcancel()
		b.t.Fatalf("%s: %v\npage main:\n%s", step, err, tail(html, 3000))
	}
}

// screenshot saves the whole page as NAME.png.
func (b *browser) screenshot(name string) {
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	var png []byte
	// Quality 100 makes FullScreenshot a PNG.
	if err := chromedp.Run(ctx, chromedp.FullScreenshot(&png, 100)); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	f := filepath.Join(b.shot, name+".png")
	if err := os.WriteFile(f, png, 0o644); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
	}
}

// waitText waits until the element's text contains want.
func waitText(sel, want string) chromedp.Action {
	return chromedp.ActionFunc(func(ctx context.Context) error {
		for {
			var got string
			err := chromedp.Run(ctx, chromedp.Text(sel, &got, chromedp.ByQuery, chromedp.AtLeast(0)))
			if err == nil && strings.Contains(got, want) {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for %q in %s (has %q): %w", want, sel, tail(got, 300), ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

// TestConsole logs in, sees spot and on-demand nodes, watches a node get
// a notice and then go away without reloading the page, reads a task's
// log, looks at a service, the events and the cost, and classifies a
// Fashion-MNIST image through the gateway from the page. Screenshots of
// every page are saved (build/artifacts/console).
func TestConsole(t *testing.T) {
	requireORT(t)
	b := newBrowser(t)
	c := newServingCluster(t)
	c.putModel("models/console.onnx")
	c.apply(consolePool("spot-a", spec.PrioritySpot, 2) + consolePool("od", spec.PriorityOnDemand, 1) +
		serviceYAML("fmnist", "models/console.onnx", "dev", 1, 1, "") + `---
apiVersion: spotml/v1
kind: Job
metadata: {name: hello}
spec:
  pool: od
  tasks:
    - name: greet
      command: |
        echo "hello from the console test"
        echo "a warning" >&2
        mkdir -p out && echo '{"accuracy": 0.9}' > out/metrics.json
      outputFiles:
        - {pattern: "out/**", destination: "outputs/hello/", upload: onSuccess}
      resources: {cpu: 1, memory: 128Mi}
---
apiVersion: spotml/v1
kind: Job
metadata: {name: slow}
spec:
  pool: od
  tasks:
    - name: work
      command: |
        echo "3/10 step 3 of 10" > "$SPOTML_PROGRESS_FILE"
        sleep 600
      resources: {cpu: 1, memory: 128Mi}
`)
	c.waitServing("fmnist", 1, 90*time.Second)
	waitFor(t, 60*time.Second, "job hello to succeed", func() bool { return c.job("hello").State == api.JobSucceeded })
	token, err := os.ReadFile(filepath.Join(c.data, "token"))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + c.addr + "/"

	// Log in: a wrong token is refused with a message, the right one
	// shows the fleet.
	b.run("open", 20*time.Second,
		chromedp.Navigate(base),
		chromedp.WaitVisible("form#login input#token", chromedp.ByQuery))
	b.screenshot("01-login")
	b.run("wrong token", 10*time.Second,
		chromedp.SendKeys("#token", "not-the-token", chromedp.ByQuery),
		chromedp.Click(`form#login button[type="submit"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#login-error", chromedp.ByQuery),
		waitText("#login-error", "token"))
	b.run("log in", 15*time.Second,
		chromedp.Evaluate(`document.querySelector('#token').value = ''`, nil),
		chromedp.SendKeys("#token", strings.TrimSpace(string(token))+kb.Enter, chromedp.ByQuery),
		chromedp.WaitVisible(`main[data-page="fleet"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-priority="spot"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-priority="ondemand"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#live[data-state="live"]`, chromedp.ByQuery))
	b.screenshot("02-fleet")

	// Evict a spot node that runs no replica from the CLI; the page
	// shows its notice counting down, then the eviction.
	var victim string
	waitFor(t, 30*time.Second, "an idle ready spot node", func() bool {
		for _, n := range c.nodes() {
			if n.Priority == spec.PrioritySpot && n.State == api.NodeReady && n.Replicas == 0 {
				victim = n.Name
				return true
			}
		}
		return false
	})
	c.mustCLI("evict", victim, "--notice", "6s")
	row := fmt.Sprintf(`tr[data-node=%q]`, victim)
	b.run("notice shown", 10*time.Second,
		chromedp.WaitVisible(row+` .notice`, chromedp.ByQuery),
		waitText(row+` .notice`, "left"))
	b.screenshot("03-fleet-notice")
	b.run("eviction shown", 30*time.Second,
		chromedp.WaitVisible(row+`[data-state="preempted"]`, chromedp.ByQuery))
	b.screenshot("04-fleet-evicted")

	// Jobs: the job, its task, the task's stdout and stderr, its output.
	b.run("jobs", 15*time.Second,
		chromedp.Click(`a[href="#/jobs"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-job="hello"]`, chromedp.ByQuery))
	b.screenshot("05-jobs")
	b.run("task logs", 15*time.Second,
		chromedp.Click(`tr[data-job="hello"] a[href="#/jobs/hello"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-task="greet"]`, chromedp.ByQuery),
		chromedp.Click(`button[data-logs="greet"]`, chromedp.ByQuery),
		waitText("pre#logs", "hello from the console test"),
		chromedp.WaitVisible(`a.download`, chromedp.ByQuery),
		waitText(`a.download`, "metrics.json"))
	b.screenshot("06-job-logs")
	b.run("task stderr", 10*time.Second,
		chromedp.Click(`button[data-stream="stderr"]`, chromedp.ByQuery),
		waitText("pre#logs", "a warning"))

	// A running task's own progress (SPOTML_PROGRESS_FILE), on the page
	// and in the CLI.
	b.run("task progress", 30*time.Second,
		chromedp.Click(`a[href="#/jobs"]`, chromedp.ByQuery),
		chromedp.Click(`tr[data-job="slow"] a[href="#/jobs/slow"]`, chromedp.ByQuery),
		waitText(`tr[data-task="work"] .task-progress`, "30 %"),
		waitText(`tr[data-task="work"] .task-progress`, "step 3 of 10"))
	b.screenshot("06b-job-progress")
	if out := c.mustCLI("get", "tasks", "slow"); !strings.Contains(out, "30% step 3 of 10") {
		t.Errorf("spotml get tasks slow shows no progress:\n%s", out)
	}

	// Services: the replica and the charts.
	b.run("services", 15*time.Second,
		chromedp.Click(`a[href="#/services"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-service="fmnist"]`, chromedp.ByQuery),
		chromedp.Click(`tr[data-service="fmnist"] a`, chromedp.ByQuery),
		chromedp.WaitVisible(`main[data-page="service"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-replica][data-priority="spot"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#chart-qps canvas`, chromedp.ByQuery),
		chromedp.WaitVisible(`#chart-latency canvas`, chromedp.ByQuery),
		chromedp.WaitVisible(`#chart-replicas canvas`, chromedp.ByQuery))
	// An autoscaler decision (the minimum raised) shows up live.
	c.apply(serviceYAML("fmnist", "models/console.onnx", "dev", 2, 2, ""))
	b.run("autoscaler decision", 15*time.Second, waitText("#decisions", "1 → 2"))
	b.screenshot("07-service")

	// Events: filter to notices; the eviction's notice is there.
	b.run("events", 15*time.Second,
		chromedp.Click(`a[href="#/events"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-event-kind="Notice"]`, chromedp.ByQuery),
		chromedp.SetValue("#events-kind", "Notice", chromedp.ByQuery),
		chromedp.Evaluate(`document.querySelector('#events-kind').dispatchEvent(new Event('change', {bubbles: true}))`, nil),
		waitText(`tr[data-event-kind="Notice"]`, victim))
	var others int
	b.run("events filtered", 5*time.Second,
		chromedp.Evaluate(`document.querySelectorAll('tr[data-event-kind]:not([data-event-kind="Notice"])').length`, &others))
	if others != 0 {
		t.Errorf("events filtered by kind Notice still show %d other rows", others)
	}
	// By object too: every kind again, only the victim's events (its
	// launch, notice and eviction at least).
	b.run("events by object", 10*time.Second,
		chromedp.Click(`//main//button[normalize-space()="Clear"]`, chromedp.BySearch),
		chromedp.SendKeys("#events-object", "node/"+victim, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-event-kind="Launched"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-event-kind="Evicted"]`, chromedp.ByQuery))
	var rows []string
	b.run("events by object rows", 5*time.Second,
		chromedp.Evaluate(`[...document.querySelectorAll('tr[data-event-kind]')].map((r) => r.textContent)`, &rows))
	for _, r := range rows {
		if !strings.Contains(r, victim) {
			t.Errorf("events filtered by object node/%s show %q", victim, r)
		}
	}
	b.screenshot("08-events")

	// Cost: totals and the chart.
	b.run("cost", 15*time.Second,
		chromedp.Click(`a[href="#/cost"]`, chromedp.ByQuery),
		waitText("#cost-total", "$"),
		chromedp.WaitVisible(`tr[data-pool="spot-a"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#chart-cost canvas`, chromedp.ByQuery))
	b.screenshot("09-cost")

	// Try the model, with the keyboard: the class shown is the class the
	// gateway gives a client for the same image.
	var sample string
	b.run("try", 15*time.Second,
		chromedp.Click(`a[href="#/try"]`, chromedp.ByQuery),
		chromedp.WaitReady(`select#try-sample option[value="1"]`, chromedp.ByQuery),
		chromedp.WaitReady(`select#try-service option[value="fmnist"]`, chromedp.ByQuery))
	b.run("try with the keyboard", 15*time.Second,
		chromedp.Focus("#try-sample", chromedp.ByQuery),
		chromedp.KeyEvent(kb.ArrowDown),
		chromedp.Value("#try-sample", &sample, chromedp.ByQuery),
		chromedp.Focus("#try-predict", chromedp.ByQuery),
		chromedp.KeyEvent(kb.Enter),
		chromedp.WaitVisible(`#try-result[data-class]`, chromedp.ByQuery))
	var shown string
	b.run("try result", 10*time.Second, chromedp.AttributeValue("#try-result", "data-class", &shown, nil, chromedp.ByQuery))
	want := classOfSample(t, c.gw, sample)
	if shown != want {
		t.Errorf("the page shows class %q for sample %s; the gateway says %q", shown, sample, want)
	}
	b.screenshot("10-try")

	// Upload a PNG of a test image drawn dark on light: the page inverts
	// it, and the class is the gateway's for the original image.
	b.run("try an upload", 15*time.Second,
		chromedp.SetUploadFiles("#try-upload", []string{darkOnLightPNG(t, 3)}, chromedp.ByQuery),
		waitText("#try-source", "inverted"),
		chromedp.Evaluate(`document.querySelector('#try-result').removeAttribute('data-class')`, nil),
		chromedp.Click("#try-predict", chromedp.ByQuery),
		chromedp.WaitVisible(`#try-result[data-class]`, chromedp.ByQuery),
		chromedp.AttributeValue("#try-result", "data-class", &shown, nil, chromedp.ByQuery))
	if want := classOfSample(t, c.gw, "3"); shown != want {
		t.Errorf("the page shows class %q for the uploaded PNG of sample 3; the gateway says %q for the original", shown, want)
	}

	// Draw with the keyboard alone, then predict.
	b.run("draw with the keyboard", 15*time.Second,
		chromedp.Click("#try-clear", chromedp.ByQuery),
		chromedp.Focus("#try-draw", chromedp.ByQuery),
		chromedp.KeyEvent(" "),
		chromedp.KeyEvent(kb.ArrowDown, chromedp.KeyModifiers(input.ModifierShift)),
		chromedp.KeyEvent(kb.ArrowDown, chromedp.KeyModifiers(input.ModifierShift)),
		waitText("#try-source", "Drawn with the keyboard"),
		chromedp.Evaluate(`document.querySelector('#try-result').removeAttribute('data-class')`, nil),
		chromedp.Focus("#try-predict", chromedp.ByQuery),
		chromedp.KeyEvent(kb.Enter),
		chromedp.WaitVisible(`#try-result[data-class]`, chromedp.ByQuery))
	b.screenshot("10b-try-drawn")
	var nodes []*cdp.Node
	b.run("scores", 5*time.Second, chromedp.Nodes(`#try-scores > *`, &nodes, chromedp.ByQueryAll))
	if len(nodes) != 10 {
		t.Errorf("the page shows %d scores, want one per class (10)", len(nodes))
	}
	// The control plane dies and comes back: the page says it lost the
	// stream, then reconnects by itself with the token it kept.
	b.run("fleet again", 10*time.Second,
		chromedp.Click(`a[href="#/fleet"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#live[data-state="live"]`, chromedp.ByQuery))
	c.stop(syscall.SIGKILL)
	b.run("stream lost", 30*time.Second, chromedp.WaitVisible(`#live[data-state="reconnecting"]`, chromedp.ByQuery))
	c.start()
	b.run("stream back", 60*time.Second,
		chromedp.WaitVisible(`#live[data-state="live"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-priority="ondemand"]`, chromedp.ByQuery))

	// At a small laptop's width no page scrolls sideways (wide tables
	// scroll inside their own box).
	b.run("1024 px", 10*time.Second, chromedp.EmulateViewport(1024, 700))
	for _, page := range []string{"jobs", "jobs/hello", "services", "services/fmnist", "events", "cost", "try", "fleet"} {
		var over bool
		b.run("narrow "+page, 15*time.Second,
			chromedp.Navigate(base+"#/"+page),
			chromedp.WaitVisible(`main[data-page]`, chromedp.ByQuery),
			chromedp.Sleep(300*time.Millisecond),
			chromedp.Evaluate(`document.documentElement.scrollWidth > document.documentElement.clientWidth`, &over))
		if over {
			b.screenshot("narrow-" + strings.ReplaceAll(page, "/", "-"))
			t.Errorf("at 1024 px the %s page is wider than the window", page)
		}
	}
	b.screenshot("11-fleet-1024px")

	// A viewer's token shows everything and no button that would fail:
	// the admin sees Evict… on a ready spot node, the viewer does not.
	b.run("wide again", 10*time.Second, chromedp.EmulateViewport(1280, 900))
	var evictButtons []*cdp.Node
	b.run("admin evict buttons", 30*time.Second,
		chromedp.Navigate(base+"#/fleet"),
		chromedp.WaitVisible(`button[data-evict]`, chromedp.ByQuery),
		chromedp.Nodes(`button[data-evict]`, &evictButtons, chromedp.ByQueryAll))
	viewer := strings.TrimSpace(c.mustCLI("token", "create", "screen", "--role", "viewer"))
	b.run("log in as a viewer", 20*time.Second,
		chromedp.Click("#logout", chromedp.ByQuery),
		chromedp.WaitVisible("form#login input#token", chromedp.ByQuery),
		chromedp.SendKeys("#token", viewer+kb.Enter, chromedp.ByQuery),
		chromedp.WaitVisible(`main[data-page="fleet"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`tr[data-priority="spot"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#live[data-state="live"]`, chromedp.ByQuery),
		waitText("#role", "read-only"))
	var left int
	b.run("viewer sees no evict button", 10*time.Second,
		chromedp.Sleep(500*time.Millisecond),
		chromedp.Evaluate(`document.querySelectorAll('button[data-evict]').length`, &left))
	if len(evictButtons) == 0 || left != 0 {
		t.Errorf("Evict… buttons: %d for the admin, %d for a viewer; want some, then none", len(evictButtons), left)
	}
	b.screenshot("12-fleet-viewer")

	if ex := b.exceptions(); len(ex) > 0 {
		t.Errorf("the console threw:\n%s", strings.Join(ex, "\n"))
	}
}

// consolePool is a local pool that keeps min nodes up (max of them).
func consolePool(name, priority string, n int) string {
	return strings.Replace(pool(name, priority, n), "min: 0", "min: "+strconv.Itoa(n), 1)
}

// classOfSample asks the gateway, as any client would, for the class of
// the console's embedded sample image number i (the select's value).
func classOfSample(t *testing.T, gw, value string) string {
	t.Helper()
	i, err := strconv.Atoi(value)
	if err != nil {
		t.Fatalf("sample select value %q is not a number", value)
	}
	classes, px := samplePixels(t, i)
	x := make([]float32, 784)
	for j, p := range px {
		x[j] = float32(p) / 255
	}
	got, err := v2Classes(gw, "fmnist", [][]float32{x})
	if err != nil {
		t.Fatal(err)
	}
	return classes[got[0]]
}

// samplePixels returns the console's class names and its embedded sample
// image i: 784 bytes, 0 background, 255 ink.
func samplePixels(t *testing.T, i int) ([]string, []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "internal", "console", "assets", "samples.json"))
	if err != nil {
		t.Fatal(err)
	}
	var samples struct {
		Classes []string `json:"classes"`
		Samples []struct {
			Index  int    `json:"index"`
			Label  int    `json:"label"`
			Pixels string `json:"pixels"`
		} `json:"samples"`
	}
	if err := json.Unmarshal(b, &samples); err != nil {
		t.Fatal(err)
	}
	if i < 0 || i >= len(samples.Samples) {
		t.Fatalf("sample %d is not in samples.json (%d samples)", i, len(samples.Samples))
	}
	px, err := base64.StdEncoding.DecodeString(samples.Samples[i].Pixels)
	if err != nil || len(px) != 784 {
		t.Fatalf("samples.json sample %d: %d pixels, %v", i, len(px), err)
	}
	if len(samples.Classes) != 10 {
		t.Fatalf("samples.json has %d class names, want 10", len(samples.Classes))
	}
	return samples.Classes, px
}

// darkOnLightPNG writes sample i as a 28×28 grayscale PNG, inverted (dark
// ink on white, as a photo or a drawing on paper would be).
func darkOnLightPNG(t *testing.T, i int) string {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, 28, 28))
	_, px := samplePixels(t, i)
	for j, p := range px {
		img.Pix[j] = 255 - p
	}
	f := filepath.Join(t.TempDir(), fmt.Sprintf("sample-%d.png", i))
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// listenConsole keeps what the page logs and every exception it throws.
func listenConsole(ctx context.Context, mu *sync.Mutex, out *[]string) {
	chromedp.ListenTarget(ctx, func(ev any) {
		var line string
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			var args []string
			for _, a := range e.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			line = fmt.Sprintf("console.%s: %s", e.Type, strings.Join(args, " "))
		case *runtime.EventExceptionThrown:
			line = "exception: " + e.ExceptionDetails.Error()
		case *cdplog.EventEntryAdded:
			line = fmt.Sprintf("log %s %s: %s %s", e.Entry.Source, e.Entry.Level, e.Entry.Text, e.Entry.URL)
		default:
			return
		}
		mu.Lock()
		*out = append(*out, line)
		mu.Unlock()
	})
}
