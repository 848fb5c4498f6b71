// Package bench measures lungseg against the alternatives, side by side
// in one run on one machine, and reports ratios (the machines are shared
// and noisy, so only ratios from the same run are comparable):
//
//   - inference: ONNX Runtime from Go against PyTorch eager (a Python
//     helper that loads the same weights from model.onnx into the model of
//     train/lungseg_train/models.py) on the same inputs and thread count,
//     at batch 1 and at the best batch, rounds interleaved;
//   - pipeline: ingest → preprocess → segment → score on an embedded
//     JetStream (pipeline.Run plus a replay) against a bare loop of
//     preprocess.Input, Session.Run, imgx.ResizeBilinear and score.Compare
//     over the same slices with the same model and threads;
//   - batching: the pipeline with segment.Batcher in front of the model
//     against the pipeline's default one-image runs;
//   - decode: DICOM read as the ingest stage reads it (a dicomio.Decoder
//     reusing its pixel planes; dicomio.ReadFile's fresh memory beside)
//     against pydicom, the pickle reader against pandas.read_pickle, with
//     the peak memory of each;
//   - cascade: each "<detector>+crop" cascade against its detector alone
//     per slice on a real CT series, without and with the lung field;
//   - series: a real 141-slice series sent by C-STORE, from the first byte
//     received to its SEG published, against the sum of its bare
//     inference, with where the rest of the time goes.
//
// Every figure is reported as min, median and max over rounds (Spread);
// targets are judged on the median.
//
// Run returns a Report; Report.WriteTable prints it and JSON marshals it.
// The Python side is skipped, with a note, when no interpreter with the
// needed modules is found.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/ortlib"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/rs/zerolog"
	ort "github.com/yalue/onnxruntime_go"
)

// Sections of a bench run.
const (
	SectionInference = "inference"
	SectionPipeline  = "pipeline"
	SectionBatching  = "batching"
	SectionDecode    = "decode"
	SectionCascade   = "cascade"
	// SectionSeries sends a whole real series by C-STORE and times it to
	// its SEG (series.go).
	SectionSeries = "series"
	// SectionMemory replays pickles of MemoryRows rows and reports peak
	// RSS, live heap, backlog and disk use (not in DefaultSections: it
	// takes minutes).
	SectionMemory = "memory"
)

// AllSections lists the sections in the order they run.
var AllSections = []string{SectionInference, SectionPipeline, SectionBatching, SectionDecode, SectionCascade, SectionSeries, SectionMemory}

// DefaultSections are the sections run when none are named.
var DefaultSections = []string{SectionInference, SectionPipeline, SectionBatching, SectionDecode, SectionCascade, SectionSeries}

// ErrOptions reports unusable options.
var ErrOptions = errors.New("bench: bad options")

