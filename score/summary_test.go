package score

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

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
		mean            float64 // mean per-slice Dice over slices with truth
		withTruth       int
		clean, fp       int     // empty-truth slices without and with a prediction
		dice, iou       float64 // pooled
		tp, truth, pred int64
		byLabel         map[string][2]float64 // label → pooled Dice, IoU
	}{
		{
			name:   "a large nodule outweighs a missed small one",
			slices: []px{{"LR4", 90, 100, 100}, {"LR2", 0, 4, 4}},
			mean:   0.45, withTruth: 2, dice: 180.0 / 208, iou: 90.0 / 118, tp: 90, truth: 104, pred: 104,
			byLabel: map[string][2]float64{"LR4": {0.9, 90.0 / 110}, "LR2": {0, 0}},
		},
		{
			name:   "an empty slice is counted apart, not in the mean, and adds nothing pooled",
			slices: []px{{"", 0, 0, 0}, {"", 10, 10, 30}},
			mean:   0.5, withTruth: 1, clean: 1, dice: 0.5, iou: 1.0 / 3, tp: 10, truth: 10, pred: 30,
			byLabel: map[string][2]float64{"unlabelled": {0.5, 1.0 / 3}},
		},
		{
			name:   "false positives on a slice without truth pixels",
			slices: []px{{"LR3", 0, 0, 50}, {"LR3", 50, 50, 50}, {"LR5", 7, 9, 8}},
			mean:   (1 + 14.0/17) / 2, withTruth: 2, fp: 1, dice: 114.0 / 167, iou: 57.0 / 110, tp: 57, truth: 59, pred: 108,
			byLabel: map[string][2]float64{"LR3": {100.0 / 150, 0.5}, "LR5": {14.0 / 17, 7.0 / 10}},
		},
		{
			name:   "nothing anywhere",
			slices: []px{{"", 0, 0, 0}, {"", 0, 0, 0}},
			mean:   0, clean: 2, dice: 1, iou: 1,
			byLabel: map[string][2]float64{"unlabelled": {1, 1}},
		},
		{
			name:   "a whole 4096² slice",
			slices: []px{{"", 12_345_677, 16_000_001, 13_000_003}, {"", 1, 3, 2}},
			mean:   (2*12_345_677.0/29_000_004 + 0.4) / 2, withTruth: 2, dice: 2 * 12_345_678.0 / 29_000_009,
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
			if !near(g.MeanDice.Mean, tc.mean) || g.MeanDice.N != tc.withTruth || g.WithTruth != tc.withTruth {
				t.Errorf("mean Dice %+v over %d, want %v over %d", g.MeanDice, g.WithTruth, tc.mean, tc.withTruth)
			}
			if g.EmptyClean != tc.clean || g.EmptyFP != tc.fp || g.Slices != len(tc.slices) {
				t.Errorf("slices %d, empty clean %d fp %d; want %d, %d, %d", g.Slices, g.EmptyClean, g.EmptyFP, len(tc.slices), tc.clean, tc.fp)
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

// TestDiceBySize feeds hand-made Scores with known truth diameters and
// Dice values (through the wire, as replay receives them) and checks each
// size bin against means worked out by hand, per model and per label.
func TestDiceBySize(t *testing.T) {
	type sl struct {
		label     string
		diameter  float64
		dice      float64
		truth, pr int64
	}
	in := []sl{
		{"a", 0, 0.2, 1, 9},      // a one-pixel truth: 0 mm
		{"a", 5.99, 0.4, 20, 30}, // <6
		{"a", 6, 0.9, 50, 50},    // the lower bound is in 6-10
		{"b", 9.5, 0.5, 60, 60},
		{"b", 9.99, 0.7, 70, 70},
		{"b", 10, 0.3, 100, 100}, // 10-20
		{"b", 25, 0.8, 900, 900}, // >20
		{"b", 20, 0.6, 800, 800}, // >20
		{"a", 0, 1, 0, 0},        // empty truth, nothing predicted
		{"b", 0, 0, 0, 40},       // empty truth, a false positive
	}
	a := NewAggregator()
	for _, s := range in {
		msg := &lungsegv1.Score{Meta: &lungsegv1.SliceMeta{Label: s.label}, Model: "m", HasTruth: true, Dice: s.dice,
			TruthPixels: s.truth, PredictedPixels: s.pr, TruthDiameterMm: s.diameter, BothEmpty: s.truth+s.pr == 0}
		b, err := proto.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		var got lungsegv1.Score
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		a.Add(got.Model, got.Meta.Label, FromScore(&got))
	}
	type bin struct {
		mean, sd float64
		n        int
	}
	near := func(x, y float64) bool { return math.Abs(x-y) < 1e-12 }
	check := func(name string, g Group, headline bin, want []bin, clean, fp int) {
		t.Helper()
		if !near(g.MeanDice.Mean, headline.mean) || !near(g.MeanDice.SD, headline.sd) || g.MeanDice.N != headline.n || g.WithTruth != headline.n {
			t.Errorf("%s: headline %+v with truth %d, want %+v", name, g.MeanDice, g.WithTruth, headline)
		}
		if g.EmptyClean != clean || g.EmptyFP != fp {
			t.Errorf("%s: empty clean %d fp %d, want %d %d", name, g.EmptyClean, g.EmptyFP, clean, fp)
		}
		if len(g.BySize) != 4 {
			t.Fatalf("%s: %d size bins", name, len(g.BySize))
		}
		for i, w := range want {
			b := g.BySize[i]
			if b.Label != []string{"<6", "6-10", "10-20", ">20"}[i] {
				t.Errorf("%s: bin %d is %q", name, i, b.Label)
			}
			if !near(b.Dice.Mean, w.mean) || !near(b.Dice.SD, w.sd) || b.Dice.N != w.n {
				t.Errorf("%s: bin %s: %+v, want %+v", name, b.Label, b.Dice, w)
			}
		}
	}
	s := a.Summary()["m"]
	check("all", s.Group, bin{0.55, math.Sqrt((0.2*0.2+0.4*0.4+0.9*0.9+0.5*0.5+0.7*0.7+0.3*0.3+0.8*0.8+0.6*0.6)/8 - 0.55*0.55), 8},
		[]bin{{0.3, 0.1, 2}, {0.7, math.Sqrt(0.08 / 3), 3}, {0.3, 0, 1}, {0.7, 0.1, 2}}, 1, 1)
	check("a", s.ByLabel["a"], bin{0.5, math.Sqrt((0.04+0.16+0.81)/3 - 0.25), 3},
		[]bin{{0.3, 0.1, 2}, {0.9, 0, 1}, {0, 0, 0}, {0, 0, 0}}, 1, 0)
	check("b", s.ByLabel["b"], bin{0.58, math.Sqrt((0.25+0.49+0.09+0.64+0.36)/5 - 0.58*0.58), 5},
		[]bin{{0, 0, 0}, {0.6, 0.1, 2}, {0.3, 0, 1}, {0.7, 0.1, 2}}, 0, 1)
}

// TestSummaryJSON round-trips a summary through JSON and checks the keys
// the replay report and lungseg report rely on.
func TestSummaryJSON(t *testing.T) {
	a := NewAggregator()
	a.Add("m", "LR3", Metrics{Dice: 0.5, IoU: 1.0 / 3, RMSE: 0.2, Truth: 10, Predicted: 10, TruthDiameterMm: 7})
	a.Add("m", "LR3", Metrics{Dice: 0, IoU: 0, RMSE: 0.1, Predicted: 3})
	a.Add("m", "LR2", Metrics{Dice: 1, IoU: 1, BothEmpty: true})
	sum := a.Summary()
	b, err := json.Marshal(sum)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]ModelSummary
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, sum) {
		t.Errorf("round trip\n%+v\nwant\n%+v", back, sum)
	}
	var raw map[string]map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"slices", "with_truth", "mean_dice", "mean_iou", "by_size", "empty_clean", "empty_fp", "rmse", "dice_pooled", "iou_pooled", "by_label"} {
		if _, ok := raw["m"][k]; !ok {
			t.Errorf("key %q missing from %s", k, b)
		}
	}
	// dice_mean is the training cards' mean over all images (empty+empty = 1).
	for _, k := range []string{"dice", "iou", "both_empty", "dice_nonempty_truth", "dice_mean"} {
		if _, ok := raw["m"][k]; ok {
			t.Errorf("old key %q still written: %s", k, b)
		}
	}
	if g := back["m"]; g.BySize[1].Dice.N != 1 || g.BySize[1].Dice.Mean != 0.5 || g.BySize[1].MinMm != 6 || g.BySize[1].MaxMm != 10 || g.BySize[3].MaxMm != 0 {
		t.Errorf("by_size %+v", g.BySize)
	}
}

