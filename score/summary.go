package score

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"unicode/utf8"
)

// Stat is a mean with its standard deviation over n values.
type Stat struct {
	Mean float64 `json:"mean"`
	SD   float64 `json:"sd"`
	N    int     `json:"n"`
}

func (s Stat) String() string { return fmt.Sprintf("%.3f ± %.3f", s.Mean, s.SD) }

type acc struct{ n, sum, sq float64 }

func (a *acc) add(v float64) { a.n++; a.sum += v; a.sq += v * v }

func (a acc) stat() Stat {
	if a.n == 0 {
		return Stat{}
	}
	m := a.sum / a.n
	v := a.sq/a.n - m*m
	if v < 0 {
		v = 0
	}
	return Stat{Mean: m, SD: math.Sqrt(v), N: int(a.n)}
}

// SizeBin is the Dice of the slices whose truth's longest diameter falls
// in [MinMm, MaxMm) (MaxMm 0: no upper bound).
type SizeBin struct {
	Label string  `json:"label"`
	MinMm float64 `json:"min_mm"`
	MaxMm float64 `json:"max_mm,omitempty"`
	Dice  Stat    `json:"dice"`
}

// SizeBins are the nodule sizes Group.BySize splits the slices with truth
// into, by Metrics.TruthDiameterMm: each bin holds its lower bound, so a
// nodule of exactly 6 mm is in "6-10" and one of 20 mm in ">20".
var SizeBins = []SizeBin{
	{Label: "<6", MinMm: 0, MaxMm: 6},
	{Label: "6-10", MinMm: 6, MaxMm: 10},
	{Label: "10-20", MinMm: 10, MaxMm: 20},
	{Label: ">20", MinMm: 20},
}

// sizeBin returns the index in SizeBins of a diameter in mm.
func sizeBin(d float64) int {
	for i := len(SizeBins) - 1; i > 0; i-- {
		if d >= SizeBins[i].MinMm {
			return i
		}
	}
	return 0
}

// Group summarises a set of scored slices, all with ground truth. The
// headline is MeanDice: the mean per-slice Dice over the slices whose
// truth is not empty. Slices with empty truth have no Dice worth
// averaging (1 or 0 by convention) and are counted apart: EmptyClean
// where nothing was predicted, EmptyFP where something was.
type Group struct {
	// Slices counts every slice: WithTruth + EmptyClean + EmptyFP.
	Slices int `json:"slices"`
	// WithTruth counts the slices whose truth has at least one pixel.
	WithTruth int `json:"with_truth"`
	// MeanDice and MeanIoU are the mean ± sd of the per-slice Dice and
	// IoU over the WithTruth slices (N = WithTruth; zero when none).
	// mean_dice is the training cards' headline too; their dice_mean,
	// over all images with empty+empty = 1, has no counterpart here.
	MeanDice Stat `json:"mean_dice"`
	MeanIoU  Stat `json:"mean_iou"`
	// BySize is MeanDice split by the truth's longest diameter, one entry
	// per SizeBins in that order (Dice.N = 0 for an empty bin).
	BySize []SizeBin `json:"by_size"`
	// EmptyClean counts the slices where truth and prediction are both
	// empty (correct negatives); EmptyFP those with empty truth and a
	// prediction (false-positive slices).
	EmptyClean int `json:"empty_clean"`
	EmptyFP    int `json:"empty_fp"`
	// RMSE of the probability map against the 0/1 truth, over all slices.
	RMSE Stat `json:"rmse"`
	// DicePooled and IoUPooled are the Dice and IoU of all the group's
	// pixels taken together, as the model cards measure them:
	// 2·ΣTP/(Σtruth+Σpredicted) and ΣTP/(Σtruth+Σpredicted−ΣTP). A slice
	// weighs by its pixels, so a few large nodules outweigh many small
	// ones, unlike MeanDice; a false-positive slice lowers it. With no
	// truth and no predicted pixel at all both are 1, as for a single
	// empty slice.
	DicePooled float64 `json:"dice_pooled"`
	IoUPooled  float64 `json:"iou_pooled"`
	// TP, TruthPixels and PredictedPixels are the sums the pooled figures
	// come from.
	TP              int64 `json:"tp_pixels"`
	TruthPixels     int64 `json:"truth_pixels"`
	PredictedPixels int64 `json:"predicted_pixels"`
}

// ModelSummary is one model's aggregate, overall and per label.
type ModelSummary struct {
	Group
	ByLabel map[string]Group `json:"by_label"`
}

type groupAcc struct {
	n, clean, fp    int
	dice, iou, rmse acc
	bins            []acc
	tp, truth, pred int64
}

func (g *groupAcc) add(m Metrics) {
	g.n++
	g.rmse.add(m.RMSE)
	switch {
	case m.Truth > 0:
		g.dice.add(m.Dice)
		g.iou.add(m.IoU)
		if g.bins == nil {
			g.bins = make([]acc, len(SizeBins))
		}
		g.bins[sizeBin(m.TruthDiameterMm)].add(m.Dice)
	case m.Predicted > 0:
		g.fp++
	default:
		g.clean++
	}
	g.tp += int64(m.TruePositives())
	g.truth += int64(m.Truth)
	g.pred += int64(m.Predicted)
}

