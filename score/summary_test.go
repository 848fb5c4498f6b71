package score

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

// scoreMsg is a Score message as the score stage fills it for a slice
// with tp true positives among truth truth pixels and pred predicted ones.
func scoreMsg(label string, tp, truth, pred int) *lungsegv1.Score {
	s := &lungsegv1.Score{Meta: &lungsegv1.SliceMeta{Label: label}, Model: "m", HasTruth: true,
		TruthPixels: int64(truth), PredictedPixels: int64(pred)}
	if truth+pred == 0 {
		s.Dice, s.Iou, s.BothEmpty = 1, 1, true
	} else {
		s.Dice = 2 * float64(tp) / float64(truth+pred)
		s.Iou = float64(tp) / float64(truth+pred-tp)
	}
	return s
}

func TestPooledDice(t *testing.T) {
	type px struct {
		label           string
		tp, truth, pred int
	}
	tests := []struct {
		name            string
		slices          []px
		mean            float64 // mean per-slice Dice
		dice, iou       float64 // pooled
		tp, truth, pred int64
		byLabel         map[string][2]float64 // label → pooled Dice, IoU
	}{
		{
			name:   "a large nodule outweighs a missed small one",
			slices: []px{{"LR4", 90, 100, 100}, {"LR2", 0, 4, 4}},
			mean:   0.45, dice: 180.0 / 208, iou: 90.0 / 118, tp: 90, truth: 104, pred: 104,
			byLabel: map[string][2]float64{"LR4": {0.9, 90.0 / 110}, "LR2": {0, 0}},
		},
		{
			name:   "an empty slice counts 1 in the mean and nothing pooled",
			slices: []px{{"", 0, 0, 0}, {"", 10, 10, 30}},
			mean:   0.75, dice: 0.5, iou: 1.0 / 3, tp: 10, truth: 10, pred: 30,
			byLabel: map[string][2]float64{"unlabelled": {0.5, 1.0 / 3}},
		},
		{
			name:   "false positives on a slice without truth pixels",
			slices: []px{{"LR3", 0, 0, 50}, {"LR3", 50, 50, 50}, {"LR5", 7, 9, 8}},
			mean:   (0 + 1 + 14.0/17) / 3, dice: 114.0 / 167, iou: 57.0 / 110, tp: 57, truth: 59, pred: 108,
			byLabel: map[string][2]float64{"LR3": {100.0 / 150, 0.5}, "LR5": {14.0 / 17, 7.0 / 10}},
		},
		{
			name:   "nothing anywhere",
			slices: []px{{"", 0, 0, 0}, {"", 0, 0, 0}},
			mean:   1, dice: 1, iou: 1,
			byLabel: map[string][2]float64{"unlabelled": {1, 1}},
		},
		{
			name:   "a whole 4096² slice",
			slices: []px{{"", 12_345_677, 16_000_001, 13_000_003}, {"", 1, 3, 2}},
			mean:   (2*12_345_677.0/29_000_004 + 0.4) / 2, dice: 2 * 12_345_678.0 / 29_000_009,
			iou: 12_345_678.0 / (29_000_009 - 12_345_678), tp: 12_345_678, truth: 16_000_004, pred: 13_000_005,
			byLabel: map[string][2]float64{"unlabelled": {2 * 12_345_678.0 / 29_000_009, 12_345_678.0 / (29_000_009 - 12_345_678)}},
		},
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-12 }
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := NewAggregator()
			for _, p := range tc.slices {
				// Through the wire, as replay receives it.
				b, err := proto.Marshal(scoreMsg(p.label, p.tp, p.truth, p.pred))
				if err != nil {
					t.Fatal(err)
				}
				var s lungsegv1.Score
				if err := proto.Unmarshal(b, &s); err != nil {
					t.Fatal(err)
				}
				a.Add(s.Model, s.Meta.Label, FromScore(&s))
			}
			g := a.Summary()["m"]
			if !near(g.Dice.Mean, tc.mean) {
				t.Errorf("mean Dice %v, want %v", g.Dice.Mean, tc.mean)
			}
			if !near(g.DicePooled, tc.dice) || !near(g.IoUPooled, tc.iou) {
				t.Errorf("pooled Dice %v IoU %v, want %v %v", g.DicePooled, g.IoUPooled, tc.dice, tc.iou)
			}
			if g.TP != tc.tp || g.TruthPixels != tc.truth || g.PredictedPixels != tc.pred {
				t.Errorf("sums tp %d truth %d pred %d, want %d %d %d", g.TP, g.TruthPixels, g.PredictedPixels, tc.tp, tc.truth, tc.pred)
			}
			if len(g.ByLabel) != len(tc.byLabel) {
				t.Errorf("labels %v, want %v", g.ByLabel, tc.byLabel)
			}
			for l, want := range tc.byLabel {
				if lg := g.ByLabel[l]; !near(lg.DicePooled, want[0]) || !near(lg.IoUPooled, want[1]) {
					t.Errorf("label %s: pooled Dice %v IoU %v, want %v %v", l, lg.DicePooled, lg.IoUPooled, want[0], want[1])
				}
			}
		})
	}
}

