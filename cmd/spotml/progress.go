package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// isTerminal reports whether w is a terminal: progress lines are drawn
// only there.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// transferBar counts the bytes of one transfer and, on a terminal, redraws
// a bar in the style of `spotml wait` at most ten times a second.
type transferBar struct {
	out   io.Writer // nil: count only
	name  string
	total int64 // -1: unknown
	done  int64
	start time.Time
	drawn time.Time
}

func newTransferBar(out io.Writer, name string, total int64) *transferBar {
	if !isTerminal(out) {
		out = nil
	}
	return &transferBar{out: out, name: name, total: total, start: time.Now()}
}

// reader counts what r yields.
func (b *transferBar) reader(r io.Reader) io.Reader { return &countingReader{r, b} }

func (b *transferBar) add(n int) {
	b.done += int64(n)
	if b.out == nil {
		return
	}
	if now := time.Now(); now.Sub(b.drawn) >= 100*time.Millisecond {
		b.drawn = now
		fmt.Fprintf(b.out, "\r\033[K%s", transferLine(b.name, b.done, b.total, now.Sub(b.start)))
	}
}

// finish draws the final figures and ends the line.
func (b *transferBar) finish() {
	if b.out == nil {
		return
	}
	fmt.Fprintf(b.out, "\r\033[K%s\n", transferLine(b.name, b.done, b.total, time.Since(b.start)))
}

type countingReader struct {
	r io.Reader
	b *transferBar
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.b.add(n)
	return n, err
}

// transferLine is the progress line of a transfer: a bar when the total is
// known, the bytes moved and the mean rate.
func transferLine(name string, done, total int64, elapsed time.Duration) string {
	rate := ""
	if s := elapsed.Seconds(); s > 0 {
		rate = fmt.Sprintf(" %s/s", sizeString(int64(float64(done)/s)))
	}
	if total < 0 {
		return fmt.Sprintf("%s %s%s | %s", name, sizeString(done), rate, elapsed.Round(time.Second))
	}
	frac := 1.0
	if total > 0 {
		frac = float64(done) / float64(total)
	}
	return fmt.Sprintf("[%s] %s %s / %s%s | %s", bar(frac), name, sizeString(done), sizeString(total), rate, elapsed.Round(time.Second))
}

// bar draws a fraction (0 to 1) as the 24-wide `#`/`.` bar of every
// progress line.
func bar(frac float64) string {
	const width = 24
	fill := min(max(int(width*frac), 0), width)
	return strings.Repeat("#", fill) + strings.Repeat(".", width-fill)
}

// sizeString writes a byte count the way people read it: 512 B, 1.5 MiB.
func sizeString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
