package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"time"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/ingest/pickle"
)

// DecodeSide is one implementation's decoding of one input set.
type DecodeSide struct {
	// Seconds is the median over rounds of one pass over the input.
	Seconds float64 `json:"seconds"`
	// PerItemMs is Seconds per file (DICOM) or row (pickle), in ms, and
	// PerItemSpread its min, median and max over the rounds.
	PerItemMs     float64 `json:"per_item_ms"`
	PerItemSpread Spread  `json:"per_item_spread"`
	// PeakMB is the memory a pass adds at its peak: for Go the heap
	// objects (runtime/metrics, sampled every 200µs in a separate untimed
	// pass, after a GC), for Python the growth of the process's high-water
	// RSS over its RSS after imports.
	PeakMB float64 `json:"peak_mb"`
}

// DecodeCompare is Go against Python (or, for RLE, dcmtk) on one input
// set.
type DecodeCompare struct {
	// Name says which files (phantoms, a real series, CT_small) and how
	// they are stored; Reference names the other side.
	Name      string `json:"name,omitempty"`
	Reference string `json:"reference,omitempty"`
	Items     int    `json:"items"`
	Bytes     int64  `json:"bytes"`
	// Go is how the pipeline reads the input: for DICOM, as the ingest
	// stage does, one dicomio.Decoder for the pass (a job's walk has one),
	// its pixel planes reused from file to file.
	Go     DecodeSide  `json:"go"`
	Python *DecodeSide `json:"python,omitempty"`
	// Speedup is Python's time over Go's (medians over rounds), and
	// SpeedupSpread the same over paired rounds.
	Speedup       float64 `json:"speedup,omitempty"`
	SpeedupSpread Spread  `json:"speedup_spread"`
	Skipped       string  `json:"python_skipped,omitempty"`
	// GoFresh (DICOM only) is dicomio.ReadFile per file, fresh memory for
	// each Image (what a caller that keeps the Images pays: the replay
	// report, the DICOMweb and DIMSE receivers), timed in the same
	// rounds; FreshSpeedup and FreshSpeedupSpread are Python's time over
	// it, as Speedup and SpeedupSpread.
	GoFresh            *DecodeSide `json:"go_fresh,omitempty"`
	FreshSpeedup       float64     `json:"fresh_speedup,omitempty"`
	FreshSpeedupSpread *Spread     `json:"fresh_speedup_spread,omitempty"`
}

// Decode holds the decoding comparisons.
type Decode struct {
	// DICOM: the ingest stage's read (a dicomio.Decoder per pass; and
	// dicomio.ReadFile, fresh memory, beside) against pydicom dcmread +
	// pixel_array + apply_modality_lut, over the phantom CT series
	// (512×512, 16-bit).
	DICOM *DecodeCompare `json:"dicom,omitempty"`
	// Real are the real files (decode_real.go): uncompressed (pydicom's
	// CT_small, ct_series/lungmask_1, and popi_00_141 decompressed by
	// dcmdrle into the run's temporary folder), where decompression is
	// excluded, and the RLE series as stored, against pydicom.
	Real []*DecodeCompare `json:"real,omitempty"`
	// RLE is RLE decompression alone, Go against dcmtk's dcmdrle.
	RLE *RLECompare `json:"rle,omitempty"`
	// Pickle: pickle.Read (every row to an ingest.Item) against
	// pd.read_pickle plus touching every row's arrays, on a
	// Mendeley-layout DataFrame pickle of N rows.
	Pickle *DecodeCompare `json:"pickle,omitempty"`
	// PickleLarge is the same on a file of 2N rows (memory scaling); its
	// timing is one pass.
	PickleLarge *DecodeCompare `json:"pickle_2n,omitempty"`
	// PickleGrowth is Go's peak on 2N rows over its peak on N rows
	// (streaming: near 1).
	PickleGrowth float64 `json:"pickle_go_peak_growth"`
	// PickleRetained is Go's extra peak on 2N rows over N rows as a fraction
	// of the extra input (streaming: near 0; a reader that kept every row
	// would be near 1). Unlike PickleGrowth it stays meaningful when the
	// peaks are a few MB.
	PickleRetained float64 `json:"pickle_go_retained_fraction"`
}

// heapObjects reads the bytes in heap objects (live and not yet swept).
func heapObjects() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// peakHeap runs f and returns the heap growth at its peak, in MB. It is a
// separate pass from the timed ones, run with the collector's target at 1 %
// (debug.SetGCPercent), so the runtime collects about as soon as f drops
// something and the peak follows the memory f holds, not when the collector
// happens to run. (At the default 100 % a pass of N rows that never collected
// counted every row it had dropped, and one of 2N rows that collected once
// did not: the streaming ratio 2N/N swung between 1.3 and 2.2 with one reader.)
// The collections cost time, which is why no timed pass runs this way.
func peakHeap(f func() error) (float64, error) {
	debug.FreeOSMemory()
	defer debug.SetGCPercent(debug.SetGCPercent(1))
	base := heapObjects()
	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		peak := base
		tk := time.NewTicker(200 * time.Microsecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				if v := heapObjects(); v > peak {
					peak = v
				}
				done <- peak
				return
			case <-tk.C:
				if v := heapObjects(); v > peak {
					peak = v
				}
			}
		}
	}()
	err := f()
	close(stop)
	peak := <-done
	return float64(peak-base) / (1 << 20), err
}

