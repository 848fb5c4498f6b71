package verify_test

import (
	"errors"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/segment/verify"
)

// blob sets prob to v on the h×w rectangle at (y0, x0).
func blob(prob []float32, cols, y0, x0, h, w int, v float32) {
	for y := y0; y < y0+h; y++ {
		for x := x0; x < x0+w; x++ {
			prob[y*cols+x] = v
		}
	}
}

func TestComponents(t *testing.T) {
	const rows, cols = 20, 30
	prob := make([]float32, rows*cols)
	blob(prob, cols, 2, 2, 3, 4, 0.9)   // centroid (3, 3.5) → (3, 4), half to even
	blob(prob, cols, 5, 6, 1, 1, 0.6)   // touches the first diagonally: same component
	blob(prob, cols, 10, 20, 2, 2, 0.5) // exactly at the threshold: in
	blob(prob, cols, 15, 5, 2, 2, 0.49) // under it
	comps := verify.Components(prob, rows, cols, 0.5, nil)
	if len(comps) != 2 {
		t.Fatalf("%d components, want 2: %+v", len(comps), comps)
	}
	if n := len(comps[0].Pixels); n != 13 {
		t.Errorf("first component has %d pixels, want 13", n)
	}
	// mean row (3·4·… ) of 12 pixels at rows 2..4 and one at 5: (2·4+3·4+4·4+5)/13 = 41/13 ≈ 3.15 → 3;
	// columns (2+3+4+5)·3 + 6 = 48/13 ≈ 3.69 → 4
	if comps[0].CY != 3 || comps[0].CX != 4 {
		t.Errorf("first centroid (%d, %d), want (3, 4)", comps[0].CY, comps[0].CX)
	}
	// (10.5, 20.5) rounds half to even: (10, 20)
	if comps[1].CY != 10 || comps[1].CX != 20 {
		t.Errorf("second centroid (%d, %d), want (10, 20) (half to even)", comps[1].CY, comps[1].CX)
	}
	field := &imgx.Mask{Rows: rows, Cols: cols, Pix: make([]uint8, rows*cols)}
	for i := 0; i < rows*cols/2; i++ { // the upper half only
		field.Pix[i] = 1
	}
	if got := verify.Components(prob, rows, cols, 0.5, field); len(got) != 1 || len(got[0].Pixels) != 13 {
		t.Errorf("inside the field: %d components, want the first one only", len(got))
	}
}

func TestPatch(t *testing.T) {
	hu := &imgx.HU{Rows: 6, Cols: 6, Pix: make([]int16, 36)}
	for i := range hu.Pix {
		hu.Pix[i] = int16(i * 10)
	}
	norm := model.Normalisation{Kind: "window", Center: 0, Width: 1000}
	c := verify.Component{Pixels: []int{0, 1, 7}, CY: 0, CX: 0}
	const p = 4
	dst := make([]float32, 2*p*p)
	for i := range dst {
		dst[i] = -7 // must all be overwritten
	}
	verify.Patch(dst, hu, c, p, norm)
	air := norm.Apply(imgx.AirHU)
	// top-left (−2, −2): rows/cols 0,1 of the patch are outside, (2,2) is pixel (0,0)
	for y := 0; y < p; y++ {
		for x := 0; x < p; x++ {
			want := air
			if sy, sx := y-2, x-2; sy >= 0 && sx >= 0 {
				want = norm.Apply(float64(hu.Pix[sy*6+sx]))
			}
			if got := dst[y*p+x]; got != want {
				t.Errorf("HU channel (%d,%d) = %v, want %v", y, x, got, want)
			}
			wantM := float32(0)
			if (y == 2 && (x == 2 || x == 3)) || (y == 3 && x == 3) {
				wantM = 1
			}
			if got := dst[p*p+y*p+x]; got != wantM {
				t.Errorf("mask channel (%d,%d) = %v, want %v", y, x, got, wantM)
			}
		}
	}
}

// fake accepts the patches whose centre pixel of the mask channel is set
// and whose HU channel there is bright; it records the calls.
type fake struct {
	p     int
	calls []int
	err   error
}

