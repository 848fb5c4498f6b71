package score

import (
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

// TestScorePlacement scores a crop model's padded window: the 4×6 slice
// lies at (3,5) of a 16×16 map whose padding is all 0.99, so any resizing
// or misplaced cut would show up in the mask; inside, the probabilities
// are written out and the mask is every pixel ≥ the 0.4 threshold.
func TestScorePlacement(t *testing.T) {
	const rows, cols, side = 4, 6, 16
	inside := []float32{
		0.1, 0.4, 0.39, 0.9, 0.2, 0.0,
		0.5, 0.3, 0.8, 0.41, 0.1, 0.6,
		0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
		0.7, 0.1, 0.1, 0.1, 0.1, 0.45,
	}
	prob := make([]float32, side*side)
	for i := range prob {
		prob[i] = 0.99
	}
	for y := 0; y < rows; y++ {
		copy(prob[(3+y)*side+5:], inside[y*cols:(y+1)*cols])
	}
	truth := imgx.NewMask(rows, cols)
	truth.Pix[1], truth.Pix[3], truth.Pix[6], truth.Pix[14] = 1, 1, 1, 1
	o := &lungsegv1.ModelOutput{Meta: &lungsegv1.SliceMeta{Id: "c", Rows: rows, Cols: cols}, Model: "m-crop",
		Height: side, Width: side, Prob: imgx.EncodeFloat32(prob), Threshold: 0.4,
		HasMask: true, MaskBits: truth.PackBits(), Placement: &lungsegv1.Region{Y0: 3, X0: 5, Height: rows, Width: cols}}
	full, pred, err := Prediction(o)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint8{
		0, 1, 0, 1, 0, 0,
		1, 0, 1, 1, 0, 1,
		0, 0, 0, 0, 0, 0,
		1, 0, 0, 0, 0, 1,
	}
	for i := range want {
		if full[i] != inside[i] || pred.Pix[i] != want[i] {
			t.Fatalf("pixel %d: prob %v mask %d, want %v %d", i, full[i], pred.Pix[i], inside[i], want[i])
		}
	}
	s, err := ScoreOutput(o)
	if err != nil {
		t.Fatal(err)
	}
	// 4 truth pixels (1, 3, 6, 14), 8 predicted, 3 in both.
	if s.TruthPixels != 4 || s.PredictedPixels != 8 || s.Dice < 0.5-1e-9 || s.Dice > 0.5+1e-9 {
		t.Fatalf("truth %d predicted %d dice %v, want 4, 8, 0.5", s.TruthPixels, s.PredictedPixels, s.Dice)
	}

	for name, tc := range map[string]struct {
		place   *lungsegv1.Region
		cascade bool
		err     string
	}{
		"size":    {&lungsegv1.Region{Y0: 3, X0: 5, Height: rows, Width: cols + 1}, false, "placement 4×7 for a 4×6 slice"},
		"outside": {&lungsegv1.Region{Y0: 13, X0: 5, Height: rows, Width: cols}, false, "outside"},
		"cascade": {&lungsegv1.Region{Y0: 3, X0: 5, Height: rows, Width: cols}, true, "cascade"},
	} {
		bad := proto.Clone(o).(*lungsegv1.ModelOutput)
		bad.Placement, bad.Cascade = tc.place, tc.cascade
		if _, _, err := Prediction(bad); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.err)
		}
	}
}
