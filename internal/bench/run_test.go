package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/testenv"
)

// tinyRegistry makes a registry holding only the tiny test model.
func tinyRegistry(t *testing.T) string {
	t.Helper()
	src := filepath.Join(testenv.RepoRoot(t), "segment", "testdata", "tiny")
	reg := filepath.Join(t.TempDir(), "models")
	dst := filepath.Join(reg, "tiny")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{model.CardFile, model.ModelFile} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

// TestRunWithoutPython runs every section on the tiny model with the
// Python side off: the Go side must be measured, the Python side noted as
// skipped, and the report must survive JSON and print its tables.
func TestRunWithoutPython(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	rep, err := Run(ctx, Options{ModelsDir: tinyRegistry(t), N: 3, Rounds: 1, Threads: []int{1},
		Batches: []int{1, 2}, Python: "none", BatchMax: 2, BatchWait: 50 * time.Millisecond, Progress: &progress})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Inference) != 1 {
		t.Fatalf("%d inference results, want 1", len(rep.Inference))
	}
	in := rep.Inference[0]
	if in.Model != "tiny" || in.Threads != 1 || in.Provider != "cpu" || in.Torch != nil || in.TorchSkipped == "" {
		t.Fatalf("inference %+v", in)
	}
	if len(in.Go.Batches) != 2 || in.Go.Batch1Ms <= 0 || in.Go.BestImagesPerS <= 0 {
		t.Fatalf("go side %+v", in.Go)
	}
	for _, b := range in.Go.Batches {
		if b.Samples != repsFor(b.Batch) || b.MsPerImage*float64(b.Batch) != b.MsPerBatch {
			t.Fatalf("batch timing %+v", b)
		}
	}
	if len(rep.Pipeline) != 1 || rep.Pipeline[0].Slices != 3 || rep.Pipeline[0].Ratio <= 0 ||
		rep.Pipeline[0].InferenceShare <= 0 || rep.Pipeline[0].InferenceShare > 1 {
		t.Fatalf("pipeline %+v", rep.Pipeline)
	}
	if len(rep.Batching) != 1 || rep.Batching[0].Gain <= 0 || rep.Batching[0].MeanBatch < 1 || rep.Batching[0].MeanBatch > 2 {
		t.Fatalf("batching %+v", rep.Batching)
	}
	d := rep.Decode
	if d == nil || d.DICOM == nil || d.Pickle == nil || d.PickleLarge == nil {
		t.Fatalf("decode %+v", d)
	}
	// the three phantoms repeated to a pass of at least minRealItems files
	if d.DICOM.Items != len(repeatTo(make([]string, 3), minRealItems)) || d.DICOM.Items < minRealItems || d.DICOM.Go.Seconds <= 0 || d.DICOM.Python != nil || d.DICOM.Skipped == "" {
		t.Fatalf("dicom %+v", d.DICOM)
	}
	// every section reports its spread: the decode rounds are at least
	// minDecodeRounds whatever Rounds says, the others follow Rounds
	if s := d.DICOM.Go.PerItemSpread; s.N != minDecodeRounds || s.Min > s.Median || s.Median > s.Max || s.Median != d.DICOM.Go.PerItemMs {
		t.Fatalf("dicom spread %+v (median %v)", s, d.DICOM.Go.PerItemMs)
	}
	// DICOM is timed both ways (the ingest stage's Decoder, and ReadFile's
	// fresh memory), the pickles one way
	if f := d.DICOM.GoFresh; f == nil || f.PerItemSpread.N != minDecodeRounds || f.PerItemMs <= 0 || f.PeakMB <= 0 || d.Pickle.GoFresh != nil {
		t.Fatalf("dicom fresh %+v, pickle fresh %+v", f, d.Pickle.GoFresh)
	}
	if s := in.Go.Batch1Spread; s.N != repsFor(1) || s.Median != in.Go.Batch1Ms || s.Min > s.Median || s.Median > s.Max {
		t.Fatalf("inference spread %+v (median %v)", s, in.Go.Batch1Ms)
	}
	if p := rep.Pipeline[0]; p.PipelineSpread.N != 1 || p.RatioSpread.N != 1 || p.PipelineSpread.Median != p.PipelineSlicesPerS {
		t.Fatalf("pipeline spread %+v", p)
	}
	if b := rep.Batching[0]; b.BatchedSpread.N != 1 || b.GainSpread.N != 1 {
		t.Fatalf("batching spread %+v", b)
	}
	if d.PickleLarge.Items != 6 || d.PickleLarge.Bytes <= d.Pickle.Bytes || d.PickleGrowth <= 0 {
		t.Fatalf("pickle %+v / %+v", d.Pickle, d.PickleLarge)
	}
	// the reader streams: doubling the rows must not keep anything near the added rows
	// (a reader that held every row would show about 1)
	if d.PickleRetained < 0 || d.PickleRetained > 0.5 {
		t.Fatalf("pickle reader kept %.2f of the added input (peaks %.1f / %.1f MB)", d.PickleRetained,
			d.Pickle.Go.PeakMB, d.PickleLarge.Go.PeakMB)
	}
	if !strings.Contains(strings.Join(rep.Skipped, "\n"), "python") {
		t.Fatalf("skipped %q does not mention python", rep.Skipped)
	}
	// Only targets that have both sides are judged: here the Go-only ones.
	names := map[string]bool{}
	for _, tg := range rep.Targets {
		names[strings.Fields(tg.Name)[0]] = true
	}
	if names["inference"] || names["dicom"] || !names["pipeline"] || !names["batching"] || !names["pickle"] {
		t.Fatalf("targets %+v", rep.Targets)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil || back.Decode == nil || len(back.Inference) != 1 {
		t.Fatalf("JSON round trip: %v", err)
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"INFERENCE", "PIPELINE", "BATCHING", "DECODE", "TARGET", "skipped: python side"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	if !strings.Contains(progress.String(), "inference tiny threads 1") {
		t.Errorf("progress: %q", progress.String())
	}
}

// TestRunPythonDecode runs the decode section against pydicom and pandas.
func TestRunPythonDecode(t *testing.T) {
	py := testenv.RequirePython(t, "pydicom", "pandas", "numpy")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{ModelsDir: tinyRegistry(t), N: 2, Rounds: 2, Sections: []string{SectionDecode}, Python: py})
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*DecodeCompare{"dicom": rep.Decode.DICOM, "pickle": rep.Decode.Pickle, "pickle 2N": rep.Decode.PickleLarge} {
		if c.Python == nil || c.Python.Seconds <= 0 || c.Python.PeakMB <= 0 || c.Speedup <= 0 || c.Skipped != "" {
			t.Errorf("%s: %+v (python %+v)", name, c, c.Python)
		}
	}
	// pandas holds the whole frame: its peak must grow with the rows,
	// at least by half the added file size.
	grow := rep.Decode.PickleLarge.Python.PeakMB - rep.Decode.Pickle.Python.PeakMB
	added := float64(rep.Decode.PickleLarge.Bytes-rep.Decode.Pickle.Bytes) / (1 << 20)
	if grow < added/2 {
		t.Errorf("pandas peak grew %.1f MB for %.1f MB more file", grow, added)
	}
}

// TestTorchHelperLoadsShippedWeights checks that the PyTorch helper maps
// every tensor of each shipped float model from its ONNX file and
// reproduces the model's parity output.
func TestTorchHelperLoadsShippedWeights(t *testing.T) {
	py := testenv.RequireTrain(t)
	root := testenv.RepoRoot(t)
	reg, err := model.OpenRegistry(filepath.Join(root, "models"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	if err := writeScripts(tmp); err != nil {
		t.Fatal(err)
	}
	for _, name := range reg.Names() {
		if c, _ := reg.Get(name); c.Quantized() {
			// An int8 model has no PyTorch network: the bench measures it
			// against its float model, and segment's parity test checks
			// it against the quantiser's PyTorch run of its graph.
			continue
		}
		t.Run(name, func(t *testing.T) {
			card, _ := reg.Get(name)
			in := filepath.Join(tmp, name+".bin")
			if err := writeFloat32(in, benchInputs(card, 1)); err != nil {
				t.Fatal(err)
			}
			var hello torchHello
			s, err := startPy(context.Background(), py, filepath.Join(tmp, "torch_infer.py"), nil, &hello,
				"--train-dir", filepath.Join(root, "train"), "--model-dir", card.Dir, "--inputs", in, "--n", "1", "--threads", "1")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if hello.Parity == nil || *hello.Parity > 1e-4 {
				t.Fatalf("parity %v, want ≤ 1e-4", hello.Parity)
			}
			if hello.Weights.Total == 0 || hello.Threads != 1 {
				t.Fatalf("hello %+v", hello)
			}
			var resp timingResp
			if err := s.call(timingReq{Batch: 2, Reps: 1}, &resp); err != nil {
				t.Fatal(err)
			}
			if len(resp.Seconds) != 1 || resp.Seconds[0] <= 0 {
				t.Fatalf("timing %+v", resp)
			}
		})
	}
}

func TestOptionsRejects(t *testing.T) {
	for _, o := range []Options{
		{N: -1}, {Rounds: -2}, {Threads: []int{0}}, {Batches: []int{2000}}, {Sections: []string{"gpu"}}, {PeakTFLOPs: -1},
	} {
		if _, err := o.withDefaults(); !errors.Is(err, ErrOptions) {
			t.Errorf("%+v: got %v, want ErrOptions", o, err)
		}
	}
}

func TestPythonHelperFailureIsReported(t *testing.T) {
	py := testenv.RequirePython(t)
	tmp := t.TempDir()
	if err := writeScripts(tmp); err != nil {
		t.Fatal(err)
	}
	var hello decodeHello
	_, err := startPy(context.Background(), py, filepath.Join(tmp, "pandas_read.py"), nil, &hello) // no --file
	if !errors.Is(err, ErrPython) || !strings.Contains(err.Error(), "--file") {
		t.Fatalf("got %v, want ErrPython naming the missing flag", err)
	}
}

func TestMedianAndRatio(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tc.xs); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
		}
	}
	if ratio(1, 0) != 0 || ratio(3, 2) != 1.5 {
		t.Error("ratio")
	}
	if s := spreadOf([]float64{4, 1, 3, 2}); s != (Spread{Min: 1, Median: 2.5, Max: 4, N: 4}) {
		t.Errorf("spreadOf = %+v", s)
	}
	if s := spreadOf([]float64{4, 1, 3}).scaled(-2); s != (Spread{Min: -8, Median: -6, Max: -2, N: 3}) {
		t.Errorf("scaled(-2) = %+v", s)
	}
	if s := (Spread{}); s.format(1) != "-" || spreadOf([]float64{2}).format(1) != "2.0" ||
		spreadOf([]float64{2, 1, 4}).format(1) != "2.0 [1.0–4.0]" {
		t.Errorf("format: %q %q %q", s.format(1), spreadOf([]float64{2}).format(1), spreadOf([]float64{2, 1, 4}).format(1))
	}
	if got := ratios([]float64{4, 6, 1}, []float64{2, 0}); !slices.Equal(got, []float64{2}) {
		t.Errorf("ratios = %v (a round with a 0 is left out, unpaired ones too)", got)
	}
	if got := diffs([]float64{4, 6, 1}, []float64{2, 1}); !slices.Equal(got, []float64{2, 5}) {
		t.Errorf("diffs = %v", got)
	}
}

