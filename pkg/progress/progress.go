// Package progress reports the progress of a long job: on a terminal a
// bar redrawn in place with the count, rate and ETA; elsewhere (a log
// file, CI) a plain line at a fixed interval and one at the end.
package progress

import (
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
)

// Status is a job's state at one moment.
type Status struct {
	// Done and Total count work items; Total < 0 while it is unknown.
	Done, Total int64
	// Errors counts failures so far.
	Errors int
}

// Mode says how progress is written.
type Mode int

// Modes.
const (
	// Auto draws a bar when the writer is a terminal, lines otherwise.
	Auto Mode = iota
	// Bar always draws the bar (carriage return, erase line).
	Bar
	// Lines always writes plain lines.
	Lines
)

// Options configure a Reporter. Zero fields take the defaults given.
type Options struct {
	// Label starts every bar and line (for example "replay 2024…").
	Label string
	// Unit names the items counted (default "items").
	Unit string
	// Mode chooses bar or lines (default Auto).
	Mode Mode
	// Every is the interval between plain lines (default 2s).
	Every time.Duration
	// Redraw is the shortest interval between bar redraws (default 100ms).
	Redraw time.Duration
	// Width of the bar in characters (default 30).
	Width int
	// Now is the clock (default time.Now); tests replace it.
	Now func() time.Time
}

// Reporter writes progress to a writer. Update may be called as often as
// convenient; the Reporter throttles its output. Safe for concurrent use.
type Reporter struct {
	w     io.Writer
	o     Options
	bar   bool
	start time.Time
	last  time.Time
	wrote bool
	mu    sync.Mutex
}