// Options configure a bench run. Zero values take the defaults given.
type Options struct {
	// ModelsDir is the model registry (default "models").
	ModelsDir string
	// Models to measure: names, or "all" (default all).
	Models []string
	// N is the images (inference) or slices (pipeline, decode) per
	// measurement (default 16).
	N int
	// Threads are the intra-op thread counts measured, the same on both
	// sides (default 1 and 2).
	Threads []int
	// Batches are the batch sizes of the inference section (default 1, 2,
	// 4, 8).
	Batches []int
	// Rounds are the interleaved rounds of each comparison (default 3);
	// each figure is the median over rounds.
	Rounds int
	// Sections to run (default all).
	Sections []string
	// Python is the interpreter for the reference side; "" finds one
	// (FindPython), "none" skips the Python side.
	Python string
	// TrainDir holds lungseg_train (default: "train" beside ModelsDir, or
	// in the working folder).
	TrainDir string
	// BatchMax and BatchWait configure segment.Batcher in the batching
	// section (default 4 and 20ms); the batched pipeline runs BatchMax
	// segment workers.
	BatchMax  int
	BatchWait time.Duration
	// BatchWorkers are the batched segment stage's workers (default
	// BatchMax). With BatchMax 1 and 2 workers the model still runs one
	// image at a time, and the figure isolates the gain of overlapping a
	// message's publish and ack with the next inference.
	BatchWorkers int
	// Provider is the ONNX Runtime execution provider for the Go side
	// (cpu, cuda, tensorrt; default cpu) and FP16 lets TensorRT use half
	// precision. With a GPU provider the PyTorch comparison is skipped
	// (Debian's torch is CPU-only) and the inference section reports
	// achieved GFLOP/s instead.
	Provider string
	FP16     bool
	// PeakTFLOPs is the accelerator's peak (dense, at the precision used)
	// to compare achieved FLOP/s with; 0 leaves the fraction out.
	PeakTFLOPs float64
	// CascadeSeries is a folder of DICOM slices for the cascade section
	// (default: ../shared/data/ct_series/popi_00_141 beside the repository
	// when present, else the phantom series; "none": the phantoms).
	CascadeSeries string
	// CTSeries is the folder of real CT series the decode section reads
	// (default: ../shared/data/ct_series beside the repository when
	// present; "none": phantoms and CT_small only).
	CTSeries string
	// SeriesDir is the series sent by C-STORE in the series section
	// (default: popi_00_141 of CTSeries; "none": skip the section) and
	// SeriesQuiet the quiet period after which the SEG collector and the
	// findings stage count a series complete (default DefaultSeriesQuiet).
	SeriesDir   string
	SeriesQuiet time.Duration
	// MemoryRows are the pickle sizes of the memory section (default
	// DefaultMemoryRows), MaxBacklog its ingest backlog bound in bytes (0:
	// bus.DefaultMaxBacklog), and MemoryUnbound measures each size again
	// without a bound, for comparison.
	MemoryRows    []int
	MaxBacklog    int64
	MemoryUnbound bool
	// Progress receives a line per measurement; nil for none.
	Progress io.Writer
	// Log receives the pipeline's logs (default: none).
	Log *zerolog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.ModelsDir == "" {
		o.ModelsDir = "models"
	}
	if len(o.Models) == 0 {
		o.Models = []string{"all"}
	}
	if o.N == 0 {
		o.N = 16
	}
	if len(o.Threads) == 0 {
		o.Threads = []int{1, 2}
	}
	if len(o.Batches) == 0 {
		o.Batches = []int{1, 2, 4, 8}
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if len(o.Sections) == 0 {
		o.Sections = DefaultSections
	}
	if o.BatchMax == 0 {
		o.BatchMax = 4
	}
	if o.BatchWorkers == 0 {
		o.BatchWorkers = o.BatchMax
	}
	if o.BatchWait == 0 {
		o.BatchWait = 20 * time.Millisecond
	}
	if o.N < 1 || o.Rounds < 1 || o.BatchMax < 1 || o.BatchWait < 0 || o.BatchWorkers < 1 {
		return o, fmt.Errorf("%w: n %d, rounds %d, batch max %d, batch wait %v", ErrOptions, o.N, o.Rounds, o.BatchMax, o.BatchWait)
	}
	for _, t := range o.Threads {
		if t < 1 || t > 256 {
			return o, fmt.Errorf("%w: %d threads", ErrOptions, t)
		}
	}
	for _, b := range o.Batches {
		if b < 1 || b > 1024 {
			return o, fmt.Errorf("%w: batch %d", ErrOptions, b)
		}
	}
	for _, s := range o.Sections {
		if !slices.Contains(AllSections, s) {
			return o, fmt.Errorf("%w: section %q (want %s)", ErrOptions, s, strings.Join(AllSections, ", "))
		}
	}
	if o.TrainDir == "" {
		for _, c := range []string{filepath.Join(filepath.Dir(filepath.Clean(o.ModelsDir)), "train"), "train"} {
			if _, err := os.Stat(filepath.Join(c, "lungseg_train", "models.py")); err == nil {
				o.TrainDir = c
				break
			}
		}
	}
	if o.Provider == "" {
		o.Provider = "cpu"
	}
	if o.PeakTFLOPs < 0 {
		return o, fmt.Errorf("%w: peak %g TFLOP/s", ErrOptions, o.PeakTFLOPs)
	}
	if o.Log == nil {
		l := zerolog.Nop()
		o.Log = &l
	}
	return o, nil
}

func (o Options) has(section string) bool { return slices.Contains(o.Sections, section) }

// infer returns the session options for t intra-op threads.
func (o Options) infer(t int) infer.Options {
	return infer.Options{Provider: o.Provider, FP16: o.FP16, IntraOpThreads: t, InterOpThreads: 1}
}

// Host describes the machine a report was measured on.
type Host struct {
	CPUs        int       `json:"cpus"`
	GOOS        string    `json:"goos"`
	GOARCH      string    `json:"goarch"`
	Go          string    `json:"go"`
	ORT         string    `json:"onnxruntime"`
	ORTLib      string    `json:"onnxruntime_library"`
	LoadAverage []float64 `json:"load_average,omitempty"`
}

// Report is the outcome of a bench run.
type Report struct {
	Started   time.Time       `json:"started"`
	Seconds   float64         `json:"seconds"`
	Host      Host            `json:"host"`
	Command   string          `json:"command,omitempty"`
	Provider  string          `json:"provider"`
	N         int             `json:"n"`
	Rounds    int             `json:"rounds"`
	Python    string          `json:"python,omitempty"`
	Inference []Inference     `json:"inference,omitempty"`
	Pipeline  []Pipeline      `json:"pipeline,omitempty"`
	Batching  []Batching      `json:"batching,omitempty"`
	Decode    *Decode         `json:"decode,omitempty"`
	Cascade   []Cascade       `json:"cascade,omitempty"`
	Series    []SeriesLatency `json:"series,omitempty"`
	Memory    []Memory        `json:"memory,omitempty"`
	Targets   []Target        `json:"targets"`
	// Skipped lists what was not measured, and why.
	Skipped []string `json:"skipped,omitempty"`
}

// Target is one goal of issue 9 with the figure that decides it.
type Target struct {
	Name  string  `json:"name"`
	Goal  string  `json:"goal"`
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
	Note  string  `json:"note,omitempty"`
}

// Run measures the selected sections and returns the report. Errors of a
// whole section end the run; a missing Python side is noted in Skipped.
func Run(ctx context.Context, o Options) (*Report, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now().UTC(), N: o.N, Rounds: o.Rounds, Provider: o.Provider}
	start := time.Now()
	if err := ortlib.Init(ctx, *o.Log); err != nil {
		return nil, fmt.Errorf("bench: loading ONNX Runtime: %w", err)
	}
	rep.Host = Host{CPUs: runtime.NumCPU(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, Go: runtime.Version(),
		ORT: ort.GetVersion(), ORTLib: ortlib.Loaded(), LoadAverage: loadAverage()}
	reg, err := model.OpenRegistry(o.ModelsDir)
	if err != nil {
		return nil, err
	}
	names, err := reg.Resolve(o.Models)
	if err != nil {
		return nil, err
	}
	var cards []*model.Card
	for _, n := range names {
		if model.IsCascade(n) {
			// measured in the cascade section against its detector
			continue
		}
		base, tta := model.SplitVariant(n)
		if tta {
			continue
		}
		c, err := reg.Get(base)
		if err != nil {
			return nil, err
		}
		if c.IsCrop() {
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: crop models are not benchmarked", n))
			continue
		}
		cards = append(cards, c)
	}
	// The inference section also measures each float model's int8
	// variants, right after it, against it.
	var infCards []*model.Card
	if o.has(SectionInference) {
		for _, c := range cards {
			if !slices.Contains(infCards, c) {
				infCards = append(infCards, c)
			}
			for _, q := range reg.QuantizedOf(c.Name) {
				if !slices.Contains(infCards, q) {
					infCards = append(infCards, q)
				}
			}
		}
	}
	if len(cards) == 0 && !((o.has(SectionCascade) || o.has(SectionSeries)) && slices.ContainsFunc(names, model.IsCascade)) {
		return nil, fmt.Errorf("%w: no models selected", ErrOptions)
	}
	tmp, err := os.MkdirTemp("", "lungseg-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := writeScripts(tmp); err != nil {
		return nil, err
	}
	py := ""
	if o.Python != "none" {
		py = FindPython(o.Python)
		if py == "" {
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("python side: no interpreter found (%q)", o.Python))
		}
	} else {
		rep.Skipped = append(rep.Skipped, "python side: --python none")
	}
	rep.Python = py
	r := &runner{o: o, tmp: tmp, py: py, rep: rep}
	if o.has(SectionInference) {
		if err := r.inference(ctx, infCards); err != nil {
			return rep, err
		}
	}
	if o.has(SectionPipeline) {
		if err := r.pipelines(ctx, reg, cards); err != nil {
			return rep, err
		}
	}
	if o.has(SectionBatching) {
		if err := r.batching(ctx, reg, cards); err != nil {
			return rep, err
		}
	}
	if o.has(SectionDecode) {
		if err := r.decode(ctx); err != nil {
			return rep, err
		}
	}
	if o.has(SectionCascade) {
		if err := r.cascades(ctx, reg, names); err != nil {
			return rep, err
		}
	}
	if o.has(SectionSeries) {
		if err := r.seriesLatency(ctx, reg, names, cards); err != nil {
			return rep, err
		}
	}
	if o.has(SectionMemory) {
		if err := r.memory(ctx, reg, cards); err != nil {
			return rep, err
		}
	}
	rep.Targets = targets(rep)
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// runner carries one run's state.
type runner struct {
	o   Options
	tmp string
	py  string
	rep *Report

	series, warm *phantomSet
	// oneRound makes decode comparisons run a single round (the 2N pickle).
	oneRound bool
}

func (r *runner) progress(format string, args ...any) {
	if r.o.Progress != nil {
		fmt.Fprintf(r.o.Progress, format+"\n", args...)
	}
}

func (r *runner) skip(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.rep.Skipped = append(r.rep.Skipped, msg)
	r.progress("skipped: %s", msg)
}

// median of xs (0 for none); xs is not changed.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// ratio is a/b, or 0 when b is 0 or either is not finite.
func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) || math.IsInf(a, 0) || math.IsInf(b, 0) {
		return 0
	}
	return a / b
}

// loadAverage reads /proc/loadavg (nil elsewhere).
func loadAverage() []float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return nil
	}
	var l [3]float64
	if _, err := fmt.Sscan(string(b), &l[0], &l[1], &l[2]); err != nil {
		return nil
	}
	return l[:]
}
