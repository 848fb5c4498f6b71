package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
)

func cmdPhantom(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("phantom", flag.ContinueOnError)
	out := fs.String("out", "", "output folder (required)")
	n := fs.Int("n", 16, "number of slices")
	format := fs.String("format", "png", "dicom, pkl or png")
	seed := fs.Int64("seed", 1, "random seed (the same seed writes the same slices)")
	series := fs.Bool("series", false, "consecutive slices of one volume (nodules span several slices)")
	size := fs.Int("size", 512, "rows and columns of each slice")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("--out is required")
	}
	if *n <= 0 {
		return fmt.Errorf("--n %d must be positive", *n)
	}
	path, err := writePhantoms(*out, *format, *seed, *n, phantom.Options{Rows: *size, Cols: *size, Series: *series})
	if err != nil {
		return err
	}
	fmt.Printf("wrote %d %s phantom slices to %s\n", *n, *format, path)
	return nil
}

// writePhantoms writes n slices in one format and returns the path to give
// replay (the pickle file, or the folder).
func writePhantoms(out, format string, seed int64, n int, o phantom.Options) (string, error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	slices := phantom.Generate(seed, n, o)
	switch format {
	case "dicom":
		return out, phantom.WriteDICOM(out, slices)
	case "png":
		return out, phantom.WritePNG(out, slices)
	case "pkl":
		p := filepath.Join(out, "phantom.pkl")
		return p, phantom.WritePKL(p, slices)
	}
	return "", fmt.Errorf("unknown format %q (want dicom, pkl or png)", format)
}

func cmdDemo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	load := commonFlags(fs, flagsModels, flagsPipeline)
	n := fs.Int("n", 12, "phantom slices per format")
	out := fs.String("out", "", "keep the phantom data and outputs here (default: a temporary folder)")
	reportPath := fs.String("report", "", "write the JSON report to this file")
	masksOut := fs.String("masks-out", "", "write predicted masks under this folder")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	dir := *out
	if dir == "" {
		if dir, err = os.MkdirTemp("", "lungseg-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	start := time.Now()
	var inputs []string
	for i, f := range []string{"pkl", "dicom", "png"} {
		p, err := writePhantoms(filepath.Join(dir, f), f, int64(100+i), *n, phantom.Options{})
		if err != nil {
			return err
		}
		inputs = append(inputs, p)
	}
	fmt.Fprintf(os.Stderr, "wrote %d phantom slices in each of pkl, dicom and png under %s (%.1fs)\n", *n, dir, time.Since(start).Seconds())
	return doReplay(ctx, cfg, replayArgs{
		inputs: inputs, models: []string{"all"},
		masks:  filepath.Join(dir, "dicom", phantom.MasksDir),
		report: *reportPath, masksOut: *masksOut,
	})
}
