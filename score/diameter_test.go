package score

import (
	"math"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// TestScoreTruthDiameter scores outputs whose truth is a disc of known
// diameter with a smaller blob beside it, at unequal pixel spacing: the
// Score carries the disc's diameter within one pixel spacing; a slice
// without truth pixels carries 0.
func TestScoreTruthDiameter(t *testing.T) {
	const rows, cols = 64, 96
	for _, tc := range []struct{ dMm, sr, sc float64 }{{4, 0.7, 0.7}, {8.5, 0.6, 0.8}, {14, 0.9, 0.5}, {30, 0.75, 0.75}} {
		truth := imgx.NewMask(rows, cols)
		cr, cc := 30.3, 40.6
		ar, ac := tc.dMm/2/tc.sr, tc.dMm/2/tc.sc
		for r := range rows {
			for c := range cols {
				dr, dc := (float64(r)-cr)/ar, (float64(c)-cc)/ac
				if dr*dr+dc*dc <= 1 {
					truth.Pix[r*cols+c] = 1
				}
			}
		}
		truth.Pix[2*cols+90], truth.Pix[3*cols+91] = 1, 1 // a two-pixel blob far off
		o := &lungsegv1.ModelOutput{
			Meta:  &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols, SpacingRowMm: tc.sr, SpacingColMm: tc.sc},
			Model: "m", Height: rows, Width: cols, Prob: imgx.EncodeFloat32(make([]float32, rows*cols)), Threshold: 0.5,
			HasMask: true, MaskBits: truth.PackBits(),
		}
		s, err := ScoreOutput(o)
		if err != nil {
			t.Fatal(err)
		}
		if e := math.Abs(s.TruthDiameterMm - tc.dMm); e > math.Max(tc.sr, tc.sc) {
			t.Errorf("%.1f mm disc at %.2f×%.2f mm: diameter %.2f mm", tc.dMm, tc.sr, tc.sc, s.TruthDiameterMm)
		}
		if got := FromScore(s).TruthDiameterMm; got != s.TruthDiameterMm {
			t.Errorf("FromScore diameter %v, Score %v", got, s.TruthDiameterMm)
		}
		o.MaskBits = imgx.NewMask(rows, cols).PackBits()
		if s, err := ScoreOutput(o); err != nil || s.TruthDiameterMm != 0 {
			t.Errorf("empty truth: diameter %v, %v", s.GetTruthDiameterMm(), err)
		}
	}
}