func (f *fake) Run(in []float32, n int) ([]float32, error) {
	f.calls = append(f.calls, n)
	if f.err != nil {
		return nil, f.err
	}
	out := make([]float32, n)
	sz := 2 * f.p * f.p
	for k := 0; k < n; k++ {
		c := f.p/2*f.p + f.p/2
		if in[k*sz+c] > 0.5 {
			out[k] = 0.9
		} else {
			out[k] = 0.1
		}
	}
	return out, nil
}

func TestApply(t *testing.T) {
	const rows, cols = 64, 64
	hu := &imgx.HU{Rows: rows, Cols: cols, Pix: make([]int16, rows*cols)}
	for i := range hu.Pix {
		hu.Pix[i] = -900 // lung
	}
	prob := make([]float32, rows*cols)
	blob(prob, cols, 10, 10, 5, 5, 0.8) // a bright "nodule"
	for y := 10; y < 15; y++ {
		for x := 10; x < 15; x++ {
			hu.Pix[y*cols+x] = 40
		}
	}
	blob(prob, cols, 40, 40, 3, 8, 0.7) // a dark "vessel"
	v := &model.Verifier{Patch: 16, Normalisation: model.Normalisation{Kind: "window", Center: -600, Width: 1500}, Threshold: 0.5}
	f := &fake{p: 16}
	before := append([]float32(nil), prob...)
	res, err := verify.Apply(f, v, hu, prob, 0.5, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Components != 2 || res.Rejected != 1 || len(res.Probs) != 2 {
		t.Fatalf("result %+v, want 2 components, 1 rejected", res)
	}
	if len(f.calls) != 1 || f.calls[0] != 2 {
		t.Errorf("verifier calls %v, want one batch of 2", f.calls)
	}
	for i := range prob {
		y, x := i/cols, i%cols
		switch {
		case y >= 40 && y < 43 && x >= 40 && x < 48:
			if prob[i] > 0.25 {
				t.Fatalf("rejected pixel (%d,%d) = %v, want ≤ half the threshold", y, x, prob[i])
			}
		case prob[i] != before[i]:
			t.Fatalf("pixel (%d,%d) changed %v → %v", y, x, before[i], prob[i])
		}
	}
	// a mask of score at the threshold keeps the nodule only
	m := 0
	for _, p := range prob {
		if p >= 0.5 {
			m++
		}
	}
	if m != 25 {
		t.Errorf("%d pixels ≥ threshold after verifying, want the nodule's 25", m)
	}
	// errors: the verifier's, a map of the wrong size, a field of the wrong size
	boom := errors.New("boom")
	if _, err := verify.Apply(&fake{p: 16, err: boom}, v, hu, prob, 0.5, nil); !errors.Is(err, boom) {
		t.Errorf("verifier error: got %v", err)
	}
	if _, err := verify.Apply(f, v, hu, prob[:10], 0.5, nil); err == nil {
		t.Error("a short map was accepted")
	}
	if _, err := verify.Apply(f, v, hu, prob, 0.5, &imgx.Mask{Rows: 2, Cols: 2, Pix: make([]uint8, 4)}); err == nil {
		t.Error("a field of another size was accepted")
	}
}

// TestApplyChunks: more components than Chunk go to the verifier in
// several calls, and every component gets its probability.
func TestApplyChunks(t *testing.T) {
	const rows, cols = 64, 64
	hu := &imgx.HU{Rows: rows, Cols: cols, Pix: make([]int16, rows*cols)}
	prob := make([]float32, rows*cols)
	n := 0
	for y := 0; y < rows; y += 2 {
		for x := 0; x < cols; x += 2 {
			prob[y*cols+x] = 0.9 // isolated pixels: one component each
			n++
		}
	}
	f := &fake{p: 8}
	v := &model.Verifier{Patch: 8, Normalisation: model.Normalisation{Kind: "window", Center: -600, Width: 1500}, Threshold: 0.5}
	res, err := verify.Apply(f, v, hu, prob, 0.5, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Components != n || len(res.Probs) != n {
		t.Fatalf("%d components, %d probabilities, want %d", res.Components, len(res.Probs), n)
	}
	want := (n + verify.Chunk - 1) / verify.Chunk
	if len(f.calls) != want {
		t.Errorf("%d verifier calls, want %d", len(f.calls), want)
	}
}