// goDICOM decodes files with d (dicomio.Decoder: the Images' pixels
// reused from file to file, as the ingest stage reads a job), or with
// dicomio.ReadFile (fresh memory per file) when d is nil.
func goDICOM(d *dicomio.Decoder, files []string) error {
	read := dicomio.ReadFile
	if d != nil {
		read = d.ReadFile
	}
	for _, p := range files {
		img, err := read(p)
		if err != nil {
			return err
		}
		if len(img.Frames) == 0 || img.Frames[0].HU == nil {
			return fmt.Errorf("bench: %s decoded without pixels", p)
		}
	}
	return nil
}

func goPickle(ctx context.Context, path string, rows int) error {
	n := 0
	err := pickle.Read(ctx, path, func(it ingest.Item) error {
		if it.Err != nil {
			return it.Err
		}
		if it.HU == nil || it.Mask == nil {
			return fmt.Errorf("bench: row %d decoded without pixels or mask", n)
		}
		n++
		return nil
	})
	if err == nil && n != rows {
		err = fmt.Errorf("bench: %s: %d rows, want %d", path, n, rows)
	}
	return err
}

type decodeHello struct {
	BaselineMB float64 `json:"baseline_rss_mb"`
}

type decodeResp struct {
	Seconds    []float64 `json:"seconds"`
	BaselineMB float64   `json:"baseline_rss_mb"`
	PeakMB     float64   `json:"peak_rss_mb"`
}

// compare times goPass, fresh (when not nil: the Go read with fresh
// memory, DecodeCompare.GoFresh) and the Python helper in interleaved
// rounds; the helper's first pass gives its peak memory, a separate pass
// of each Go read its own.
func (r *runner) compare(ctx context.Context, what string, items int, bytes int64, goPass, fresh func() error,
	pyErr error, script string, args ...string) (*DecodeCompare, error) {
	c := &DecodeCompare{Items: items, Bytes: bytes}
	var py *pyServer
	if pyErr == nil {
		var hello decodeHello
		var err error
		py, err = startPy(ctx, r.py, filepath.Join(r.tmp, script), []string{"OMP_NUM_THREADS=1"}, &hello, args...)
		if err != nil {
			pyErr = err
		} else {
			defer py.Close()
		}
	}
	if pyErr != nil {
		c.Skipped = pyErr.Error()
	}
	var goSecs, freshSecs, pySecs []float64
	// timed runs pass (none when nil) and adds its seconds to *secs.
	timed := func(pass func() error, secs *[]float64) func() error {
		return func() error {
			if pass == nil {
				return nil
			}
			st := time.Now()
			if err := pass(); err != nil {
				return err
			}
			*secs = append(*secs, time.Since(st).Seconds())
			return nil
		}
	}
	runGo, runFresh := timed(goPass, &goSecs), timed(fresh, &freshSecs)
	for round := 0; round < r.decodeRounds(); round++ {
		runPy := func() error {
			if py == nil {
				return nil
			}
			var resp decodeResp
			if err := py.call(timingReq{Reps: 1}, &resp); err != nil {
				return err
			}
			if round == 0 {
				c.Python = &DecodeSide{PeakMB: resp.PeakMB - resp.BaselineMB}
			}
			pySecs = append(pySecs, resp.Seconds...)
			return nil
		}
		steps := []func() error{runGo, runFresh, runPy}
		if round%2 == 1 {
			steps = []func() error{runPy, runFresh, runGo}
		}
		for _, f := range steps {
			if err := f(); err != nil {
				return nil, fmt.Errorf("bench: %s: %w", what, err)
			}
		}
	}
	perItem := 1000 / float64(items)
	// goSide is a Go read's figures: its timed rounds, and the peak of a
	// separate pass.
	goSide := func(pass func() error, secs []float64) (DecodeSide, error) {
		peak, err := peakHeap(pass)
		sp := spreadOf(secs).scaled(perItem)
		return DecodeSide{Seconds: median(secs), PeakMB: peak, PerItemSpread: sp, PerItemMs: sp.Median}, err
	}
	var err error
	if c.Go, err = goSide(goPass, goSecs); err != nil {
		return nil, err
	}
	if fresh != nil {
		f, err := goSide(fresh, freshSecs)
		if err != nil {
			return nil, err
		}
		c.GoFresh = &f
	}
	if c.Python != nil {
		c.Python.Seconds = median(pySecs)
		c.Python.PerItemSpread = spreadOf(pySecs).scaled(perItem)
		c.Python.PerItemMs = c.Python.PerItemSpread.Median
		c.Speedup = ratio(c.Python.Seconds, c.Go.Seconds)
		c.SpeedupSpread = spreadOf(ratios(pySecs, goSecs))
		if c.GoFresh != nil {
			c.FreshSpeedup = ratio(c.Python.Seconds, c.GoFresh.Seconds)
			s := spreadOf(ratios(pySecs, freshSecs))
			c.FreshSpeedupSpread = &s
		}
	}
	line := fmt.Sprintf("decode %s (%d items, %.1f MB): go %s ms/item, peak +%.1f MB", what, items, float64(bytes)/1e6, c.Go.PerItemSpread.format(3), c.Go.PeakMB)
	if c.GoFresh != nil {
		line += fmt.Sprintf("; go fresh memory %s ms/item, peak +%.1f MB", c.GoFresh.PerItemSpread.format(3), c.GoFresh.PeakMB)
	}
	if c.Python != nil {
		line += fmt.Sprintf("; python %s ms/item, peak +%.1f MB; speedup %s", c.Python.PerItemSpread.format(3), c.Python.PeakMB, c.SpeedupSpread.format(2))
		if c.FreshSpeedupSpread != nil {
			line += fmt.Sprintf(" (fresh memory %s)", c.FreshSpeedupSpread.format(2))
		}
	}
	r.progress("%s", line)
	return c, nil
}

