package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/lungseg/lungseg/ingest/dicomio"
)

// RLECompare is RLE decompression alone, Go against dcmtk's dcmdrle, on
// the same files of an RLE series. dcmdrle is a program run once per file
// that reads, decompresses and writes; dcmconv on the decompressed copy
// reads and writes the same dataset without decompressing, so their
// difference is dcmdrle's decompression. Go's is the same difference:
// reading the RLE file less reading the decompressed copy, each as the
// ingest stage reads (a dicomio.Decoder per pass).
type RLECompare struct {
	Name  string `json:"name"`
	Items int    `json:"items"`
	// GoRLEMs and GoNativeMs are the ingest stage's read per file (a
	// dicomio.Decoder per pass) on the RLE files and on their decompressed
	// copies (min, median, max over rounds), and GoNetMs the median
	// difference.
	GoRLEMs    Spread  `json:"go_rle_ms"`
	GoNativeMs Spread  `json:"go_native_ms"`
	GoNetMs    float64 `json:"go_net_ms"`
	// DcmdrleMs and DcmconvMs are the wall time of one run per file of
	// dcmdrle (RLE file to a native copy) and of dcmconv (the native copy
	// to another), DcmtkNetMs the median difference.
	DcmdrleMs  Spread  `json:"dcmdrle_ms"`
	DcmconvMs  Spread  `json:"dcmconv_ms"`
	DcmtkNetMs float64 `json:"dcmtk_net_ms"`
	// Speedup is DcmtkNetMs / GoNetMs (decompression only), WholeSpeedup
	// dcmdrle's whole run over Go's whole read of the RLE file.
	Speedup      float64 `json:"speedup"`
	WholeSpeedup float64 `json:"whole_speedup"`
	Skipped      string  `json:"dcmtk_skipped,omitempty"`
}

// ctSeriesDir is ../shared/data/ct_series beside the repository (or
// CTSeries), "" when absent or turned off.
func (r *runner) ctSeriesDir() string {
	dir := r.o.CTSeries
	if dir == "none" {
		return ""
	}
	if dir == "" {
		dir = filepath.Join(filepath.Dir(filepath.Clean(r.o.ModelsDir)), "..", "shared", "data", "ct_series")
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return ""
	}
	return dir
}

// ctSmallPaths are where pydicom's CT_small.dcm is looked for when the
// interpreter cannot say (Debian's python3-pydicom first).
var ctSmallPaths = []string{"/usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm"}

// ctSmall finds pydicom's CT_small.dcm: asked of the interpreter, else
// at ctSmallPaths; "" when not found.
func (r *runner) ctSmall(ctx context.Context) string {
	if r.py != "" {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, r.py, "-c",
			"from pydicom.data import get_testdata_file; print(get_testdata_file('CT_small.dcm'))").Output()
		if p := strings.TrimSpace(string(out)); err == nil && p != "" && p != "None" {
			return p
		}
	}
	for _, p := range ctSmallPaths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// repeatTo repeats files until the list holds at least n (a pass over a
// single file is too short to time).
func repeatTo(files []string, n int) []string {
	out := append([]string(nil), files...)
	for len(out) > 0 && len(out) < n {
		out = append(out, files...)
	}
	return out
}

// minRealItems is the fewest files in one timed pass over real files.
const minRealItems = 32

// decodeReal measures the real files: CT_small and the ct_series, as
// stored and (RLE) decompressed by dcmdrle into the run's temporary
// folder; the data is read where it lies.
func (r *runner) decodeReal(ctx context.Context, d *Decode, dcmErr error) error {
	type set struct {
		name  string
		files []string
	}
	var native, rle []set
	if p := r.ctSmall(ctx); p != "" {
		native = append(native, set{"pydicom CT_small (native, 128×128)", []string{p}})
	} else {
		r.skip("decode: pydicom's CT_small.dcm not found")
	}
	dir := r.ctSeriesDir()
	if dir == "" {
		r.skip("decode: no ct_series folder (../shared/data/ct_series beside the repository, or --ct-series)")
	}
	var popi []string
	if dir != "" {
		for _, s := range []string{"lungmask_1", "popi_00_141", "lungdx_a0002_30"} {
			files, _ := filepath.Glob(filepath.Join(dir, s, "*.dcm"))
			if len(files) == 0 {
				r.skip("decode: no DICOM files in %s", filepath.Join(dir, s))
				continue
			}
			sort.Strings(files)
			img, err := dicomio.ReadFile(files[0])
			if err != nil {
				return fmt.Errorf("bench: decode: %w", err)
			}
			if img.TransferSyntax == dicomio.SyntaxRLELossless {
				rle = append(rle, set{s + " (RLE)", files})
				if s == "popi_00_141" {
					popi = files
				}
			} else {
				native = append(native, set{fmt.Sprintf("%s (%s)", s, dicomio.SyntaxName(img.TransferSyntax)), files})
			}
		}
	}
	// popi_00_141 decompressed by dcmdrle: the same files without the
	// decompression.
	var popiNative []string
	dcmtkErr := error(nil)
	drle, err1 := exec.LookPath("dcmdrle")
	conv, err2 := exec.LookPath("dcmconv")
	if err := errors.Join(err1, err2); err != nil {
		dcmtkErr = fmt.Errorf("dcmtk: %w", err)
	}
	if len(popi) > 0 && dcmtkErr == nil {
		out := filepath.Join(r.tmp, "popi-native")
		if err := os.MkdirAll(out, 0o755); err != nil {
			return err
		}
		for _, f := range popi {
			dst := filepath.Join(out, filepath.Base(f))
			if msg, err := exec.CommandContext(ctx, drle, f, dst).CombinedOutput(); err != nil {
				return fmt.Errorf("bench: dcmdrle %s: %v: %s", f, err, msg)
			}
			popiNative = append(popiNative, dst)
		}
		native = append(native, set{"popi_00_141 decompressed by dcmdrle (native)", popiNative})
		defer os.RemoveAll(out)
	} else if len(popi) > 0 {
		r.skip("decode: %v", dcmtkErr)
	}
	for _, s := range append(native, rle...) {
		files := repeatTo(s.files, minRealItems)
		list := filepath.Join(r.tmp, "dicom-real.txt")
		if err := os.WriteFile(list, []byte(strings.Join(files, "\n")+"\n"), 0o644); err != nil {
			return err
		}
		c, err := r.compare(ctx, s.name, len(files), fileSize(files...),
			func() error { return goDICOM(new(dicomio.Decoder), files) }, func() error { return goDICOM(nil, files) },
			dcmErr, "pydicom_decode.py", "--files", list)
		if err != nil {
			return err
		}
		c.Name, c.Reference = s.name, "pydicom"
		d.Real = append(d.Real, c)
	}
	if len(popiNative) > 0 {
		c, err := r.rleVsDcmtk(ctx, "popi_00_141", popi, popiNative, drle, conv)
		if err != nil {
			return err
		}
		d.RLE = c
	}
	return nil
}

