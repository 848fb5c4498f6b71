package main

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/ortlib"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/preprocess"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/rs/zerolog"
)

// phantomsByName regenerates the phantoms writePhantoms wrote (same seed,
// count and options), keyed by slice name, for their truth masks.
func phantomsByName(seed int64, n int, o phantom.Options) map[string]phantom.Slice {
	m := map[string]phantom.Slice{}
	for _, s := range phantom.Generate(seed, n, o) {
		m[s.Name()] = s
	}
	return m
}

// testRegistry makes a registry with the tiny test model under two names
// and thresholds, so that two models run on one stream.
func testRegistry(t *testing.T) string {
	t.Helper()
	src := filepath.Join(testenv.RepoRoot(t), "segment", "testdata", "tiny")
	reg := t.TempDir()
	onnx, err := os.ReadFile(filepath.Join(src, model.ModelFile))
	if err != nil {
		t.Fatal(err)
	}
	card, err := model.LoadCard(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []struct {
		name string
		thr  float64
	}{{"tiny", card.Threshold}, {"tiny-low", 0.45}} {
		c := *card
		c.Name, c.Threshold = v.name, v.thr
		d := filepath.Join(reg, v.name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, model.ModelFile), onnx, 0o644); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(&c)
		if err := os.WriteFile(filepath.Join(d, model.CardFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

// readReport reads a replay's JSON report.
// runReplay replays args in a fresh in-process pipeline over the registry reg,
// within timeout, and returns the JSON report written to args.report.
func runReplay(t *testing.T, reg string, timeout time.Duration, args replayArgs) *replay.Report {
	t.Helper()
	cfg := defaultConfig()
	cfg.ModelsDir = reg
	cfg.LogLevel = "warn"
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := doReplay(ctx, &cfg, args); err != nil {
		t.Fatal(err)
	}
	return readReport(t, args.report)
}

func readReport(t *testing.T, path string) *replay.Report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep replay.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	return &rep
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestReplayEndToEnd replays phantom slices in all three input formats,
// plus a folder of broken inputs, through all four stages on a real
// JetStream server with the real ONNX Runtime, then checks the report and
// the written masks against masks and metrics computed here, outside the
// pipeline.
func TestReplayEndToEnd(t *testing.T) {
	root := testenv.RepoRoot(t)
	reg := testRegistry(t)
	dir := t.TempDir()
	const n = 4
	opts := phantom.Options{Rows: 256, Cols: 256}
	truth := map[string]phantom.Slice{}
	var inputs []string
	for i, f := range []string{"pkl", "dicom", "png"} {
		p, err := writePhantoms(filepath.Join(dir, f), f, int64(40+i), n, opts)
		if err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, p)
		prefix := f + "/"
		if f == "pkl" {
			prefix = "phantom/"
		}
		for j, s := range phantom.Generate(int64(40+i), n, opts) {
			id := prefix + s.Name()
			if f == "pkl" {
				id = prefix + strconv.Itoa(j) // pickle ids are row numbers
			} else {
				s.Label = "" // only the pickle carries labels
			}
			truth[id] = s
		}
	}

	// Broken inputs, each of which must produce an error while the rest
	// of the replay completes.
	bad := filepath.Join(dir, "bad")
	if err := os.MkdirAll(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	badFiles := map[string]string{
		"ingest/dicomio/testdata/truncated.dcm":           "truncated",
		"ingest/dicomio/testdata/non_ct.dcm":              "non_ct",
		"ingest/dicomio/testdata/nonimage.dcm":            "nonimage",
		"ingest/dicomio/testdata/huge_rows.dcm":           "huge_rows",
		"ingest/pickle/testdata/broken_unknown_class.pkl": "broken_unknown_class",
		"ingest/pickle/testdata/broken_mask_shape.pkl":    "broken_mask_shape/",
		"ingest/pickle/testdata/broken_nan.pkl":           "broken_nan/",
		"ingest/pickle/testdata/broken_huge_shape.pkl":    "broken_huge_shape",
	}
	for src := range badFiles {
		copyFile(t, filepath.Join(root, src), filepath.Join(bad, filepath.Base(src)))
	}
	hu := imgx.NewHU(32, 32)
	if err := pngpair.Write(bad, "wrongmask", hu, nil); err != nil {
		t.Fatal(err)
	}
	if err := pngpair.WriteMask(filepath.Join(bad, "wrongmask"+pngpair.MaskSuffix), imgx.NewMask(16, 16)); err != nil {
		t.Fatal(err)
	}
	badFiles["(png)"] = "wrongmask"
	inputs = append(inputs, bad)

	masksOut := filepath.Join(dir, "masks-out")
	rep := runReplay(t, reg, 5*time.Minute, replayArgs{inputs: inputs, models: []string{"all"},
		masks: filepath.Join(dir, "dicom", phantom.MasksDir), report: filepath.Join(dir, "report.json"), masksOut: masksOut})
	if len(rep.Slices) != int(rep.Ingested)*2 {
		t.Fatalf("%d slice results for %d slices × 2 models", len(rep.Slices), rep.Ingested)
	}

	// Each broken input has its error.
	for src, id := range badFiles {
		found := false
		for _, e := range rep.Errors {
			if strings.HasPrefix(e.ID, "bad/"+id) && e.Error != "" {
				found = true
			}
		}
		if !found {
			t.Errorf("no error reported for %s (id bad/%s); errors: %+v", src, id, rep.Errors)
		}
	}

	// Independent check: run the model here, outside the pipeline, and
	// compare masks and metrics.
	r, err := model.OpenRegistry(reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ortlib.Init(context.Background(), zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, sr := range rep.Slices {
		s, ok := truth[sr.ID]
		if !ok {
			continue
		}
		seen[sr.Model]++
		card, err := r.Get(sr.Model)
		if err != nil {
			t.Fatal(err)
		}
		sess, err := infer.Open(card, infer.Options{}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		prob, err := sess.Run(preprocess.Input(s.HU, card), 1)
		sess.Close()
		if err != nil {
			t.Fatal(err)
		}
		full := imgx.ResizeBilinear(prob, card.Input.Height, card.Input.Width, s.HU.Rows, s.HU.Cols)
		// Score removes what lies outside the slice's lung field (every
		// input gets the phantoms' 0.7 mm spacing: written or assumed).
		field, err := lungfield.Compute(s.HU, s.SpacingMm, s.SpacingMm, lungfield.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range field.Pix {
			if v == 0 {
				full[i] = 0
			}
		}
		written, err := pngpair.ReadMask(filepath.Join(masksOut, sr.Model, sr.ID+".png"))
		if err != nil {
			t.Fatal(err)
		}
		var inter, p, g, differ int
		for i, v := range full {
			want := uint8(0)
			if float64(v) >= card.Threshold {
				want = 1
			}
			// ONNX Runtime may differ in the last bits between sessions:
			// only pixels at the threshold may disagree.
			if written.Pix[i] != want && math.Abs(float64(v)-card.Threshold) > 1e-5 {
				differ++
			}
			if written.Pix[i] != 0 {
				p++
				if s.Mask.Pix[i] != 0 {
					inter++
				}
			}
			if s.Mask.Pix[i] != 0 {
				g++
			}
		}
		if differ != 0 {
			t.Errorf("%s/%s: written mask differs from the independent prediction in %d pixels", sr.Model, sr.ID, differ)
		}
		dice := 1.0
		if p+g > 0 {
			dice = 2 * float64(inter) / float64(p+g)
		}
		if d := dice - sr.Dice; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s/%s: report Dice %v, independent %v", sr.Model, sr.ID, sr.Dice, dice)
		}
		if sr.Label != s.Label {
			t.Errorf("%s: label %q, want %q", sr.ID, sr.Label, s.Label)
		}
	}
	for _, m := range []string{"tiny", "tiny-low"} {
		if seen[m] != 3*n {
			t.Errorf("model %s scored %d phantom slices, want %d", m, seen[m], 3*n)
		}
		if got := rep.Models[m].Slices; got != int(rep.Ingested) {
			t.Errorf("model %s aggregate over %d slices, want %d", m, got, rep.Ingested)
		}
	}
}

// TestReplayComparesTTA runs one model with and without flip test-time
// augmentation in one replay and reports both.
func TestReplayComparesTTA(t *testing.T) {
	reg := testRegistry(t)
	dir := t.TempDir()
	in, err := writePhantoms(dir, "png", 5, 3, phantom.Options{Rows: 128, Cols: 128})
	if err != nil {
		t.Fatal(err)
	}
	rep := runReplay(t, reg, 2*time.Minute, replayArgs{inputs: []string{in}, models: withTTA([]string{"tiny"}), report: filepath.Join(dir, "r.json")})
	plain, tta := rep.Models["tiny"], rep.Models["tiny+tta"]
	if plain.Slices != 3 || tta.Slices != 3 {
		t.Fatalf("slices: plain %d, tta %d; models %v", plain.Slices, tta.Slices, rep.Models)
	}
	// The untrained test model is not flip-invariant, so averaging over
	// flips must change the probabilities (and so the RMSE).
	if plain.RMSE.Mean == tta.RMSE.Mean {
		t.Fatalf("TTA left RMSE unchanged (%v): was it applied?", plain.RMSE.Mean)
	}
}

// TestReplayLargeSlice sends a 1024×1024 slice, whose pixels exceed one
// message, through the object store.
func TestReplayLargeSlice(t *testing.T) {
	reg := testRegistry(t)
	dir := t.TempDir()
	in, err := writePhantoms(dir, "png", 9, 1, phantom.Options{Rows: 1024, Cols: 1024})
	if err != nil {
		t.Fatal(err)
	}
	masksOut := filepath.Join(dir, "m")
	rep := runReplay(t, reg, 2*time.Minute, replayArgs{inputs: []string{in}, models: []string{"tiny"}, report: filepath.Join(dir, "r.json"), masksOut: masksOut})
	if len(rep.Slices) != 1 || len(rep.Errors) != 0 {
		t.Fatalf("slices %+v errors %+v", rep.Slices, rep.Errors)
	}
	m, err := pngpair.ReadMask(filepath.Join(masksOut, "tiny", "slice0001.png"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Rows != 1024 || m.Cols != 1024 {
		t.Fatalf("mask %d×%d, want the original 1024×1024", m.Rows, m.Cols)
	}
}
