package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/score/findings"
)

// TestReplaySeriesPerInputReport replays a 12-slice phantom series pickle
// with `replay --series-per-input` (the tiny model, findings at the
// default 60 s quiet period) and reads the JSON report: its findings are
// complete before the command returns (the replay flushed its series),
// every nodule and slice is of the input's one series, every slice has
// its category, and the category table is data.
func TestReplaySeriesPerInputReport(t *testing.T) {
	reg := testRegistry(t)
	dir := t.TempDir()
	in, err := writePhantoms(filepath.Join(dir, "pkl"), "pkl", 7, 12,
		phantom.Options{Rows: 256, Cols: 256, Series: true, MinDiameterMm: 8, MaxDiameterMm: 20})
	if err != nil {
		t.Fatal(err)
	}
	labelled := 0
	for _, s := range phantom.Generate(7, 12, phantom.Options{Rows: 256, Cols: 256, Series: true, MinDiameterMm: 8, MaxDiameterMm: 20}) {
		if s.Label != "" {
			labelled++
		}
	}
	out := filepath.Join(dir, "report.json")
	start := time.Now()
	rep := runReplay(t, reg, 3*time.Minute, replayArgs{inputs: []string{in}, models: []string{"tiny"}, report: out,
		seriesPerInput: true})
	took := time.Since(start)
	if !rep.FindingsComplete || rep.FindingsNote != "" {
		t.Errorf("findings not complete: %q", rep.FindingsNote)
	}
	if took >= findings.DefaultConfig.QuietPeriod {
		t.Errorf("the replay took %s, as long as the findings' quiet period", took)
	}
	const series = "input:0:phantom.pkl"
	if len(rep.Slices) != 12 {
		t.Fatalf("%d slices", len(rep.Slices))
	}
	components := 0
	for _, s := range rep.Slices {
		if s.Series != series || s.Category == "" {
			t.Errorf("slice %s: series %q, category %q", s.ID, s.Series, s.Category)
		}
		components += len(s.Findings)
	}
	for _, n := range rep.Nodules {
		if n.Series != series || n.CompletedBy != findings.CompletedFlush || n.Slices < 1 || n.FirstSlice == "" {
			t.Errorf("nodule %+v", n)
		}
	}
	if components > 0 && len(rep.Nodules) == 0 {
		t.Errorf("%d components on the slices but no nodule", components)
	}
	if len(rep.Nodules) > components {
		t.Errorf("%d nodules from %d components", len(rep.Nodules), components)
	}
	ct, ok := rep.Categories["tiny"]
	if !ok || ct.Total != labelled || len(ct.Counts) != len(ct.Labels) || len(ct.Estimates) != 1+len(findings.Categories) {
		t.Errorf("category table %+v, want %d labelled slices", ct, labelled)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"nodules"`, `"findings_complete": true`, `"categories"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("the JSON report lacks %s", key)
		}
	}
	t.Logf("%d components on 12 slices, %d nodules; %d labelled slices; %.1fs", components, len(rep.Nodules), labelled, took.Seconds())
}
