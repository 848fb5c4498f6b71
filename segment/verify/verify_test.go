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

// TestZoomPatch checks the zoomed window on the cases of train/tests/
// test_verifier.py's test_zoom_window_fits_the_component_and_averages_blocks:
// hu[y,x] = 10y+x on 40×40, patch 8, margin 4.
func TestZoomPatch(t *testing.T) {
	hu := &imgx.HU{Rows: 40, Cols: 40, Pix: make([]int16, 1600)}
	for i := range hu.Pix {
		hu.Pix[i] = int16(10*(i/40) + i%40)
	}
	norm := model.Normalisation{Kind: "window", Center: -600, Width: 1500}
	z := model.VerifierZoom{Margin: 4, MaxFactor: 6}
	const p = 8
	raw := func(v float64) float32 { return norm.Apply(v) }

	// a vertical line x = 20, y = 5..34: side 30 + 8 → f = 5, the window is the image
	prob := make([]float32, 1600)
	for y := 5; y < 35; y++ {
		prob[y*40+20] = 1
	}
	cs := verify.Components(prob, 40, 40, 0.5, nil)
	if len(cs) != 1 || cs[0].CY != 20 || cs[0].CX != 20 || cs[0].Side != 30 {
		t.Fatalf("components %+v, want one at (20,20) of side 30", cs)
	}
	if f := verify.ZoomFactor(cs[0], p, z); f != 5 {
		t.Fatalf("ZoomFactor = %d, want 5", f)
	}
	dst := make([]float32, 2*p*p)
	verify.ZoomPatch(dst, hu, cs[0], p, z, norm)
	for by := 0; by < p; by++ {
		for bx := 0; bx < p; bx++ {
			// the mean of 10y+x over a 5×5 block is 10·(5by+2) + 5bx+2
			if got, want := dst[by*p+bx], raw(float64(10*(5*by+2)+5*bx+2)); got != want {
				t.Errorf("HU block (%d,%d) = %v, want %v", by, bx, got, want)
			}
			wantM := float32(0)
			if bx == 4 && by >= 1 && by <= 6 {
				wantM = 0.2
			}
			if got := dst[p*p+by*p+bx]; got != wantM {
				t.Errorf("mask block (%d,%d) = %v, want %v", by, bx, got, wantM)
			}
		}
	}
	if dst[0] != raw(22) || dst[p*p-1] != raw(407) {
		t.Errorf("corner blocks %v, %v, want HU 22 and 407", dst[0], dst[p*p-1])
	}

	// one pixel in the corner: side 1 + 8 → f = 2, window 16 at (−8,−8), air beyond the image
	c := verify.Component{Pixels: []int{0}, CY: 0, CX: 0, Side: 1}
	if f := verify.ZoomFactor(c, p, z); f != 2 {
		t.Fatalf("ZoomFactor = %d, want 2", f)
	}
	verify.ZoomPatch(dst, hu, c, p, z, norm)
	if dst[3*p+3] != raw(-1024) || dst[4*p+3] != raw(-1024) || dst[4*p+4] != raw(5.5) || dst[4*p+5] != raw(7.5) {
		t.Errorf("HU blocks (3,3) (4,3) (4,4) (4,5) = %v %v %v %v, want HU −1024 −1024 5.5 7.5",
			dst[3*p+3], dst[4*p+3], dst[4*p+4], dst[4*p+5])
	}
	var sum float32
	for _, v := range dst[p*p:] {
		sum += v
	}
	if dst[p*p+4*p+4] != 0.25 || sum != 0.25 {
		t.Errorf("mask block (4,4) = %v, sum %v, want 0.25 and 0.25", dst[p*p+4*p+4], sum)
	}

	// f = 1 (patch 16: side 2 + 8) is Patch
	c = verify.Component{Pixels: []int{20*40 + 20, 21*40 + 20}, CY: 20, CX: 20, Side: 2}
	a, b := make([]float32, 2*16*16), make([]float32, 2*16*16)
	verify.ZoomPatch(a, hu, c, 16, z, norm)
	verify.Patch(b, hu, c, 16, norm)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("f = 1: value %d is %v, Patch has %v", i, a[i], b[i])
		}
	}
	// very large components stop at MaxFactor
	if f := verify.ZoomFactor(verify.Component{Side: 301}, p, z); f != 6 {
		t.Errorf("ZoomFactor of side 301 = %d, want 6", f)
	}
}
