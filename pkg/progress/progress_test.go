package progress

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestLinesAreThrottledAndCarryRateAndETA(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	var buf bytes.Buffer
	r := New(&buf, Options{Label: "replay x", Unit: "results", Mode: Lines, Every: 2 * time.Second, Now: c.now})
	if r.IsBar() {
		t.Fatal("Lines mode draws a bar")
	}
	// Ten updates over the first second: nothing yet.
	for i := 1; i <= 10; i++ {
		c.advance(100 * time.Millisecond)
		r.Update(Status{Done: int64(i), Total: 100})
	}
	if buf.Len() != 0 {
		t.Fatalf("wrote before the first interval: %q", buf.String())
	}
	c.advance(time.Second) // t = 2s, 20 done → 10/s, 80 left → 8s
	r.Update(Status{Done: 20, Total: 100, Errors: 2})
	c.advance(time.Second) // within the interval: throttled
	r.Update(Status{Done: 30, Total: 100})
	c.advance(2 * time.Second) // t = 5s
	r.Update(Status{Done: 50, Total: -1})
	c.advance(5 * time.Second) // t = 10s
	r.Finish(Status{Done: 100, Total: 100})
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	want := []string{
		"replay x 20/100 results  20%, 10.0/s, ETA 0:08, 2 errors",
		"replay x 50/? results, 10.0/s",
		"replay x 100/100 results 100%, 10.0/s, 0:10 elapsed",
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines %q, want %d", len(lines), lines, len(want))
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d = %q, want %q", i, lines[i], want[i])
		}
	}
	if strings.ContainsAny(buf.String(), "\r\x1b") {
		t.Error("plain lines contain terminal control characters")
	}
}

func TestBarRedrawsInPlace(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	var buf bytes.Buffer
	r := New(&buf, Options{Mode: Bar, Width: 10, Redraw: 100 * time.Millisecond, Now: c.now})
	if !r.IsBar() {
		t.Fatal("Bar mode draws lines")
	}
	c.advance(time.Second)
	r.Update(Status{Done: 5, Total: 20})
	r.Update(Status{Done: 6, Total: 20}) // same instant: throttled
	c.advance(time.Second)
	r.Finish(Status{Done: 20, Total: 20})
	out := buf.String()
	want := "\r[==>       ] 5/20 items  25%, 5.0/s, ETA 0:03\x1b[K" +
		"\r[==========] 20/20 items 100%, 10.0/s, 0:02 elapsed\x1b[K\n"
	if out != want {
		t.Fatalf("bar output\n%q\nwant\n%q", out, want)
	}
}

func TestAutoIsLinesOffTerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "p")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if New(f, Options{}).IsBar() {
		t.Error("a regular file is treated as a terminal")
	}
	if New(&bytes.Buffer{}, Options{}).IsBar() {
		t.Error("a buffer is treated as a terminal")
	}
}

func TestDrawBarAndFormat(t *testing.T) {
	for _, c := range []struct {
		s    Status
		want string
	}{
		{Status{Done: 0, Total: 4}, ">   "},
		{Status{Done: 2, Total: 4}, "==> "},
		{Status{Done: 4, Total: 4}, "===="},
		{Status{Done: 9, Total: 4}, "===="},
		{Status{Done: 3, Total: -1}, "????"},
		{Status{Done: 0, Total: 0}, "===="},
	} {
		if got := drawBar(c.s, 4); got != c.want {
			t.Errorf("drawBar(%+v) = %q, want %q", c.s, got, c.want)
		}
	}
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0:00"}, {59400 * time.Millisecond, "0:59"}, {61 * time.Second, "1:01"}, {3723 * time.Second, "1:02:03"}, {-time.Second, "0:00"},
	} {
		if got := FormatDuration(c.d); got != c.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", c.d, got, c.want)
		}
	}
	if _, ok := ETA(Status{Done: 1, Total: -1}, 3); ok {
		t.Error("ETA with unknown total")
	}
	if _, ok := ETA(Status{Done: 1, Total: 5}, 0); ok {
		t.Error("ETA at zero rate")
	}
}

// TestTermKeepsLogsOffTheBar: a log line written while the bar is drawn
// erases the bar, stands on its own line, and the bar comes back under it
// (before, "replay [???…] 0/? results, 0.0/s15:21:30 INF fetching…").
func TestTermKeepsLogsOffTheBar(t *testing.T) {
	var buf bytes.Buffer
	term := NewTerm(&buf)
	now := time.Unix(0, 0)
	r := New(term, Options{Label: "replay", Unit: "results", Mode: Bar, Width: 4, Now: func() time.Time { return now }})
	r.Update(Status{Done: 0, Total: -1})
	fmt.Fprintf(term, "15:21:30 INF fetching onnx runtime\n")
	now = now.Add(time.Second)
	r.Finish(Status{Done: 2, Total: -1})
	fmt.Fprintf(term, "after\n")
	// what a terminal shows: apply \r (back to column 0) and ESC[K (erase
	// to the end of the line)
	var lines []string
	cur := ""
	out := buf.String()
	for i := 0; i < len(out); i++ {
		switch {
		case out[i] == '\r':
			cur = ""
		case strings.HasPrefix(out[i:], "\x1b[K"):
			i += 2
		case out[i] == '\n':
			lines = append(lines, cur)
			cur = ""
		default:
			cur += string(out[i])
		}
	}
	want := []string{"15:21:30 INF fetching onnx runtime", "replay [????] 2/? results, 2.0/s, 0:01 elapsed", "after"}
	if strings.Join(lines, "|") != strings.Join(want, "|") || cur != "" {
		t.Errorf("screen lines %q (then %q), want %q", lines, cur, want)
	}
	if !strings.Contains(out, "\r\x1b[K15:21:30 INF") {
		t.Errorf("the log line does not erase the bar first: %q", out)
	}
}