func (g *groupAcc) group() Group {
	dice, iou := DiceIoU(g.tp, g.truth, g.pred)
	out := Group{Slices: g.n, WithTruth: int(g.dice.n), MeanDice: g.dice.stat(), MeanIoU: g.iou.stat(),
		BySize: make([]SizeBin, len(SizeBins)), EmptyClean: g.clean, EmptyFP: g.fp, RMSE: g.rmse.stat(),
		DicePooled: dice, IoUPooled: iou, TP: g.tp, TruthPixels: g.truth, PredictedPixels: g.pred}
	copy(out.BySize, SizeBins)
	for i := range g.bins {
		out.BySize[i].Dice = g.bins[i].stat()
	}
	return out
}

// DiceIoU returns the Dice and IoU of tp true-positive pixels among truth
// truth pixels and pred predicted pixels (of one slice, or pooled over
// many): 1 and 1 when both are 0.
func DiceIoU(tp, truth, pred int64) (dice, iou float64) {
	if truth+pred == 0 {
		return 1, 1
	}
	return 2 * float64(tp) / float64(truth+pred), float64(tp) / float64(truth+pred-tp)
}

// Aggregator accumulates slice metrics per model and label. Not safe for
// concurrent use.
type Aggregator struct {
	models map[string]*groupAcc
	labels map[string]map[string]*groupAcc
}

// NewAggregator returns an empty aggregator.
func NewAggregator() *Aggregator {
	return &Aggregator{models: map[string]*groupAcc{}, labels: map[string]map[string]*groupAcc{}}
}

// Add records one slice's metrics.
func (a *Aggregator) Add(model, label string, m Metrics) {
	g := a.models[model]
	if g == nil {
		g = &groupAcc{}
		a.models[model] = g
		a.labels[model] = map[string]*groupAcc{}
	}
	g.add(m)
	if label == "" {
		label = "unlabelled"
	}
	l := a.labels[model][label]
	if l == nil {
		l = &groupAcc{}
		a.labels[model][label] = l
	}
	l.add(m)
}

// Summary returns the per-model aggregates.
func (a *Aggregator) Summary() map[string]ModelSummary {
	out := map[string]ModelSummary{}
	for name, g := range a.models {
		s := ModelSummary{Group: g.group(), ByLabel: map[string]Group{}}
		for l, lg := range a.labels[name] {
			s.ByLabel[l] = lg.group()
		}
		out[name] = s
	}
	return out
}

// TableHeader names WriteTable's columns, in order.
var TableHeader = []string{"model", "label", "slices", "with truth", "Dice mean (truth>0)",
	"Dice <6mm", "Dice 6-10mm", "Dice 10-20mm", "Dice >20mm", "empty clean/FP", "Dice pooled", "IoU pooled"}

// MeanN formats the mean with its count, "0.412 (20)", or "-" when N is 0.
func (s Stat) MeanN() string {
	if s.N == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3f (%d)", s.Mean, s.N)
}

// WriteTable prints the aggregates as a plain-text table, one row per
// model and one per label under it: the slices, those with truth, the
// headline Dice mean ± sd over them, the same mean by nodule size (with
// its count), the empty-truth slices without and with a prediction, and
// the pooled Dice and IoU. The columns widen to fit long names.
func WriteTable(w io.Writer, sum map[string]ModelSummary) {
	names := make([]string, 0, len(sum))
	for n := range sum {
		names = append(names, n)
	}
	sort.Strings(names)
	type row struct {
		name, label string
		g           Group
	}
	var rows []row
	for _, n := range names {
		s := sum[n]
		rows = append(rows, row{n, "all", s.Group})
		labels := make([]string, 0, len(s.ByLabel))
		for l := range s.ByLabel {
			labels = append(labels, l)
		}
		sort.Strings(labels)
		if len(labels) > 1 || (len(labels) == 1 && labels[0] != "unlabelled") {
			for _, l := range labels {
				rows = append(rows, row{"", l, s.ByLabel[l]})
			}
		}
	}
	cells := [][]string{TableHeader}
	for _, r := range rows {
		g := r.g
		c := []string{r.name, r.label, fmt.Sprint(g.Slices), fmt.Sprint(g.WithTruth), "-"}
		if g.MeanDice.N > 0 {
			c[4] = g.MeanDice.String()
		}
		for i := range SizeBins {
			st := Stat{}
			if i < len(g.BySize) {
				st = g.BySize[i].Dice
			}
			c = append(c, st.MeanN())
		}
		c = append(c, fmt.Sprintf("%d/%d", g.EmptyClean, g.EmptyFP), fmt.Sprintf("%.3f", g.DicePooled), fmt.Sprintf("%.3f", g.IoUPooled))
		cells = append(cells, c)
	}
	width := make([]int, len(TableHeader))
	for _, c := range cells {
		for i, v := range c {
			width[i] = max(width[i], utf8.RuneCountInString(v))
		}
	}
	total := 0
	for _, n := range width {
		total += n + 2
	}
	line := strings.Repeat("-", total-2)
	for k, c := range cells {
		var b strings.Builder
		for i, v := range c {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(v))
			if i < 2 { // names left, numbers right
				b.WriteString(v + pad)
			} else {
				b.WriteString(pad + v)
			}
		}
		fmt.Fprintln(w, b.String())
		if k == 0 {
			fmt.Fprintln(w, line)
		}
	}
	fmt.Fprintln(w, line)
}
