package main

import (
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/score"
)

// TestReplayPooledDice replays phantom PNG slices and checks the JSON
// report's pooled Dice and IoU of each model against the sums of true
// positive, truth and predicted pixels counted here from the written
// masks and the phantoms' truth masks; and its headline (mean Dice over
// slices with truth pixels, by size, empty-truth counts) and each slice's
// truth diameter against the same masks (PNG inputs carry no spacing, so
// ingest's default applies).
func TestReplayPooledDice(t *testing.T) {
	reg := testRegistry(t)
	dir := t.TempDir()
	opts := phantom.Options{Rows: 128, Cols: 128}
	const n = 6
	in, err := writePhantoms(filepath.Join(dir, "png"), "png", 77, n, opts)
	if err != nil {
		t.Fatal(err)
	}
	truth := phantomsByName(77, n, opts)
	masksOut := filepath.Join(dir, "masks-out")
	rep := runReplay(t, reg, 2*time.Minute, replayArgs{inputs: []string{in}, models: []string{"all"}, report: filepath.Join(dir, "report.json"), masksOut: masksOut})
	type sums struct {
		tp, truth, pred int64
		dice            []float64 // slices with truth pixels
		bins            [4][]float64
		clean, fp       int
	}
	got := map[string]*sums{}
	for _, sr := range rep.Slices {
		s, ok := truth[sr.ID]
		if !ok {
			t.Fatalf("slice %s is not a phantom (have %d)", sr.ID, len(truth))
		}
		m, err := pngpair.ReadMask(filepath.Join(masksOut, sr.Model, sr.ID+".png"))
		if err != nil {
			t.Fatal(err)
		}
		g := got[sr.Model]
		if g == nil {
			g = &sums{}
			got[sr.Model] = g
		}
		var tp, tr, pr int64
		for i, v := range m.Pix {
			if v != 0 {
				pr++
				if s.Mask.Pix[i] != 0 {
					tp++
				}
			}
			if s.Mask.Pix[i] != 0 {
				tr++
			}
		}
		g.tp, g.truth, g.pred = g.tp+tp, g.truth+tr, g.pred+pr
		d := imgx.LargestDiameter(s.Mask, ingest.DefaultSpacingMm, ingest.DefaultSpacingMm)
		if sr.TruthDiameterMm != d {
			t.Errorf("%s/%s: truth diameter %v mm, measured %v", sr.Model, sr.ID, sr.TruthDiameterMm, d)
		}
		switch {
		case tr > 0:
			dice := 2 * float64(tp) / float64(tr+pr)
			g.dice = append(g.dice, dice)
			b := 3
			switch {
			case d < 6:
				b = 0
			case d < 10:
				b = 1
			case d < 20:
				b = 2
			}
			g.bins[b] = append(g.bins[b], dice)
		case pr > 0:
			g.fp++
		default:
			g.clean++
		}
	}
	mean := func(v []float64) float64 {
		sum := 0.0
		for _, x := range v {
			sum += x
		}
		return sum / float64(len(v))
	}
	if len(got) != 2 {
		t.Fatalf("models %v, want tiny and tiny-low", got)
	}
	for name, g := range got {
		ms, ok := rep.Models[name]
		if !ok {
			t.Fatalf("no summary of %s", name)
		}
		if g.truth == 0 || g.pred == 0 {
			t.Fatalf("%s: %d truth and %d predicted pixels: the phantoms test nothing", name, g.truth, g.pred)
		}
		if ms.TP != g.tp || ms.TruthPixels != g.truth || ms.PredictedPixels != g.pred {
			t.Errorf("%s: report sums tp %d truth %d pred %d, counted %d %d %d", name, ms.TP, ms.TruthPixels, ms.PredictedPixels, g.tp, g.truth, g.pred)
		}
		dice := 2 * float64(g.tp) / float64(g.truth+g.pred)
		iou := float64(g.tp) / float64(g.truth+g.pred-g.tp)
		if math.Abs(ms.DicePooled-dice) > 1e-12 || math.Abs(ms.IoUPooled-iou) > 1e-12 {
			t.Errorf("%s: pooled Dice %v IoU %v, counted %v %v", name, ms.DicePooled, ms.IoUPooled, dice, iou)
		}
		if d, i := score.DiceIoU(ms.TP, ms.TruthPixels, ms.PredictedPixels); d != ms.DicePooled || i != ms.IoUPooled {
			t.Errorf("%s: pooled figures %v %v do not follow from the report's sums (%v %v)", name, ms.DicePooled, ms.IoUPooled, d, i)
		}
		if len(g.dice) == 0 || ms.WithTruth != len(g.dice) || ms.MeanDice.N != len(g.dice) || math.Abs(ms.MeanDice.Mean-mean(g.dice)) > 1e-9 {
			t.Errorf("%s: Dice mean %+v over %d slices with truth, counted %v over %d", name, ms.MeanDice, ms.WithTruth, mean(g.dice), len(g.dice))
		}
		if ms.EmptyClean != g.clean || ms.EmptyFP != g.fp {
			t.Errorf("%s: empty truth clean %d fp %d, counted %d %d", name, ms.EmptyClean, ms.EmptyFP, g.clean, g.fp)
		}
		for i, b := range g.bins {
			got := ms.BySize[i].Dice
			if got.N != len(b) || (len(b) > 0 && math.Abs(got.Mean-mean(b)) > 1e-9) {
				t.Errorf("%s: Dice %s mm %+v, counted %v over %d", name, ms.BySize[i].Label, got, mean(b), len(b))
			}
		}
		t.Logf("%s: mean Dice %.4f over %d slices with truth, pooled %.4f over %d slices", name, ms.MeanDice.Mean, ms.WithTruth, ms.DicePooled, ms.Slices)
	}
}