// New returns a Reporter writing to w.
func New(w io.Writer, o Options) *Reporter {
	if o.Unit == "" {
		o.Unit = "items"
	}
	if o.Every <= 0 {
		o.Every = 2 * time.Second
	}
	if o.Redraw <= 0 {
		o.Redraw = 100 * time.Millisecond
	}
	if o.Width <= 0 {
		o.Width = 30
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	bar := o.Mode == Bar
	if o.Mode == Auto {
		bar = IsTerminal(w)
	}
	return &Reporter{w: w, o: o, bar: bar, start: o.Now()}
}

// IsBar reports whether the Reporter draws a bar (else plain lines).
func (r *Reporter) IsBar() bool { return r.bar }

// Update reports the current status; it writes only when the redraw or
// line interval has passed since the last write.
func (r *Reporter) Update(s Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.o.Now()
	gap := r.o.Every
	if r.bar {
		gap = r.o.Redraw
	}
	if r.wrote && now.Sub(r.last) < gap {
		return
	}
	if !r.wrote && !r.bar && now.Sub(r.start) < gap {
		// Plain lines start after one interval, so a short job writes
		// only its final line.
		return
	}
	r.write(s, now, false)
}

// Finish writes the final status (and ends the bar's line).
func (r *Reporter) Finish(s Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.write(s, r.o.Now(), true)
}

func (r *Reporter) write(s Status, now time.Time, final bool) {
	r.last, r.wrote = now, true
	el := now.Sub(r.start)
	rate := 0.0
	if el > 0 {
		rate = float64(s.Done) / el.Seconds()
	}
	var b strings.Builder
	if r.o.Label != "" {
		b.WriteString(r.o.Label)
		b.WriteString(" ")
	}
	if r.bar {
		b.WriteString("[")
		b.WriteString(drawBar(s, r.o.Width))
		b.WriteString("] ")
	}
	if s.Total >= 0 {
		fmt.Fprintf(&b, "%d/%d %s", s.Done, s.Total, r.o.Unit)
		if s.Total > 0 {
			fmt.Fprintf(&b, " %3.0f%%", 100*float64(s.Done)/float64(s.Total))
		}
	} else {
		fmt.Fprintf(&b, "%d/? %s", s.Done, r.o.Unit)
	}
	fmt.Fprintf(&b, ", %.1f/s", rate)
	if final {
		fmt.Fprintf(&b, ", %s elapsed", FormatDuration(el))
	} else if eta, ok := ETA(s, rate); ok {
		fmt.Fprintf(&b, ", ETA %s", FormatDuration(eta))
	}
	if s.Errors > 0 {
		fmt.Fprintf(&b, ", %d errors", s.Errors)
	}
	if r.bar {
		if t, ok := r.w.(*Term); ok {
			// log lines written through t go above the bar
			t.setLine(b.String(), final)
			return
		}
		// Carriage return and erase-to-end-of-line redraw in place.
		fmt.Fprintf(r.w, "\r%s\x1b[K", b.String())
		if final {
			fmt.Fprintln(r.w)
		}
		return
	}
	fmt.Fprintln(r.w, b.String())
}

// drawBar fills width cells in proportion to Done/Total ('=' done, '>'
// the head, ' ' to go); an unknown total shows a bar of '?'.
func drawBar(s Status, width int) string {
	if s.Total <= 0 {
		if s.Total == 0 {
			return strings.Repeat("=", width)
		}
		return strings.Repeat("?", width)
	}
	f := float64(s.Done) / float64(s.Total)
	f = math.Max(0, math.Min(1, f))
	n := int(f * float64(width))
	out := strings.Repeat("=", n)
	if n < width {
		out += ">" + strings.Repeat(" ", width-n-1)
	}
	return out
}

// ETA returns the time left at the given rate (items per second); ok is
// false when it cannot be estimated.
func ETA(s Status, rate float64) (time.Duration, bool) {
	if s.Total < 0 || rate <= 0 || s.Done > s.Total {
		return 0, false
	}
	return time.Duration(float64(s.Total-s.Done) / rate * float64(time.Second)), true
}

// FormatDuration writes d as m:ss, or h:mm:ss from an hour on, rounded to
// the second.
func FormatDuration(d time.Duration) string {
	sec := int64(d.Round(time.Second) / time.Second)
	if sec < 0 {
		sec = 0
	}
	h, m, s := sec/3600, sec/60%60, sec%60
	if h > 0 {
		return fmt.Sprintf("%d:%02d:%02d", h, m, s)
	}
	return fmt.Sprintf("%d:%02d", m, s)
}

// IsTerminal reports whether w is a terminal (an *os.File on a tty, or a
// Term over one).
func IsTerminal(w io.Writer) bool {
	switch f := w.(type) {
	case *Term:
		return IsTerminal(f.w)
	case *os.File:
		return isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
	}
	return false
}

// Term is a writer shared by a progress bar and log lines, so that they do
// not collide on one terminal line: a write erases the bar, writes the
// text, and draws the bar again under it. A Reporter writing to a Term
// draws its bar through it. Safe for concurrent use.
type Term struct {
	mu   sync.Mutex
	w    io.Writer
	line string // the bar on screen, "" when none
}

// NewTerm returns a Term writing to w.
func NewTerm(w io.Writer) *Term { return &Term{w: w} }

// Write writes p (log lines, ending in a newline) above the bar.
func (t *Term) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.line == "" {
		return t.w.Write(p)
	}
	if _, err := io.WriteString(t.w, "\r\x1b[K"); err != nil {
		return 0, err
	}
	n, err := t.w.Write(p)
	if err != nil {
		return n, err
	}
	if len(p) > 0 && p[len(p)-1] != '\n' {
		// a partial line: end it, or the bar would be drawn after it
		_, _ = io.WriteString(t.w, "\n")
	}
	_, err = io.WriteString(t.w, t.line+"\x1b[K")
	return n, err
}

func (t *Term) setLine(s string, final bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.w, "\r%s\x1b[K", s)
	t.line = s
	if final {
		fmt.Fprintln(t.w)
		t.line = ""
	}
}