// TestRunDecodeRealFiles reads the ct_series where they lie (skipped
// without ../shared): the uncompressed series and popi_00_141 decompressed
// by dcmdrle (decompression excluded), the RLE series as stored, CT_small
// when pydicom's copy is there, and RLE against dcmdrle when dcmtk is.
func TestRunDecodeRealFiles(t *testing.T) {
	ct := filepath.Join(testenv.SharedData(t), "ct_series")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{ModelsDir: tinyRegistry(t), N: 2, Rounds: 1, Sections: []string{SectionDecode},
		Python: "none", CTSeries: ct})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*DecodeCompare{}
	for _, c := range rep.Decode.Real {
		byName[c.Name] = c
		if c.Items < minRealItems || c.Go.PerItemSpread.N != minDecodeRounds || c.Go.PerItemMs <= 0 {
			t.Errorf("%s: %+v", c.Name, c)
		}
	}
	want := []string{"lungmask_1 (Explicit VR Little Endian)", "popi_00_141 (RLE)", "lungdx_a0002_30 (RLE)"}
	_, dcmtk := exec.LookPath("dcmdrle")
	if dcmtk == nil {
		want = append(want, "popi_00_141 decompressed by dcmdrle (native)")
	}
	for _, n := range want {
		if byName[n] == nil {
			t.Errorf("no decode row %q in %v", n, rep.Decode.Real)
		}
	}
	if c := byName["popi_00_141 (RLE)"]; c != nil && c.Items != 141 {
		t.Errorf("popi_00_141: %d files, want the whole series", c.Items)
	}
	if dcmtk == nil {
		c := rep.Decode.RLE
		if c == nil || c.Items != minRealItems || c.DcmdrleMs.N != minDecodeRounds || c.GoRLEMs.Median <= 0 || c.DcmtkNetMs == 0 || c.Speedup == 0 {
			t.Fatalf("RLE against dcmdrle: %+v", c)
		}
		if c.GoNativeMs.N != minDecodeRounds || c.DcmconvMs.N != minDecodeRounds {
			t.Errorf("RLE against dcmdrle: %+v", c)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "dicom popi_00_141 (RLE)") || (dcmtk == nil && !strings.Contains(table.String(), "RLE DECOMPRESSION")) {
		t.Errorf("table:\n%s", table.String())
	}
}

