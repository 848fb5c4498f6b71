package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/internal/report"
)

// cmdReport writes the static HTML report of a replay: lungseg report
// --out DIR [--masks-out DIR] [--masks DIR] REPORT.json.
func cmdReport(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	out := fs.String("out", "", "folder to write index.html and the PNG sheets and histograms into (required)")
	masksOut := fs.String("masks-out", "", "the folder replay --masks-out wrote the predicted masks into (needed for the comparison sheets)")
	masks := fs.String("masks", "", "folder of ground-truth PNGs for DICOM inputs, as given to replay --masks")
	tile := fs.Int("tile", 256, "side in pixels of each slice in the sheets")
	bins := fs.Int("bins", 20, "bins of the Dice histograms")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lungseg report --out DIR [--masks-out DIR] [--masks DIR] REPORT.json")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *out == "" {
		fs.Usage()
		return errors.New("want --out DIR and one REPORT.json")
	}
	if *tile < 32 || *tile > 1024 {
		return fmt.Errorf("--tile %d: want 32 to 1024", *tile)
	}
	if *bins < 2 || *bins > 200 {
		return fmt.Errorf("--bins %d: want 2 to 200", *bins)
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var rep replay.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("decoding %s: %w", fs.Arg(0), err)
	}
	page, err := writeHTMLReport(ctx, &rep, *out, *masksOut, *masks, report.Options{Tile: *tile, Bins: *bins})
	if err != nil {
		return err
	}
	fmt.Println(page)
	return nil
}

// writeHTMLReport writes the static report of rep into out and returns
// the page's path. masksOut is the folder replay --masks-out wrote (""
// leaves out the comparison sheets); masks the ground-truth folder of
// DICOM inputs. doReplay can call it for a replay --html flag.
func writeHTMLReport(ctx context.Context, rep *replay.Report, out, masksOut, masks string, o report.Options) (string, error) {
	px := report.Pixels{}
	if masksOut != "" {
		if st, err := os.Stat(masksOut); err != nil || !st.IsDir() {
			return "", fmt.Errorf("--masks-out %s: not a folder", masksOut)
		}
		px.Pred = report.MasksDir(masksOut, pngpair.ReadMask)
		var err error
		if px.Slices, err = report.LoadInputs(ctx, formats.All(), rep.Inputs, masks, report.Wanted(report.Pick(rep))); err != nil {
			return "", err
		}
	} else {
		fmt.Fprintln(os.Stderr, "lungseg report: no --masks-out: writing the scores and histograms without comparison sheets")
	}
	w, err := report.Write(out, rep, px, o)
	if err != nil {
		return "", err
	}
	for _, m := range w.Missing {
		fmt.Fprintln(os.Stderr, "lungseg report: not drawn:", m)
	}
	return filepath.Join(out, w.Page), nil
}
