package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"

	"github.com/lungseg/lungseg/internal/bench"
	"github.com/lungseg/lungseg/pkg/model"
)

// cmdBench measures inference, the pipeline, batching and decoding
// against their alternatives in one run and prints ratios.
func cmdBench(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	modelsDir := fs.String("models-dir", "", "model registry folder (default: $LUNGSEG_MODELS, models/ in the working directory or a parent, or beside the executable)")
	modelSel := fs.String("model", "all", "model to measure (a name, comma-separated names, or all)")
	n := fs.Int("n", 16, "images or slices per measurement")
	rounds := fs.Int("rounds", 3, "interleaved rounds per comparison (figures are medians)")
	threads := fs.String("threads", "1,2", "intra-op thread counts, the same for ONNX Runtime and PyTorch")
	batches := fs.String("batches", "1,2,4,8", "batch sizes of the inference comparison")
	sections := fs.String("sections", strings.Join(bench.DefaultSections, ","), "sections to run (of "+strings.Join(bench.AllSections, ", ")+")")
	memoryRows := fs.String("memory-rows", "264,708,2124", "memory section: pickle rows per replay")
	memoryUnbound := fs.Bool("memory-unbound", false, "memory section: also replay each pickle without the ingest backlog bound")
	maxBacklogMB := fs.Int("max-backlog-mb", 0, "memory section: the ingest backlog bound in MB (0: the default)")
	ctSeries := fs.String("ct-series", "", "decode section: folder of real CT series (default ../shared/data/ct_series when present; none: phantoms and CT_small only)")
	seriesDir := fs.String("series-dir", "", "series section: folder of the series sent by C-STORE (default popi_00_141 of the ct_series; none: skip)")
	seriesQuiet := fs.Duration("series-quiet", bench.DefaultSeriesQuiet, "series section: quiet period after which the SEG and findings of a series are written")
	cascadeSeries := fs.String("cascade-series", "", "cascade section: folder of DICOM slices (default ../shared/data/ct_series/popi_00_141 when present, else phantoms; none: phantoms)")
	python := fs.String("python", "", "Python interpreter for the reference side (default /usr/bin/python3, else python3; none to skip)")
	trainDir := fs.String("train-dir", "", "folder holding lungseg_train (default: train beside --models-dir, or ./train)")
	batchMax := fs.Int("batch-max", 4, "batching section: segment.Batcher max batch (and segment workers)")
	batchWorkers := fs.Int("batch-workers", 0, "batching section: segment workers of the batched pipeline (default --batch-max)")
	batchWait := fs.Duration("batch-wait", 0, "batching section: max wait of a batch (default 20ms)")
	provider := fs.String("provider", "cpu", "ONNX Runtime execution provider of the Go side: cpu, cuda, tensorrt")
	fp16 := fs.Bool("fp16", false, "let TensorRT build fp16 kernels")
	peak := fs.Float64("peak-tflops", 0, "accelerator peak TFLOP/s to compare achieved FLOP/s with (e.g. 989 for an H100 SXM, dense fp16/bf16)")
	out := fs.String("json", "bench.json", "write the JSON report here (empty: don't)")
	logLevel := fs.String("log-level", "warn", "log level of the pipeline under test")
	cpuProfile := fs.String("cpuprofile", "", "write a Go CPU profile of the whole run here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	ints := func(name, s string) ([]int, error) {
		var v []int
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p == "" {
				continue
			}
			i, err := strconv.Atoi(p)
			if err != nil {
				return nil, fmt.Errorf("--%s %q: %w", name, s, err)
			}
			v = append(v, i)
		}
		return v, nil
	}
	th, err := ints("threads", *threads)
	if err != nil {
		return err
	}
	bs, err := ints("batches", *batches)
	if err != nil {
		return err
	}
	mrows, err := ints("memory-rows", *memoryRows)
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	log := newLogger(*logLevel, os.Stderr)
	if *modelsDir, err = model.FindRegistry(*modelsDir, model.Where{}); err != nil {
		return err
	}
	o := bench.Options{
		ModelsDir: *modelsDir, Models: strings.Split(*modelSel, ","), N: *n, Rounds: *rounds,
		Threads: th, Batches: bs, Sections: strings.Split(*sections, ","), Python: *python,
		CascadeSeries: *cascadeSeries, CTSeries: *ctSeries, SeriesDir: *seriesDir, SeriesQuiet: *seriesQuiet, TrainDir: *trainDir, Provider: *provider, FP16: *fp16, PeakTFLOPs: *peak, BatchMax: *batchMax, BatchWait: *batchWait, BatchWorkers: *batchWorkers, Progress: os.Stderr, Log: &log,
		MemoryRows: mrows, MemoryUnbound: *memoryUnbound, MaxBacklog: int64(*maxBacklogMB) << 20,
	}
	rep, err := bench.Run(ctx, o)
	if rep != nil {
		rep.Command = "lungseg bench " + strings.Join(args, " ")
		if werr := rep.WriteTable(os.Stdout); werr != nil && err == nil {
			err = werr
		}
		if *out != "" {
			if werr := writeJSON(*out, rep); werr != nil {
				err = errors.Join(err, werr)
			} else {
				fmt.Fprintf(os.Stderr, "wrote %s\n", *out)
			}
		}
	}
	return err
}