// TestRunCascadeSection: "all" over a registry with a detector and its crop
// model measures the detector once in the inference section and the
// cascade against it in the cascade section, on the phantoms: the tiny
// detector proposes candidates, so the cascade runs crop windows and costs
// more than its detector, and the lung field (the phantoms have bodies and
// lungs) keeps at most as many windows.
func TestRunCascadeSection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Options{ModelsDir: testenv.TestRegistry(t, "tiny-det", "tiny-crop"), N: 3, Rounds: 1,
		Threads: []int{1}, Batches: []int{1}, Python: "none", Sections: []string{"inference", "cascade"}, CascadeSeries: "none"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Inference) != 1 || rep.Inference[0].Model != "tiny-det" {
		t.Fatalf("inference results %+v, want tiny-det once", rep.Inference)
	}
	if len(rep.Cascade) != 1 {
		t.Fatalf("cascade results %+v, want one", rep.Cascade)
	}
	c := rep.Cascade[0]
	if c.Model != "tiny-det+crop" || c.Slices != 3 || c.Source != "phantoms" {
		t.Fatalf("cascade row %+v", c)
	}
	if c.NoFieldWindows <= 0 || c.FieldWindows > c.NoFieldWindows {
		t.Errorf("windows per slice %.2f without the field, %.2f with it", c.NoFieldWindows, c.FieldWindows)
	}
	if c.DetectorMs <= 0 || c.NoFieldMs <= 0 || c.FieldMs <= 0 || c.RatioNoField != c.NoFieldMs/c.DetectorMs {
		t.Errorf("timings %+v", c)
	}
	// Refine's part (windows, crop model, merge) is inside the cascade's
	// time with the field, and the cascade beside its detector costs the
	// detector once plus refine.
	if c.RefineMs <= 0 || c.RefineMs >= c.FieldMs || c.RatioBeside != (c.DetectorMs+c.RefineMs)/c.DetectorMs {
		t.Errorf("refine %.2f ms of %.2f ms, beside-detector ratio %.2f: %+v", c.RefineMs, c.FieldMs, c.RatioBeside, c)
	}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil || !strings.Contains(b.String(), "tiny-det+crop") {
		t.Errorf("table without the cascade row (%v):\n%s", err, b.String())
	}
}

