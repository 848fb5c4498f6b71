package main

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/score/seg"
)

// TestReplayDICOMSEGAndSR replays a phantom DICOM series with its
// ground-truth masks (`replay --seg-out`, the tiny model): the JSON report
// has the series' nodule findings, and --seg-out has the series' SEG and
// TID 1500 SR, both valid for dciodvfy, the SR with one measurement group
// per nodule of the report, with the same ids, diameters and volumes.
func TestReplayDICOMSEGAndSR(t *testing.T) {
	reg := testRegistry(t)
	dir := t.TempDir()
	o := phantom.Options{Rows: 128, Cols: 128, Series: true, MinDiameterMm: 8, EmptyFraction: -1}
	in, err := writePhantoms(filepath.Join(dir, "dcm"), "dicom", 31, 6, o)
	if err != nil {
		t.Fatal(err)
	}
	series := phantom.Generate(31, 6, o)[0].SeriesUID
	out, segOut := filepath.Join(dir, "report.json"), filepath.Join(dir, "seg")
	rep := runReplay(t, reg, 3*time.Minute, replayArgs{inputs: []string{in}, models: []string{"tiny"}, report: out, segOut: segOut})
	if !rep.FindingsComplete {
		t.Errorf("findings not complete: %q", rep.FindingsNote)
	}
	truth := 0
	for _, s := range rep.Slices {
		if s.HasTruth {
			truth++
		}
	}
	if len(rep.Slices) != 6 || truth != 6 {
		t.Fatalf("%d slices, %d with truth; want 6 with masks", len(rep.Slices), truth)
	}
	nodules := map[string]replay.Nodule{}
	for _, n := range rep.Nodules {
		if n.Model == "tiny" {
			nodules[n.ID] = n
		}
	}
	if len(nodules) == 0 {
		t.Fatal("no nodule in the report")
	}
	base := filepath.Join(segOut, rep.ReplayID, "tiny")
	segPath := filepath.Join(base, series+".dcm")
	srPath := filepath.Join(base, series+".sr.dcm")
	b, err := os.ReadFile(srPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(segPath); err != nil {
		t.Fatal(err)
	}
	r, err := seg.ReadSR(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Groups) != len(nodules) {
		t.Errorf("the SR has %d measurement groups, the report %d nodules", len(r.Groups), len(nodules))
	}
	same := func(a, b float64) bool { return math.Abs(a-b) <= 1e-10*math.Max(1, math.Abs(b)) }
	for i, g := range r.Groups {
		n, ok := nodules[g.TrackingID]
		if !ok {
			t.Errorf("group %d: tracking id %q is no nodule of the report", i, g.TrackingID)
			continue
		}
		if !same(g.DiameterMm, n.DiameterMm) || !same(g.VolumeMm3, n.VolumeMm3) || g.DiameterUnit != "mm" || g.VolumeUnit != "mm3" {
			t.Errorf("nodule %s: SR %g %s, %g %s; report %g mm, %g mm³", n.ID, g.DiameterMm, g.DiameterUnit, g.VolumeMm3, g.VolumeUnit, n.DiameterMm, n.VolumeMm3)
		}
		if n.Series != series || g.SourceSeries != series || g.SEGInstance == "" {
			t.Errorf("nodule %s of series %s: SR group %+v", n.ID, n.Series, g)
		}
	}
	t.Run("dciodvfy", func(t *testing.T) {
		bin := testenv.RequireCommand(t, "dciodvfy") // Debian dicom3tools
		for p, want := range map[string]string{segPath: "Segmentation", srPath: "EnhancedSR"} {
			out, _ := exec.Command(bin, p).CombinedOutput()
			if !strings.Contains(string(out), want) {
				t.Errorf("dciodvfy did not recognise %s as %s:\n%s", p, want, out)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "Error") {
					t.Errorf("dciodvfy %s: %s", filepath.Base(p), l)
				}
			}
		}
	})
}
