package score

import (
	"context"
	"math"
	"testing"

	"github.com/lungseg/lungseg/pkg/stage"
	"google.golang.org/protobuf/proto"

	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// TestScoreCascade scores a hand-made cascade output as the refine stage
// publishes it: the refined map on the slice's grid, in which a uniform
// 0.9 detector map is capped at the crop model's threshold outside two
// overlapping crop windows (segment/refine's test builds this very map
// from the windows). The map is thresholded with ">", so capped pixels
// stay out of the mask.
func TestScoreCascade(t *testing.T) {
	const rows, cols = 6, 8
	c := float32(0.5) // uncovered: min(0.9, 0.5)
	want := []float32{
		c, c, c, c, 0.1, 0.65, 0.6, 0.7,
		c, c, c, c, 0.3, 0.3, 0.4, 0.8,
		c, c, c, c, c, c, c, c,
		c, c, c, c, c, c, c, c,
		c, c, c, c, c, c, c, c,
		c, c, c, c, c, c, c, c,
	}
	o := &lungsegv1.ModelOutput{
		Meta:  &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols},
		Model: "det+crop", Height: rows, Width: cols, Prob: imgx.EncodeFloat32(want), Threshold: 0.5,
		Cascade: true,
		Windows: []*lungsegv1.CropWindow{{Y0: -1, X0: 5, Height: 3, Width: 4}, {Y0: 0, X0: 4, Height: 2, Width: 3}},
	}
	truth := imgx.NewMask(rows, cols)
	truth.Pix[5], truth.Pix[6], truth.Pix[20] = 1, 1, 1
	o.HasMask, o.MaskBits = true, truth.PackBits()
	s, err := ScoreOutput(o)
	if err != nil {
		t.Fatal(err)
	}
	pred, err := imgx.UnpackMask(rows, cols, s.PredBits)
	if err != nil {
		t.Fatal(err)
	}
	var inside []float32
	var se float64
	for i, v := range want {
		if (pred.Pix[i] != 0) != (v > 0.5) {
			t.Errorf("pixel %d: predicted %v, refined %v", i, pred.Pix[i], v)
		}
		if v > 0.5 {
			inside = append(inside, v)
		}
		d := float64(v) - float64(truth.Pix[i])
		se += d * d
	}
	gotProb, err := imgx.DecodeFloat32(len(inside), s.PredProb)
	if err != nil {
		t.Fatal(err)
	}
	for i := range inside {
		if gotProb[i] != inside[i] {
			t.Errorf("pred_prob[%d] = %v, want %v", i, gotProb[i], inside[i])
		}
	}
	// Predicted: 0.65, 0.6, 0.7, 0.8 (indices 5, 6, 7, 15); truth 5, 6, 20.
	if s.PredictedPixels != 4 || s.TruthPixels != 3 || math.Abs(s.Dice-2*2.0/7) > 1e-9 || math.Abs(s.Iou-2.0/5) > 1e-9 {
		t.Errorf("score %+v", s)
	}
	if rmse := math.Sqrt(se / rows / cols); math.Abs(s.Rmse-rmse) > 1e-6 {
		t.Errorf("rmse %v, want %v", s.Rmse, rmse)
	}

	// The same map as a plain output: every pixel ≥ 0.5 is predicted, the
	// 40 capped ones too (all but 0.1, 0.3, 0.3, 0.4).
	o.Cascade = false
	if s, err = ScoreOutput(o); err != nil || s.PredictedPixels != rows*cols-4 {
		t.Fatalf("plain output: %d pixels, %v", s.GetPredictedPixels(), err)
	}

	// No window: the map is capped everywhere and the mask is empty.
	capped := make([]float32, rows*cols)
	for i := range capped {
		capped[i] = c
	}
	o.Cascade, o.Windows, o.Prob = true, nil, imgx.EncodeFloat32(capped)
	if s, err = ScoreOutput(o); err != nil || s.PredictedPixels != 0 || math.Abs(s.Rmse-math.Sqrt((45*0.25+3*0.25)/48)) > 1e-6 {
		t.Fatalf("cascade without windows: %+v, %v", s, err)
	}
}

// TestScoreCascadeRejectsBadMaps: a cascade's map must be the slice's
// rows×cols of float32.
func TestScoreCascadeRejectsBadMaps(t *testing.T) {
	for name, o := range map[string]*lungsegv1.ModelOutput{
		"model grid": {Height: 2, Width: 2, Prob: imgx.EncodeFloat32(make([]float32, 4))},
		"short":      {Height: 4, Width: 4, Prob: imgx.EncodeFloat32(make([]float32, 15))},
		"negative":   {Height: -4, Width: -4, Prob: imgx.EncodeFloat32(make([]float32, 16))},
		"huge":       {Height: 1 << 20, Width: 1 << 20},
	} {
		o.Meta, o.Threshold, o.Cascade = &lungsegv1.SliceMeta{Id: "s", Rows: 4, Cols: 4}, 0.5, true
		if _, err := ScoreOutput(o); err == nil {
			t.Errorf("%s map accepted", name)
		}
	}
}