// TestRunMemorySection replays two small pickles with a 4 MiB backlog
// bound: the pending bytes stay near the bound, the work streams are empty
// at the end (interest retention), and the table shows the section.
func TestRunMemorySection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const bound = 4 << 20
	rep, err := Run(ctx, Options{ModelsDir: tinyRegistry(t), Threads: []int{1}, Python: "none",
		Sections: []string{SectionMemory}, MemoryRows: []int{12, 40}, MaxBacklog: bound})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Memory) != 2 || rep.Memory[0].Rows != 12 || rep.Memory[1].Rows != 40 {
		t.Fatalf("memory %+v", rep.Memory)
	}
	for _, m := range rep.Memory {
		// Ingest looks at the streams every 100 ms: a few slices over.
		if m.PeakPendingMB > 2*bound/1e6+2 {
			t.Errorf("%d rows: %.1f MB pending under a %.1f MB bound", m.Rows, m.PeakPendingMB, bound/1e6)
		}
		if m.PeakRSSMB <= 0 || m.PeakHeapMB <= 0 || len(m.StoreMB) == 0 || m.SlicesPerS <= 0 {
			t.Errorf("figures %+v", m)
		}
		for _, s := range []string{"RAW", "READY", "MASKS"} {
			if b, ok := m.StreamsMB[s]; !ok || b > 0.01 {
				t.Errorf("%d rows: %s holds %.2f MB at the end (%v)", m.Rows, s, b, ok)
			}
		}
		if m.StreamsMB["SCORES"] <= 0 {
			t.Errorf("%d rows: SCORES empty: the results are not kept for inspection", m.Rows)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "MEMORY") {
		t.Errorf("table lacks the memory section:\n%s", table.String())
	}
}