// TestTruePositivesFromScore recovers each slice's true positives from
// the Score fields: from real masks through CompareMask, and from counts
// up to the largest slice imgx allows.
func TestTruePositivesFromScore(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for i := range 200 {
		rows, cols := 1+r.IntN(64), 1+r.IntN(64)
		truth, pred := imgx.NewMask(rows, cols), imgx.NewMask(rows, cols)
		pt, pp := r.Float64(), r.Float64()
		inter := 0
		for k := range truth.Pix {
			g, p := r.Float64() < pt, r.Float64() < pp
			if g {
				truth.Pix[k] = 1
			}
			if p {
				pred.Pix[k] = 1
			}
			if g && p {
				inter++
			}
		}
		m := CompareMask(make([]float32, rows*cols), pred, truth)
		s := &lungsegv1.Score{Dice: m.Dice, Iou: m.IoU, BothEmpty: m.BothEmpty, TruthPixels: int64(m.Truth), PredictedPixels: int64(m.Predicted)}
		if got := FromScore(s).TruePositives(); got != inter {
			t.Fatalf("case %d (%d×%d, truth %d, pred %d): tp %d, want %d", i, rows, cols, m.Truth, m.Predicted, got, inter)
		}
	}
	const most = imgx.MaxSide * imgx.MaxSide
	for i := range 100_000 {
		tr, pr := r.IntN(most+1), r.IntN(most+1)
		tp := r.IntN(min(tr, pr) + 1)
		if i%10 == 0 {
			tp = min(tr, pr) // perfect overlap of the smaller mask
		}
		m := Metrics{Truth: tr, Predicted: pr, BothEmpty: tr+pr == 0, Dice: 1}
		if tr+pr > 0 {
			m.Dice = 2 * float64(tp) / float64(tr+pr)
		}
		if got := m.TruePositives(); got != tp {
			t.Fatalf("truth %d pred %d: tp %d, want %d", tr, pr, got, tp)
		}
	}
}

func TestWriteTablePooledColumn(t *testing.T) {
	a := NewAggregator()
	for _, s := range []*lungsegv1.Score{scoreMsg("LR4", 90, 100, 100), scoreMsg("LR2", 0, 4, 4)} {
		a.Add(s.Model, s.Meta.Label, FromScore(s))
	}
	var b bytes.Buffer
	WriteTable(&b, a.Summary())
	lines := strings.Split(b.String(), "\n")
	if !strings.Contains(lines[0], "Dice pooled") || !strings.Contains(lines[0], "IoU pooled") {
		t.Fatalf("header %q", lines[0])
	}
	// Row → its last two cells: "m" is the model's row, labels their own.
	got := map[string]string{}
	for _, l := range lines[2:] {
		if f := strings.Fields(l); len(f) > 4 {
			got[f[0]] = strings.Join(f[len(f)-2:], " ")
		}
	}
	want := map[string]string{"m": "0.865 0.763", "LR4": "0.900 0.818", "LR2": "0.000 0.000"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("row %s ends %q, want %q\n%s", k, got[k], v, b.String())
		}
	}
	if len(got) != len(want) {
		t.Errorf("rows %v, want %v", got, want)
	}
}