// rleVsDcmtk times, in interleaved rounds, Go's read of the RLE files and
// of their decompressed copies against dcmdrle and dcmconv run per file.
// It takes minRealItems files spread over the series (two processes per
// file and round).
func (r *runner) rleVsDcmtk(ctx context.Context, name string, rleFiles, nativeFiles []string, drle, conv string) (*RLECompare, error) {
	k := min(len(rleFiles), minRealItems)
	var rl, nt []string
	for i := range k {
		j := i * len(rleFiles) / k
		rl, nt = append(rl, rleFiles[j]), append(nt, nativeFiles[j])
	}
	out := filepath.Join(r.tmp, "dcmtk-out.dcm")
	defer os.Remove(out)
	run := func(tool string, files []string) (float64, error) {
		st := time.Now()
		for _, f := range files {
			if msg, err := exec.CommandContext(ctx, tool, f, out).CombinedOutput(); err != nil {
				return 0, fmt.Errorf("bench: %s %s: %v: %s", filepath.Base(tool), f, err, msg)
			}
		}
		return 1e3 * time.Since(st).Seconds() / float64(len(files)), nil
	}
	// Go's net is the difference of two reads of ~0.1-0.5 ms a file; the
	// first files after the dcmtk processes of the round pay for pages the
	// runtime gave back meanwhile, which can outweigh the difference. Each
	// timed pass is therefore preceded by an untimed one over the same
	// files, for both of Go's sides alike.
	timeGo := func(files []string) (float64, error) {
		d := new(dicomio.Decoder)
		if err := goDICOM(d, files); err != nil {
			return 0, err
		}
		st := time.Now()
		if err := goDICOM(d, files); err != nil {
			return 0, err
		}
		return 1e3 * time.Since(st).Seconds() / float64(len(files)), nil
	}
	var goR, goN, dr, dc []float64
	for round := range r.decodeRounds() {
		steps := []func() error{
			func() error { v, err := timeGo(rl); goR = append(goR, v); return err },
			func() error { v, err := timeGo(nt); goN = append(goN, v); return err },
			func() error { v, err := run(drle, rl); dr = append(dr, v); return err },
			func() error { v, err := run(conv, nt); dc = append(dc, v); return err },
		}
		if round%2 == 1 {
			steps[0], steps[1], steps[2], steps[3] = steps[2], steps[3], steps[0], steps[1]
		}
		for _, f := range steps {
			if err := f(); err != nil {
				return nil, err
			}
		}
	}
	c := &RLECompare{Name: name + " (RLE)", Items: k, GoRLEMs: spreadOf(goR), GoNativeMs: spreadOf(goN),
		DcmdrleMs: spreadOf(dr), DcmconvMs: spreadOf(dc)}
	c.GoNetMs = median(diffs(goR, goN))
	c.DcmtkNetMs = median(diffs(dr, dc))
	c.Speedup = ratio(c.DcmtkNetMs, c.GoNetMs)
	c.WholeSpeedup = ratio(c.DcmdrleMs.Median, c.GoRLEMs.Median)
	r.progress("decode RLE %s (%d files): go %s ms/file RLE, %s native (net %.2f); dcmdrle %s, dcmconv %s (net %.2f); decompression speedup %.2f, whole %.2f",
		name, k, c.GoRLEMs.format(2), c.GoNativeMs.format(2), c.GoNetMs, c.DcmdrleMs.format(1), c.DcmconvMs.format(1), c.DcmtkNetMs, c.Speedup, c.WholeSpeedup)
	return c, nil
}

// diffs are a[i]-b[i] over paired rounds.
func diffs(a, b []float64) []float64 {
	var out []float64
	for i := 0; i < min(len(a), len(b)); i++ {
		out = append(out, a[i]-b[i])
	}
	return out
}
