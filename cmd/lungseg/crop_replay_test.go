package main

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/segment"
)

// tinyCropProb is the tiny crop model's probability of one HU value
// (segment/testdata/make_tiny_cascade.py: logit 30·x − 30·1049.5/1500 of
// the input x windowed at −600/1500), computed here without the pipeline.
func tinyCropProb(hu int16) float64 {
	x := math.Min(math.Max((float64(hu)+1350)/1500, 0), 1)
	return 1 / (1 + math.Exp(-(30*x - 30*1049.5/1500)))
}

// cropPhantom is a rows×cols crop: an off-centre disc of soft tissue
// (truth) on lung, with a ramp so that the mask is not the disc alone.
func cropPhantom(rows, cols int) (*imgx.HU, *imgx.Mask) {
	hu, m := imgx.NewHU(rows, cols), imgx.NewMask(rows, cols)
	cy, cx, r := float64(rows)/3, float64(cols)*0.6, float64(min(rows, cols))/4
	for y := 0; y < rows; y++ {
		for x := 0; x < cols; x++ {
			i := y*cols + x
			hu.Pix[i] = int16(-850 + 3*x%200 + 7*y%50)
			if math.Hypot(float64(y)-cy, float64(x)-cx) <= r {
				hu.Pix[i], m.Pix[i] = int16(20+(x*y)%60), 1
			}
		}
	}
	return hu, m
}

// TestReplayCropModelAlone replays bare PNG crops and larger slices with
// `--model all` over the tiny test models: every model, the crop model
// alone included, reports every slice. The crop model's written masks are
// compared pixel by pixel with its probabilities computed here from HU:
// crops that fit its 128² window are padded with air and cut back at their
// placement, larger slices are tiled at the native grid (and, over 256 per
// side, published at 256 and resized back by score, reproduced here with
// the same two resizes).
func TestReplayCropModelAlone(t *testing.T) {
	reg := testenv.TestRegistry(t, "tiny", "tiny-det", "tiny-crop")
	dir := t.TempDir()
	in := filepath.Join(dir, "crops")
	sizes := [][2]int{{43, 60}, {109, 44}, {128, 128}, {200, 150}, {300, 280}, {512, 512}}
	truth := map[string]*imgx.HU{}
	for _, sz := range sizes {
		id := fmt.Sprintf("c%dx%d", sz[0], sz[1])
		hu, m := cropPhantom(sz[0], sz[1])
		if err := pngpair.Write(in, id, hu, m); err != nil {
			t.Fatal(err)
		}
		truth[id] = hu
	}
	masksOut := filepath.Join(dir, "masks-out")
	// Without the lung field, which would clear the synthetic slices of
	// 200 pixels or more (no lungs in them): this test is about where the
	// crop model's probabilities land.
	cfg := defaultConfig()
	cfg.ModelsDir, cfg.LogLevel, cfg.NoLungField = reg, "warn", true
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := replayArgs{inputs: []string{in}, models: []string{"all"}, report: filepath.Join(dir, "r.json"), masksOut: masksOut}
	if err := doReplay(ctx, &cfg, args); err != nil {
		t.Fatal(err)
	}
	rep := readReport(t, args.report)
	if len(rep.Errors) != 0 {
		t.Fatalf("errors %+v", rep.Errors)
	}
	for _, m := range []string{"tiny", "tiny-crop", "tiny-det", "tiny-det+crop"} {
		if got := rep.Models[m].Slices; got != len(sizes) {
			t.Errorf("model %s: %d slices, want %d (models %v)", m, got, len(sizes), rep.Models)
		}
	}
	checked := 0
	for _, sr := range rep.Slices {
		if sr.Model != "tiny-crop" {
			continue
		}
		hu := truth[sr.ID]
		if hu == nil {
			t.Fatalf("unknown slice %q", sr.ID)
		}
		rows, cols := hu.Rows, hu.Cols
		prob := make([]float32, len(hu.Pix))
		for i, v := range hu.Pix {
			prob[i] = float32(tinyCropProb(v))
		}
		if h, w := min(rows, segment.MaxTiledSide), min(cols, segment.MaxTiledSide); h != rows || w != cols {
			prob = imgx.ResizeBilinear(imgx.ResizeBilinear(prob, rows, cols, h, w), h, w, rows, cols)
		}
		got, err := pngpair.ReadMask(filepath.Join(masksOut, sr.Model, sr.ID+".png"))
		if err != nil {
			t.Fatal(err)
		}
		var differ, pred int
		for i, p := range prob {
			want := uint8(0)
			if p >= 0.5 {
				want = 1
			}
			pred += int(got.Pix[i])
			// float rounding may only flip pixels at the threshold
			if got.Pix[i] != want && math.Abs(float64(p)-0.5) > 1e-4 {
				differ++
			}
		}
		if differ != 0 || pred == 0 || pred == rows*cols {
			t.Errorf("%s: %d pixels differ from the mask computed from HU (%d predicted of %d)", sr.ID, differ, pred, rows*cols)
		}
		checked++
	}
	if checked != len(sizes) {
		t.Fatalf("checked %d crop-model masks, want %d", checked, len(sizes))
	}
}
