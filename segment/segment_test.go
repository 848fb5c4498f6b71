package segment

import (
	"testing"
)

// shiftModel returns, for each image, the pixel value plus a per-position
// bias that is not flip-symmetric, so TTA must flip outputs back.
type posModel struct{ h, w int }

func (p posModel) Provider() string { return "test" }
func (p posModel) Run(in []float32, n int) ([]float32, error) {
	out := make([]float32, len(in))
	copy(out, in)
	return out, nil
}

func TestPredictTTAUnflips(t *testing.T) {
	h, w := 3, 4
	in := make([]float32, h*w)
	for i := range in {
		in[i] = float32(i)
	}
	// An identity model: TTA of an identity must give the input back.
	got, err := Predict(posModel{h, w}, in, h, w, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		if d := got[i] - in[i]; d > 1e-5 || d < -1e-5 {
			t.Fatalf("pixel %d: %v want %v", i, got[i], in[i])
		}
	}
}

func TestFlipsAreInvolutions(t *testing.T) {
	h, w := 5, 3
	in := make([]float32, h*w)
	for i := range in {
		in[i] = float32(i * 7 % 11)
	}
	a, b := make([]float32, h*w), make([]float32, h*w)
	flipH(a, in, h, w)
	flipH(b, a, h, w)
	for i := range in {
		if b[i] != in[i] {
			t.Fatal("flipH twice is not identity")
		}
	}
	if a[0] != in[w-1] {
		t.Fatal("flipH does not mirror columns")
	}
	flipV(a, in, h, w)
	flipV(b, a, h, w)
	for i := range in {
		if b[i] != in[i] {
			t.Fatal("flipV twice is not identity")
		}
	}
	if a[0] != in[(h-1)*w] {
		t.Fatal("flipV does not mirror rows")
	}
}
