package dataset

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lungseg/lungseg/ingest"
)

// progress reports how many slices have been handled: on a terminal a
// bar redrawn in place (a counter when the total is unknown), elsewhere a
// plain line every interval. It is safe for concurrent use.
type progress struct {
	w        io.Writer
	tty      bool
	every    time.Duration
	total    int  // expected slices; 0 when unknown
	exact    bool // total counts every slice (no pickles or multi-frame files)
	mu       sync.Mutex
	slices   int
	pairs    int
	start    time.Time
	last     time.Time
	finished bool
}

func newProgress(w io.Writer, tty bool, every time.Duration) *progress {
	now := time.Now()
	return &progress{w: w, tty: tty, every: every, start: now, last: now}
}

// redraw is the least time between two terminal redraws.
const redraw = 100 * time.Millisecond

// done records slices handled and pairs written.
func (p *progress) done(slices, pairs int) {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.slices += slices
	p.pairs += pairs
	now := time.Now()
	gap := p.every
	if p.tty {
		gap = redraw
	}
	if now.Sub(p.last) < gap {
		return
	}
	p.last = now
	p.print(now, false)
}

func (p *progress) finish() {
	if p.w == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	p.finished = true
	p.print(time.Now(), true)
}

func (p *progress) print(now time.Time, final bool) {
	el := now.Sub(p.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(p.pairs) / el
	}
	if !p.tty {
		tot := ""
		if p.total > 0 {
			tot = fmt.Sprintf("/%d", p.total)
		}
		fmt.Fprintf(p.w, "dataset: %d%s slices, %d pairs written, %.0f pairs/s\n", p.slices, tot, p.pairs, rate)
		return
	}
	line := fmt.Sprintf("%d slices  %d pairs  %.0f pairs/s", p.slices, p.pairs, rate)
	if p.total > 0 {
		total := max(p.total, p.slices)
		if final && !p.exact {
			total = p.slices
		}
		const width = 30
		n := p.slices * width / total
		bar := strings.Repeat("=", n) + strings.Repeat(" ", width-n)
		approx := ""
		if !p.exact {
			approx = "~"
		}
		line = fmt.Sprintf("[%s] %3d%%  %d/%s%d slices  %d pairs  %.0f pairs/s", bar, 100*p.slices/total, p.slices, approx, total, p.pairs, rate)
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s", line)
	if final {
		fmt.Fprintln(p.w)
	}
}

// countSlices estimates how many items the inputs will give, for the
// bar: one per file a format recognises. exact is false when a pickle
// (many rows per file) is among them; multi-frame DICOM files make the
// count low too, and the bar then grows its total.
func countSlices(inputs []string, formats []ingest.Format) (n int, exact bool) {
	exact = true
	count := func(p string) {
		f, err := os.Open(p)
		if err != nil {
			n++ // reported as one failed item
			return
		}
		head := make([]byte, ingest.HeadSize)
		k, _ := io.ReadFull(f, head)
		f.Close()
		for _, fm := range formats {
			if fm.Match(filepath.Base(p), head[:k]) {
				n++
				if fm.Name == "pickle" {
					exact = false
				}
				return
			}
		}
	}
	for _, in := range inputs {
		st, err := os.Stat(in)
		if err != nil {
			n++
			continue
		}
		if !st.IsDir() {
			count(in)
			continue
		}
		_ = filepath.WalkDir(in, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				count(p)
			}
			return nil
		})
	}
	return n, exact
}
