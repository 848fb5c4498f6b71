package score

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
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

// Group summarises a set of scored slices.
type Group struct {
	Slices int `json:"slices"`
	// BothEmpty counts slices where truth and prediction were empty
	// (scored 1 by convention).
	BothEmpty int  `json:"both_empty"`
	Dice      Stat `json:"dice"`
	IoU       Stat `json:"iou"`
	RMSE      Stat `json:"rmse"`
	// DiceWithTruth is the Dice over slices whose truth is not empty.
	DiceWithTruth Stat `json:"dice_nonempty_truth"`
	// DicePooled and IoUPooled are the Dice and IoU of all the group's
	// pixels taken together, as the model cards measure them:
	// 2·ΣTP/(Σtruth+Σpredicted) and ΣTP/(Σtruth+Σpredicted−ΣTP). A slice
	// weighs by its pixels, so a few large nodules outweigh many small
	// ones, unlike the mean Dice. With no truth and no predicted pixel at
	// all both are 1, as for a single empty slice.
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
	n, empty        int
	dice, iou, rmse acc
	diceT           acc
	tp, truth, pred int64
}

func (g *groupAcc) add(m Metrics) {
	g.n++
	if m.BothEmpty {
		g.empty++
	}
	g.dice.add(m.Dice)
	g.iou.add(m.IoU)
	g.rmse.add(m.RMSE)
	if m.Truth > 0 {
		g.diceT.add(m.Dice)
	}
	g.tp += int64(m.TruePositives())
	g.truth += int64(m.Truth)
	g.pred += int64(m.Predicted)
}

func (g *groupAcc) group() Group {
	dice, iou := DiceIoU(g.tp, g.truth, g.pred)
	return Group{Slices: g.n, BothEmpty: g.empty, Dice: g.dice.stat(), IoU: g.iou.stat(), RMSE: g.rmse.stat(), DiceWithTruth: g.diceT.stat(),
		DicePooled: dice, IoUPooled: iou, TP: g.tp, TruthPixels: g.truth, PredictedPixels: g.pred}
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

// WriteTable prints the aggregates as a plain-text table.
func WriteTable(w io.Writer, sum map[string]ModelSummary) {
	names := make([]string, 0, len(sum))
	for n := range sum {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(w, "%-22s %-10s %7s %6s  %-15s %-15s %-15s %-15s %11s %10s\n", "model", "label", "slices", "empty", "Dice", "IoU", "RMSE", "Dice(truth>0)", "Dice pooled", "IoU pooled")
	line := strings.Repeat("-", 141)
	fmt.Fprintln(w, line)
	row := func(name, label string, g Group) {
		dt := "-"
		if g.DiceWithTruth.N > 0 {
			dt = g.DiceWithTruth.String()
		}
		fmt.Fprintf(w, "%-22s %-10s %7d %6d  %-15s %-15s %-15s %-15s %11.3f %10.3f\n", name, label, g.Slices, g.BothEmpty, g.Dice, g.IoU, g.RMSE, dt,
			g.DicePooled, g.IoUPooled)
	}
	for _, n := range names {
		s := sum[n]
		row(n, "all", s.Group)
		labels := make([]string, 0, len(s.ByLabel))
		for l := range s.ByLabel {
			labels = append(labels, l)
		}
		sort.Strings(labels)
		if len(labels) > 1 || (len(labels) == 1 && labels[0] != "unlabelled") {
			for _, l := range labels {
				row("", l, s.ByLabel[l])
			}
		}
	}
	fmt.Fprintln(w, line)
}