// minDecodeRounds is the fewest rounds of a decode comparison: a pass is
// short (tens of ms), so a few more rounds than the default three cost
// little and give the spread something to show.
const minDecodeRounds = 7

func (r *runner) decodeRounds() int {
	if r.oneRound {
		return 1
	}
	return max(r.o.Rounds, minDecodeRounds)
}

func fileSize(paths ...string) int64 {
	var n int64
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil {
			n += st.Size()
		}
	}
	return n
}

func (r *runner) decode(ctx context.Context) error {
	set, _, err := r.mainSet()
	if err != nil {
		return err
	}
	d := &Decode{}
	r.rep.Decode = d
	pyErr := error(nil)
	if r.py == "" {
		pyErr = fmt.Errorf("no python")
	}
	dcmErr := pyErr
	if dcmErr == nil {
		dcmErr = pyHas(ctx, r.py, "pydicom", "numpy")
	}
	// A pass of at least minRealItems files, as for the real sets: a
	// pass of 16 phantoms (~2 ms in Go) is too short to time.
	files := repeatTo(set.files, minRealItems)
	list := filepath.Join(r.tmp, "dicom-files.txt")
	if err := os.WriteFile(list, []byte(strings.Join(files, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if d.DICOM, err = r.compare(ctx, "dicom", len(files), fileSize(files...),
		func() error { return goDICOM(new(dicomio.Decoder), files) }, func() error { return goDICOM(nil, files) },
		dcmErr, "pydicom_decode.py", "--files", list); err != nil {
		return err
	}
	d.DICOM.Name, d.DICOM.Reference = "phantoms (native)", "pydicom"
	if err := r.decodeReal(ctx, d, dcmErr); err != nil {
		return err
	}

	pdErr := pyErr
	if pdErr == nil {
		pdErr = pyHas(ctx, r.py, "pandas", "numpy")
	}
	write := func(name string, rows int) (string, error) {
		p := filepath.Join(r.tmp, name)
		f, err := os.Create(p)
		if err != nil {
			return "", err
		}
		err = pickle.WriteFunc(f, rows, func(i int) (*pickle.Row, error) {
			row := set.slices[i%len(set.slices)].PickleRow()
			return &row, nil
		})
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return p, err
	}
	n := len(set.slices)
	small, err := write("n.pkl", n)
	if err != nil {
		return err
	}
	if d.Pickle, err = r.compare(ctx, "pickle", n, fileSize(small),
		func() error { return goPickle(ctx, small, n) }, nil, pdErr, "pandas_read.py", "--file", small); err != nil {
		return err
	}
	os.Remove(small)
	large, err := write("2n.pkl", 2*n)
	if err != nil {
		return err
	}
	defer os.Remove(large)
	o := r.o
	r.o.Rounds, r.oneRound = 1, true
	d.PickleLarge, err = r.compare(ctx, "pickle 2N", 2*n, fileSize(large),
		func() error { return goPickle(ctx, large, 2*n) }, nil, pdErr, "pandas_read.py", "--file", large)
	r.o, r.oneRound = o, false
	if err != nil {
		return err
	}
	d.PickleGrowth = ratio(d.PickleLarge.Go.PeakMB, d.Pickle.Go.PeakMB)
	if added := float64(d.PickleLarge.Bytes-d.Pickle.Bytes) / (1 << 20); added > 0 {
		d.PickleRetained = math.Max(0, d.PickleLarge.Go.PeakMB-d.Pickle.Go.PeakMB) / added
	}
	return nil
}