// TestRunSeriesSection sends popi_00_141 by C-STORE (storescu) to the
// receive path with the tiny detector and its cascade and checks the
// breakdown: its parts add up to the first-byte-to-SEG time, every slice
// is scored, the SEG comes at least one quiet period after the last
// score, and the bare inference sum is measured (skipped without
// ../shared or dcmtk).
func TestRunSeriesSection(t *testing.T) {
	ct := filepath.Join(testenv.SharedData(t), "ct_series")
	testenv.RequireCommand(t, "storescu")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const quiet = 500 * time.Millisecond
	rep, err := Run(ctx, Options{ModelsDir: testenv.TestRegistry(t, "tiny-det", "tiny-crop"), Models: []string{"tiny-det", "tiny-det+crop"},
		Rounds: 1, Threads: []int{1}, Python: "none", Sections: []string{SectionSeries}, CTSeries: ct, SeriesQuiet: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Series) != 2 || rep.Series[0].Model != "tiny-det" || rep.Series[1].Model != "tiny-det+crop" {
		t.Fatalf("series results %+v, want tiny-det and its cascade", rep.Series)
	}
	for _, x := range rep.Series {
		if x.Slices != 141 || x.TotalMs.N != 1 || x.BareMs.Median <= 0 || x.Ratio.Median <= 0 || x.QuietMs != 500 {
			t.Errorf("%s: %+v", x.Model, x)
		}
		if sum := x.ReceiveMs.Median + x.ProcessMs.Median + x.SEGMs.Median; math.Abs(sum-x.TotalMs.Median) > 1e-3 {
			t.Errorf("%s: received %v + scored %v + SEG %v = %v ms, total %v ms", x.Model, x.ReceiveMs.Median, x.ProcessMs.Median,
				x.SEGMs.Median, sum, x.TotalMs.Median)
		}
		// one association sends the slices one after another: the time in
		// the acceptor is part of the reception
		if x.AcceptMs.Median <= 0 || x.AcceptMs.Median > x.ReceiveMs.Median {
			t.Errorf("%s: %v ms in the acceptor of %v ms receiving", x.Model, x.AcceptMs.Median, x.ReceiveMs.Median)
		}
		if x.SEGMs.Median < 0.9*x.QuietMs || x.FirstScoreMs.Median <= 0 || x.FirstScoreMs.Median > x.TotalMs.Median {
			t.Errorf("%s: SEG %v ms after the last score with a %v ms quiet period; first score at %v ms", x.Model, x.SEGMs.Median,
				x.QuietMs, x.FirstScoreMs.Median)
		}
	}
	var table bytes.Buffer
	if err := rep.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "SERIES (C-STORE)") {
		t.Errorf("table:\n%s", table.String())
	}
}
