// Package score compares a model's prediction with the ground truth at the
// original resolution (Dice and IoU of the thresholded mask, RMSE of the
// probability map against the 0/1 truth) and aggregates the results per
// model and per label.
package score

import (
	"math"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// Metrics of one slice.
type Metrics struct {
	Dice, IoU, RMSE float64
	// BothEmpty is set when neither prediction nor truth has a pixel:
	// Dice = IoU = 1 by convention, counted apart in reports.
	BothEmpty bool
	Truth     int
	Predicted int
	// TruthDiameterMm is the longest diameter in mm of the truth's
	// largest 8-connected component (imgx.LargestDiameter; 0 without
	// truth pixels), by which Group bins the Dice by nodule size.
	TruthDiameterMm float64
}

// TruePositives returns the slice's predicted pixels that are truth
// pixels. Dice is 2·TP/(Truth+Predicted) with TP a whole number, so TP
// comes back exactly from Dice, Truth and Predicted (the fields a Score
// message carries): float64 rounding is far below ½ for any slice size
// imgx allows. The result is clamped to [0, min(Truth, Predicted)].
func (m Metrics) TruePositives() int {
	if m.BothEmpty || m.Truth+m.Predicted <= 0 {
		return 0
	}
	tp := int(math.Round(m.Dice * float64(m.Truth+m.Predicted) / 2))
	return max(0, min(tp, m.Truth, m.Predicted))
}

// Compare computes the metrics of a probability map (values in [0,1], same
// size as truth) thresholded at thr: pixels with a value >= thr are
// predicted.
func Compare(prob []float32, thr float64, truth *imgx.Mask) (Metrics, *imgx.Mask) {
	pred := Threshold(prob, truth.Rows, truth.Cols, thr)
	return CompareMask(prob, pred, truth), pred
}

// CompareMask computes the metrics of a predicted mask (Dice, IoU) and of
// the probability map it was cut from (RMSE), all the same size as truth.
func CompareMask(prob []float32, pred, truth *imgx.Mask) Metrics {
	var inter, p, t int
	var se float64
	for i, v := range prob {
		g := truth.Pix[i] != 0
		if pred.Pix[i] != 0 {
			p++
			if g {
				inter++
			}
		}
		if g {
			t++
			d := 1 - float64(v)
			se += d * d
		} else {
			se += float64(v) * float64(v)
		}
	}
	m := Metrics{Truth: t, Predicted: p, RMSE: math.Sqrt(se / float64(len(prob))), BothEmpty: p+t == 0}
	m.Dice, m.IoU = DiceIoU(int64(inter), int64(t), int64(p))
	return m
}

// Threshold makes a binary mask of a probability map: pixels >= thr.
func Threshold(prob []float32, rows, cols int, thr float64) *imgx.Mask {
	m := imgx.NewMask(rows, cols)
	for i, v := range prob {
		if float64(v) >= thr {
			m.Pix[i] = 1
		}
	}
	return m
}
