package score

import (
	"math"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
)

func mask(rows, cols int, on ...int) *imgx.Mask {
	m := imgx.NewMask(rows, cols)
	for _, i := range on {
		m.Pix[i] = 1
	}
	return m
}

func TestCompare(t *testing.T) {
	tests := []struct {
		name            string
		prob            []float32
		truth           *imgx.Mask
		dice, iou, rmse float64
		bothEmpty       bool
	}{
		{"perfect", []float32{1, 1, 0, 0}, mask(2, 2, 0, 1), 1, 1, 0, false},
		{"both empty", []float32{0.1, 0.2, 0, 0}, mask(2, 2), 1, 1, math.Sqrt((0.01 + 0.04) / 4), true},
		{"half overlap", []float32{1, 0.6, 0, 0}, mask(2, 2, 0, 2), 0.5, 1.0 / 3, math.Sqrt((0 + 0.36 + 1 + 0) / 4), false},
		{"missed", []float32{0, 0, 0, 0}, mask(2, 2, 3), 0, 0, math.Sqrt(1.0 / 4), false},
		{"threshold inclusive", []float32{0.5, 0.49, 0, 0}, mask(2, 2, 0), 1, 1, math.Sqrt((0.25 + 0.49*0.49) / 4), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, pred := Compare(tc.prob, 0.5, tc.truth)
			if math.Abs(m.Dice-tc.dice) > 1e-6 || math.Abs(m.IoU-tc.iou) > 1e-6 || math.Abs(m.RMSE-tc.rmse) > 1e-6 || m.BothEmpty != tc.bothEmpty {
				t.Fatalf("got %+v, want dice %v iou %v rmse %v empty %v", m, tc.dice, tc.iou, tc.rmse, tc.bothEmpty)
			}
			if pred.Count() != m.Predicted {
				t.Fatalf("pred count %d != %d", pred.Count(), m.Predicted)
			}
		})
	}
}

func TestAggregator(t *testing.T) {
	a := NewAggregator()
	a.Add("m", "LR2", Metrics{Dice: 1, IoU: 1, BothEmpty: true})
	a.Add("m", "LR2", Metrics{Dice: 0, IoU: 0, RMSE: 0.3, Predicted: 5})
	a.Add("m", "LR3", Metrics{Dice: 0.5, IoU: 0.25, RMSE: 0.2, Truth: 10, Predicted: 10})
	a.Add("m", "LR3", Metrics{Dice: 0.7, IoU: 0.45, RMSE: 0.4, Truth: 4, Predicted: 6})
	s := a.Summary()["m"]
	if s.Slices != 4 || s.WithTruth != 2 || s.EmptyClean != 1 || s.EmptyFP != 1 {
		t.Fatalf("counts %+v", s.Group)
	}
	if math.Abs(s.MeanDice.Mean-0.6) > 1e-9 || math.Abs(s.MeanDice.SD-0.1) > 1e-9 || s.MeanDice.N != 2 {
		t.Fatalf("dice %+v", s.MeanDice)
	}
	if math.Abs(s.MeanIoU.Mean-0.35) > 1e-9 || s.MeanIoU.N != 2 {
		t.Fatalf("iou %+v", s.MeanIoU)
	}
	if math.Abs(s.RMSE.Mean-0.9/4) > 1e-9 || s.RMSE.N != 4 {
		t.Fatalf("rmse %+v", s.RMSE)
	}
	if l := s.ByLabel["LR3"]; l.Slices != 2 || math.Abs(l.RMSE.Mean-0.3) > 1e-9 {
		t.Fatalf("LR3 %+v", l)
	}
	if l := s.ByLabel["LR2"]; l.Slices != 2 || l.WithTruth != 0 || l.MeanDice.N != 0 || l.EmptyClean != 1 || l.EmptyFP != 1 {
		t.Fatalf("LR2 %+v", l)
	}
}