// TestScoreLeavesRefineOnly: a detector's output that only refine reads
// (its cascade selected, not the detector) is acknowledged without a
// score; the same output without refine_only is scored.
func TestScoreLeavesRefineOnly(t *testing.T) {
	o := &lungsegv1.ModelOutput{Meta: &lungsegv1.SliceMeta{Id: "s", Rows: 4, Cols: 4}, Model: "det", Height: 2, Width: 2,
		Prob: imgx.EncodeFloat32([]float32{1, 1, 1, 1}), Threshold: 0.5, Refine: true, RefineOnly: true}
	for _, only := range []bool{true, false} {
		o.RefineOnly = only
		b, err := proto.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		var e emitted
		if err := (Stage{}).Process(context.Background(), &stage.Msg{Data: b}, &e); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 0, false: 1}[only]; len(e.outs) != want {
			t.Errorf("refine_only %v: %d scores, want %d", only, len(e.outs), want)
		}
	}
}

type emitted struct{ outs []stage.Out }

func (e *emitted) Emit(_ context.Context, o stage.Out) error { e.outs = append(e.outs, o); return nil }
func (e *emitted) Fail(context.Context, stage.Failure) error { return nil }

// TestScoreLungField: predicted pixels outside the output's lung field are
// removed (and counted) before the metrics, pred_bits and pred_prob; the
// probability there is 0; without a field nothing changes.
func TestScoreLungField(t *testing.T) {
	const rows, cols = 4, 6
	prob := []float32{ // the model's map at the slice's size: no resizing
		0.9, 0.9, 0.1, 0.1, 0.8, 0.7,
		0.9, 0.9, 0.1, 0.1, 0.6, 0.1,
		0.1, 0.1, 0.1, 0.1, 0.1, 0.1,
		0.1, 0.1, 0.1, 0.1, 0.1, 0.95,
	}
	field := imgx.NewMask(rows, cols) // the left half
	for y := 0; y < rows; y++ {
		for x := 0; x < cols/2; x++ {
			field.Pix[y*cols+x] = 1
		}
	}
	truth := imgx.NewMask(rows, cols)
	truth.Pix[0], truth.Pix[1], truth.Pix[6], truth.Pix[7] = 1, 1, 1, 1
	out := func(has bool) *lungsegv1.ModelOutput {
		o := &lungsegv1.ModelOutput{Meta: &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols}, Model: "m",
			Height: rows, Width: cols, Prob: imgx.EncodeFloat32(prob), Threshold: 0.5, HasMask: true, MaskBits: truth.PackBits()}
		if has {
			o.FieldBits, o.HasField = field.PackBits(), true
		}
		return o
	}
	for _, tc := range []struct {
		name               string
		has                bool
		predicted, outside int64
		dice               float64
	}{
		{"field", true, 4, 4, 1},
		{"no field", false, 8, 0, 2 * 4 / float64(4+8)},
	} {
		s, err := ScoreOutput(out(tc.has))
		if err != nil {
			t.Fatal(err)
		}
		if s.HasField != tc.has || s.PredictedPixels != tc.predicted || s.OutsideFieldPixels != tc.outside || math.Abs(s.Dice-tc.dice) > 1e-12 {
			t.Errorf("%s: has_field %v, predicted %d, outside %d, Dice %g; want %v, %d, %d, %g",
				tc.name, s.HasField, s.PredictedPixels, s.OutsideFieldPixels, s.Dice, tc.has, tc.predicted, tc.outside, tc.dice)
		}
		pred, err := imgx.UnpackMask(rows, cols, s.PredBits)
		if err != nil {
			t.Fatal(err)
		}
		if int64(pred.Count()) != tc.predicted || len(s.PredProb) != 4*int(tc.predicted) {
			t.Errorf("%s: pred_bits %d pixels, pred_prob %d bytes", tc.name, pred.Count(), len(s.PredProb))
		}
		full, _, err := Prediction(out(tc.has))
		if err != nil {
			t.Fatal(err)
		}
		if tc.has && (full[4] != 0 || full[0] != 0.9) {
			t.Errorf("%s: probability outside the field %g, inside %g", tc.name, full[4], full[0])
		}
	}
	o := out(true)
	o.FieldBits = o.FieldBits[:1]
	if _, err := ScoreOutput(o); err == nil {
		t.Error("short field bits accepted")
	}
}
