package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
)

// TestHTMLReportFromReplay replays phantom DICOMs (ground truth from a
// masks folder) with two models, then writes the HTML report from the JSON
// report, the predicted masks and the inputs read again.
func TestHTMLReportFromReplay(t *testing.T) {
	reg := testRegistry(t)
	dir := t.TempDir()
	in, err := writePhantoms(filepath.Join(dir, "dicom"), "dicom", 21, 5, phantom.Options{Rows: 96, Cols: 96, Series: true})
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.ModelsDir, cfg.LogLevel = reg, "warn"
	reportPath := filepath.Join(dir, "report.json")
	masksOut := filepath.Join(dir, "masks-out")
	masks := filepath.Join(in, phantom.MasksDir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := doReplay(ctx, &cfg, replayArgs{inputs: []string{in}, models: []string{"all"}, masks: masks, report: reportPath, masksOut: masksOut}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(artifactsDir(t), "report")
	if err := os.RemoveAll(out); err != nil {
		t.Fatal(err)
	}
	if err := cmdReport(ctx, []string{"--out", out, "--masks-out", masksOut, "--masks", masks, "--tile", "160", reportPath}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"index.html", "sheet-tiny.png", "sheet-tiny-low.png", "dice-tiny.png", "dice-tiny-low.png"} {
		st, err := os.Stat(filepath.Join(out, f))
		if err != nil || st.Size() < 200 {
			t.Errorf("%s: %v", f, err)
		}
	}
	html, _ := os.ReadFile(filepath.Join(out, "index.html"))
	if strings.Contains(string(html), "Not drawn") {
		t.Errorf("some slices or masks were not drawn:\n%s", html)
	}
	t.Logf("report: %s", filepath.Join(out, "index.html"))

	// Bad invocations.
	for _, args := range [][]string{
		{reportPath},
		{"--out", out},
		{"--out", out, "--tile", "5", reportPath},
		{"--out", out, "--masks-out", filepath.Join(dir, "nope"), reportPath},
		{"--out", out, filepath.Join(dir, "missing.json")},
	} {
		if err := cmdReport(ctx, args); err == nil {
			t.Errorf("report %v: no error", args)
		}
	}
}