// TestWriteTableColumns checks the header order and that every row lines
// up with the header with a long model name.
func TestWriteTableColumns(t *testing.T) {
	a := NewAggregator()
	long := "resnet50-unet-small-crop+tta"
	a.Add(long, "LR4", Metrics{Dice: 0.8, IoU: 2.0 / 3, Truth: 50, Predicted: 50, TruthDiameterMm: 12})
	a.Add(long, "unlabelled-long-label", Metrics{Dice: 0, Predicted: 7})
	a.Add("m", "", Metrics{Dice: 1, IoU: 1, BothEmpty: true})
	var b bytes.Buffer
	WriteTable(&b, a.Summary())
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	sep := regexp.MustCompile(`\s{2,}`)
	if got := sep.Split(lines[0], -1); !reflect.DeepEqual(got, []string{"model", "label", "slices", "with truth", "Dice mean (truth>0)",
		"Dice <6mm", "Dice 6-10mm", "Dice 10-20mm", "Dice >20mm", "empty clean/FP", "Dice pooled", "IoU pooled"}) {
		t.Fatalf("header %q", got)
	}
	// Rows: m/all, long/all, LR4, unlabelled-long-label.
	if len(lines) != 7 {
		t.Fatalf("%d lines:\n%s", len(lines), b.String())
	}
	w := utf8.RuneCountInString(lines[0])
	for _, l := range lines[1:] {
		if utf8.RuneCountInString(l) != w {
			t.Errorf("line of %d runes, header %d:\n%s", utf8.RuneCountInString(l), w, b.String())
		}
	}
	// Right-aligned cells end where their header ends.
	hdrEnd := func(name string) int {
		return utf8.RuneCountInString(lines[0][:strings.Index(lines[0], name)+len(name)])
	}
	want := map[int][]string{ // line → cells under "with truth", "Dice mean (truth>0)", "Dice 10-20mm", "empty clean/FP"
		2: {"0", "-", "-", "1/0"},                     // m, all
		3: {"1", "0.800 ± 0.000", "0.800 (1)", "0/1"}, // long, all
		4: {"1", "0.800 ± 0.000", "0.800 (1)", "0/0"}, // LR4
		5: {"0", "-", "-", "0/1"},                     // unlabelled-long-label
	}
	for li, cells := range want {
		for k, h := range []string{"with truth", "Dice mean (truth>0)", "Dice 10-20mm", "empty clean/FP"} {
			end := hdrEnd(h)
			r := []rune(lines[li])
			cell := string(r[end-utf8.RuneCountInString(cells[k]) : end])
			if cell != cells[k] {
				t.Errorf("line %d under %q: %q, want %q\n%s", li, h, cell, cells[k], b.String())
			}
		}
	}
	if !strings.HasPrefix(lines[3], long+"  all") {
		t.Errorf("model row %q", lines[3])
	}
}
