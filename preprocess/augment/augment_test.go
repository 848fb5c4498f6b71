package augment_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/preprocess"
	"github.com/lungseg/lungseg/preprocess/augment"
)

const (
	shapeHU = 40   // the nodule's value
	bgHU    = -800 // lung parenchyma around it
)

// disc draws a disc of radius rad centred at (cx, cy) into a fresh image
// (shapeHU on bgHU) and mask.
func disc(rows, cols int, cx, cy, rad float64) (*imgx.Float, *imgx.Mask) {
	img := imgx.NewFloat(rows, cols)
	m := imgx.NewMask(rows, cols)
	for y := 0; y < rows; y++ {
		for x := 0; x < cols; x++ {
			i := y*cols + x
			img.Pix[i] = bgHU
			if (float64(x)-cx)*(float64(x)-cx)+(float64(y)-cy)*(float64(y)-cy) <= rad*rad {
				img.Pix[i] = shapeHU
				m.Pix[i] = 1
			}
		}
	}
	return img, m
}

// square draws an axis-aligned square of side s with top-left (x0, y0).
func square(rows, cols, x0, y0, s int) (*imgx.Float, *imgx.Mask) {
	img := imgx.NewFloat(rows, cols)
	m := imgx.NewMask(rows, cols)
	for i := range img.Pix {
		img.Pix[i] = bgHU
	}
	for y := y0; y < y0+s; y++ {
		for x := x0; x < x0+s; x++ {
			img.Pix[y*cols+x] = shapeHU
			m.Pix[y*cols+x] = 1
		}
	}
	return img, m
}

func noise(rows, cols int, seed uint64) (*imgx.Float, *imgx.Mask) {
	r := rand.New(rand.NewPCG(seed, 1))
	img := imgx.NewFloat(rows, cols)
	m := imgx.NewMask(rows, cols)
	for i := range img.Pix {
		img.Pix[i] = float32(r.IntN(2400) - 1024)
		if r.IntN(3) == 0 {
			m.Pix[i] = 1
		}
	}
	return img, m
}

func centroid(m *imgx.Mask) (x, y float64) {
	var n float64
	for i, v := range m.Pix {
		if v != 0 {
			x += float64(i % m.Cols)
			y += float64(i / m.Cols)
			n++
		}
	}
	return x / n, y / n
}

// shapeCentroid is the centroid of the image pixels nearer the shape's
// value than the background's.
func shapeCentroid(img *imgx.Float, shape, bg float32) (x, y float64) {
	var n float64
	for i, v := range img.Pix {
		if math.Abs(float64(v-shape)) < math.Abs(float64(v-bg)) {
			x += float64(i % img.Cols)
			y += float64(i / img.Cols)
			n++
		}
	}
	return x / n, y / n
}

func assertBinary(t *testing.T, m *imgx.Mask) {
	t.Helper()
	for i, v := range m.Pix {
		if v > 1 {
			t.Fatalf("mask pixel %d = %d, not binary", i, v)
		}
	}
}

// interiorValues checks that image pixels whose neighbourhood of radius
// e lies inside the mask hold want, and that there are some.
func interiorValues(t *testing.T, img *imgx.Float, m *imgx.Mask, e int, want float32, tol float64) {
	t.Helper()
	n := 0
	for y := e; y < m.Rows-e; y++ {
	next:
		for x := e; x < m.Cols-e; x++ {
			for dy := -e; dy <= e; dy++ {
				for dx := -e; dx <= e; dx++ {
					if m.Pix[(y+dy)*m.Cols+x+dx] == 0 {
						continue next
					}
				}
			}
			n++
			if got := img.Pix[y*m.Cols+x]; math.Abs(float64(got-want)) > tol {
				t.Fatalf("pixel (%d,%d) inside the mask = %v, want %v", x, y, got, want)
			}
		}
	}
	if n == 0 {
		t.Fatal("no interior pixels left")
	}
}

func near(t *testing.T, what string, gx, gy, wx, wy, tol float64) {
	t.Helper()
	if math.Hypot(gx-wx, gy-wy) > tol {
		t.Fatalf("%s at (%.2f, %.2f), want (%.2f, %.2f) ± %g", what, gx, gy, wx, wy, tol)
	}
}

func equalFloat(a, b *imgx.Float) bool {
	return a.Rows == b.Rows && a.Cols == b.Cols && slices.Equal(a.Pix, b.Pix)
}

func equalMask(a, b *imgx.Mask) bool {
	return a.Rows == b.Rows && a.Cols == b.Cols && slices.Equal(a.Pix, b.Pix)
}

func TestFlipsAreInvolutions(t *testing.T) {
	img, m := noise(13, 17, 1)
	for _, c := range []struct{ h, v bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		i1, m1 := augment.FlipBy(img, m, c.h, c.v)
		if (c.h || c.v) && equalFloat(i1, img) {
			t.Fatalf("flip h=%v v=%v changed nothing", c.h, c.v)
		}
		i2, m2 := augment.FlipBy(i1, m1, c.h, c.v)
		if !equalFloat(i2, img) || !equalMask(m2, m) {
			t.Fatalf("flip h=%v v=%v twice is not the identity", c.h, c.v)
		}
	}
	// Left-right: pixel (x, y) goes to (cols-1-x, y).
	i1, _ := augment.FlipBy(img, m, true, false)
	if i1.Pix[2*17+3] != img.Pix[2*17+13] {
		t.Fatal("horizontal flip does not mirror columns")
	}
	i1, _ = augment.FlipBy(img, m, false, true)
	if i1.Pix[2*17+3] != img.Pix[10*17+3] {
		t.Fatal("vertical flip does not mirror rows")
	}
}

func TestZeroRotationAndZeroElasticAreIdentity(t *testing.T) {
	for _, size := range [][2]int{{32, 32}, {31, 47}} {
		img, m := noise(size[0], size[1], 2)
		ri, rm := augment.RotateBy(img, m, 0, augment.AirHU)
		if !equalFloat(ri, img) || !equalMask(rm, m) {
			t.Fatalf("%v: rotation by 0 is not the identity", size)
		}
		r := rand.New(rand.NewPCG(3, 4))
		for _, tr := range []augment.Transform{
			augment.Rotate{MaxDeg: 0, Fill: augment.AirHU},
			augment.Elastic{Alpha: 0, Sigma: 4, Fill: augment.AirHU},
			augment.Elastic{Alpha: 0, Sigma: 0, Fill: augment.AirHU},
			augment.Flip{H: 0, V: 0},
			augment.Intensity{Window: &augment.LungWindow},
			augment.Resize{Rows: size[0], Cols: size[1]},
		} {
			var p augment.Params
			ei, em, err := tr.Apply(img, m, r, &p)
			if err != nil {
				t.Fatal(err)
			}
			if tr.Name() == "intensity" {
				// Identity in window space: HU inside the window survive
				// (up to float rounding), outside it they are clamped.
				for i, v := range img.Pix {
					want := float64(v)
					want = math.Max(-1350, math.Min(150, want))
					if math.Abs(float64(ei.Pix[i])-want) > 1e-3 {
						t.Fatalf("%v: intensity with no change maps %v to %v, want %v", size, v, ei.Pix[i], want)
					}
				}
				continue
			}
			if !equalFloat(ei, img) || !equalMask(em, m) {
				t.Fatalf("%v: %s with zero strength is not the identity (%+v)", size, tr.Name(), p)
			}
		}
	}
}

func TestRotationDirectionAndCentre(t *testing.T) {
	// A pixel right of the centre goes up on a counter-clockwise turn.
	img := imgx.NewFloat(9, 9)
	m := imgx.NewMask(9, 9)
	img.Pix[4*9+7], m.Pix[4*9+7] = 1, 1
	ri, rm := augment.RotateBy(img, m, 90, 0)
	if rm.Pix[1*9+4] != 1 || rm.Count() != 1 {
		t.Fatalf("90° turn moved the mask pixel elsewhere: %v", rm.Pix)
	}
	if math.Abs(float64(ri.Pix[1*9+4])-1) > 1e-6 {
		t.Fatalf("90° turn: image pixel (4,1) = %v, want 1", ri.Pix[1*9+4])
	}
	// The centre of an odd-sized image stays put at any angle.
	img.Pix[4*9+4] = 5
	for _, deg := range []float64{13, -29, 180} {
		ri, _ := augment.RotateBy(img, nil, deg, 0)
		if math.Abs(float64(ri.Pix[4*9+4])-5) > 1e-5 {
			t.Fatalf("rotation by %g moved the centre: %v", deg, ri.Pix[4*9+4])
		}
	}
}

func TestMasksStayBinary(t *testing.T) {
	pl, err := augment.New(augment.Default(64, augment.LungWindow))
	if err != nil {
		t.Fatal(err)
	}
	for seed := uint64(0); seed < 5; seed++ {
		img, m := noise(50, 70, seed)
		_, om, _, err := pl.Apply(img, m, augment.NewRand(seed, "x"))
		if err != nil {
			t.Fatal(err)
		}
		assertBinary(t, om)
		if om.Rows != 64 || om.Cols != 64 {
			t.Fatalf("mask is %d×%d, want 64×64", om.Rows, om.Cols)
		}
	}
}

// TestShapeStaysAligned draws a disc (and a square) into image and mask
// and checks after each transform that the image holds the shape's value
// inside the mask and that the mask's centroid is where the image's shape
// is, and where geometry says it must be.
func TestShapeStaysAligned(t *testing.T) {
	const rows, cols = 96, 80
	cx, cy, rad := 50.0, 35.0, 12.0
	img, m := disc(rows, cols, cx, cy, rad)
	ox, oy := float64(cols-1)/2, float64(rows-1)/2
	rotated := func(deg float64) (float64, float64) {
		a := deg * math.Pi / 180
		dx, dy := cx-ox, cy-oy
		return ox + math.Cos(a)*dx + math.Sin(a)*dy, oy - math.Sin(a)*dx + math.Cos(a)*dy
	}
	type want struct {
		x, y  float64
		value float32
	}
	cases := []struct {
		name string
		run  func() (*imgx.Float, *imgx.Mask)
		want want
		tol  float64
	}{
		{"rotate 30", func() (*imgx.Float, *imgx.Mask) { return augment.RotateBy(img, m, 30, augment.AirHU) },
			func() want { x, y := rotated(30); return want{x, y, shapeHU} }(), 0.6},
		{"rotate -30", func() (*imgx.Float, *imgx.Mask) { return augment.RotateBy(img, m, -30, augment.AirHU) },
			func() want { x, y := rotated(-30); return want{x, y, shapeHU} }(), 0.6},
		{"rotate 7.5", func() (*imgx.Float, *imgx.Mask) { return augment.RotateBy(img, m, 7.5, augment.AirHU) },
			func() want { x, y := rotated(7.5); return want{x, y, shapeHU} }(), 0.6},
		{"flip h", func() (*imgx.Float, *imgx.Mask) { return augment.FlipBy(img, m, true, false) },
			want{cols - 1 - cx, cy, shapeHU}, 1e-9},
		{"flip v", func() (*imgx.Float, *imgx.Mask) { return augment.FlipBy(img, m, false, true) },
			want{cx, rows - 1 - cy, shapeHU}, 1e-9},
		{"flip hv", func() (*imgx.Float, *imgx.Mask) { return augment.FlipBy(img, m, true, true) },
			want{cols - 1 - cx, rows - 1 - cy, shapeHU}, 1e-9},
		{"resize up", func() (*imgx.Float, *imgx.Mask) { return augment.ResizeTo(img, m, 256, 256) },
			want{(cx+0.5)*256/cols - 0.5, (cy+0.5)*256/rows - 0.5, shapeHU}, 1.5},
		{"resize down", func() (*imgx.Float, *imgx.Mask) { return augment.ResizeTo(img, m, 64, 48) },
			want{(cx+0.5)*48/cols - 0.5, (cy+0.5)*64/rows - 0.5, shapeHU}, 0.6},
		{"intensity", func() (*imgx.Float, *imgx.Mask) {
			return augment.AdjustIntensity(img, &augment.LungWindow, -0.05, 1.1), m
		}, want{cx, cy, float32(augment.LungWindow.HU(clamp01(1.1*(augment.LungWindow.Norm(shapeHU)-0.5) + 0.5 - 0.05)))}, 1e-9},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			oi, om := c.run()
			assertBinary(t, om)
			erode := 2
			if c.name == "resize up" {
				erode = 5 // bilinear taps span ±1 source pixel, 3.2 output pixels
			}
			interiorValues(t, oi, om, erode, c.want.value, 0.01)
			mx, my := centroid(om)
			near(t, "mask centroid", mx, my, c.want.x, c.want.y, c.tol)
			ix, iy := shapeCentroid(oi, c.want.value, float32(bgValue(c.name)))
			near(t, "image shape centroid", ix, iy, mx, my, 0.5)
		})
	}
	// Elastic: no closed form for where the disc goes, but image and mask
	// must move together, and the disc stays roughly where it was.
	for seed := uint64(0); seed < 4; seed++ {
		r := rand.New(rand.NewPCG(seed, 9))
		var p augment.Params
		oi, om, err := augment.Elastic{Alpha: 200, Sigma: 10, Fill: augment.AirHU}.Apply(img, m, r, &p)
		if err != nil {
			t.Fatal(err)
		}
		if equalMask(om, m) {
			t.Fatalf("seed %d: elastic deformation did not change the mask", seed)
		}
		assertBinary(t, om)
		interiorValues(t, oi, om, 2, shapeHU, 0.01)
		mx, my := centroid(om)
		ix, iy := shapeCentroid(oi, shapeHU, bgHU)
		near(t, "elastic image shape centroid", ix, iy, mx, my, 0.5)
		near(t, "elastic mask centroid", mx, my, cx, cy, 8)
		if p.Alpha != 200 || p.Sigma != 10 {
			t.Fatalf("elastic params not recorded: %+v", p)
		}
	}
}

func bgValue(name string) float64 {
	if name == "intensity" {
		w := augment.LungWindow
		return w.HU(clamp01(1.1*(w.Norm(bgHU)-0.5) + 0.5 - 0.05))
	}
	return bgHU
}

func TestSquareThroughDefaultPipeline(t *testing.T) {
	img, m := square(64, 64, 20, 24, 16)
	cfg := augment.Default(128, augment.LungWindow)
	pl, err := augment.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for seed := uint64(0); seed < 6; seed++ {
		oi, om, p, err := pl.Apply(img, m, augment.NewRand(seed, "square"))
		if err != nil {
			t.Fatal(err)
		}
		if oi.Rows != 128 || oi.Cols != 128 || om.Rows != 128 || om.Cols != 128 {
			t.Fatalf("output %d×%d / %d×%d, want 128×128", oi.Rows, oi.Cols, om.Rows, om.Cols)
		}
		if !slices.Equal(p.Steps, []string{"resize", "rotate", "flip", "elastic", "intensity"}) || p.Rows != 128 {
			t.Fatalf("params %+v", p)
		}
		if math.Abs(p.AngleDeg) > 30 || math.Abs(p.Brightness) > 0.1 || math.Abs(p.Contrast-1) > 0.1 {
			t.Fatalf("draws out of range: %+v", p)
		}
		assertBinary(t, om)
		w := augment.LungWindow
		inside := float32(w.HU(clamp01(p.Contrast*(w.Norm(shapeHU)-0.5) + 0.5 + p.Brightness)))
		outside := float32(w.HU(clamp01(p.Contrast*(w.Norm(bgHU)-0.5) + 0.5 + p.Brightness)))
		// Three resamplings in a row (resize 2×, rotate, elastic) each
		// blur the edge by up to a pixel and shift the nearest-neighbour
		// mask by up to 0.71 px: look 5 px inside the mask.
		interiorValues(t, oi, om, 5, inside, 0.01)
		mx, my := centroid(om)
		ix, iy := shapeCentroid(oi, inside, outside)
		near(t, "image shape centroid", ix, iy, mx, my, 1)
	}
}

func clamp01(v float64) float64 { return math.Max(0, math.Min(1, v)) }

func TestPipelineDeterministicAndPure(t *testing.T) {
	img, m := noise(40, 40, 5)
	img0, m0 := &imgx.Float{Rows: 40, Cols: 40, Pix: slices.Clone(img.Pix)}, &imgx.Mask{Rows: 40, Cols: 40, Pix: slices.Clone(m.Pix)}
	pl, err := augment.New(augment.Default(32, augment.LungWindow))
	if err != nil {
		t.Fatal(err)
	}
	a, am, ap, _ := pl.Apply(img, m, augment.NewRand(7, "k#1"))
	b, bm, bp, _ := pl.Apply(img, m, augment.NewRand(7, "k#1"))
	if !equalFloat(a, b) || !equalMask(am, bm) || ap.AngleDeg != bp.AngleDeg {
		t.Fatal("same seed and key gave different outputs")
	}
	c, _, cp, _ := pl.Apply(img, m, augment.NewRand(8, "k#1"))
	d, _, dp, _ := pl.Apply(img, m, augment.NewRand(7, "k#2"))
	if equalFloat(a, c) || ap.AngleDeg == cp.AngleDeg || equalFloat(a, d) || ap.AngleDeg == dp.AngleDeg {
		t.Fatal("another seed or key gave the same output")
	}
	if !equalFloat(img, img0) || !equalMask(m, m0) {
		t.Fatal("Apply modified its inputs")
	}
	// A nil mask is allowed.
	if _, om, _, err := pl.Apply(img, nil, augment.NewRand(1, "")); err != nil || om != nil {
		t.Fatalf("nil mask: %v, %v", om, err)
	}
}

func TestWindowMatchesModelNormalisation(t *testing.T) {
	n := model.Normalisation{Kind: "window", Center: -600, Width: 1500}
	w := augment.Window{Center: n.Center, Width: n.Width}
	for hu := -3000.0; hu <= 3000; hu += 7 {
		if got, want := w.Value(hu), n.Apply(hu); got != want {
			t.Fatalf("window(%g) = %v, model.Normalisation = %v", hu, got, want)
		}
	}
}

func TestIntensityInHUMatchesWindowSpace(t *testing.T) {
	img, m := noise(20, 20, 6)
	w := augment.LungWindow
	hu := augment.AdjustIntensity(img, &w, -0.07, 0.92)
	win := augment.AdjustIntensity(w.Apply(img), nil, -0.07, 0.92)
	back := w.Apply(hu)
	for i := range back.Pix {
		if math.Abs(float64(back.Pix[i]-win.Pix[i])) > 1e-6 {
			t.Fatalf("pixel %d: windowing the HU result gives %v, adjusting the windowed input %v", i, back.Pix[i], win.Pix[i])
		}
	}
	// And through a pipeline with a window step at the end, in [0,1].
	pl, err := augment.New(augment.Config{Window: w, Steps: []augment.Step{{Op: "window"}, {Op: "intensity", Brightness: 0.2, Contrast: 0.3}, {Op: "rotate", MaxDeg: 30}}})
	if err != nil {
		t.Fatal(err)
	}
	out, _, _, err := pl.Apply(img, m, augment.NewRand(1, "w"))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range out.Pix {
		if v < 0 || v > 1 {
			t.Fatalf("windowed pipeline gave %v", v)
		}
	}
	if _, _, _, err := pl.ApplyHU(&imgx.HU{Rows: 20, Cols: 20, Pix: make([]int16, 400)}, m, augment.NewRand(1, "w")); !errors.Is(err, augment.ErrWindowed) {
		t.Fatalf("ApplyHU on a windowed pipeline: %v, want ErrWindowed", err)
	}
}

func TestApplyHURoundTrips(t *testing.T) {
	hu := imgx.NewHU(30, 20)
	for i := range hu.Pix {
		hu.Pix[i] = int16(i*37%3000 - 1024)
	}
	pl := &augment.Pipeline{Steps: []augment.Transform{augment.Flip{H: 1, V: 1}}}
	out, _, p, err := pl.ApplyHU(hu, nil, augment.NewRand(0, ""))
	if err != nil {
		t.Fatal(err)
	}
	if !p.FlipH || !p.FlipV {
		t.Fatalf("flip params %+v", p)
	}
	for i, v := range out.Pix {
		if v != hu.Pix[len(hu.Pix)-1-i] {
			t.Fatalf("pixel %d = %d, want %d", i, v, hu.Pix[len(hu.Pix)-1-i])
		}
	}
	f := &imgx.Float{Rows: 1, Cols: 5, Pix: []float32{-2.5, 2.5, 1e9, -1e9, float32(math.NaN())}}
	if got := augment.HUFromFloat(f).Pix; !slices.Equal(got, []int16{-3, 3, 32767, -32768, augment.AirHU}) {
		t.Fatalf("HUFromFloat = %v", got)
	}
}

func TestShapeErrors(t *testing.T) {
	img, _ := noise(10, 10, 1)
	pl, _ := augment.New(augment.Default(16, augment.LungWindow))
	for name, c := range map[string]struct {
		img *imgx.Float
		m   *imgx.Mask
	}{
		"mask size": {img, imgx.NewMask(10, 11)},
		"nil image": {nil, nil},
		"short pix": {&imgx.Float{Rows: 10, Cols: 10, Pix: make([]float32, 99)}, nil},
	} {
		if _, _, _, err := pl.Apply(c.img, c.m, augment.NewRand(0, "")); !errors.Is(err, augment.ErrShape) {
			t.Errorf("%s: err = %v, want ErrShape", name, err)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	ok := augment.LungWindow
	cases := []struct {
		name string
		cfg  augment.Config
		bad  bool
	}{
		{"default", augment.Default(256, ok), false},
		{"no resize", augment.Default(0, ok), false},
		{"empty", augment.Config{Window: ok}, false},
		{"zero window", augment.Config{Steps: []augment.Step{{Op: "flip"}}}, true},
		{"unknown op", augment.Config{Window: ok, Steps: []augment.Step{{Op: "shear"}}}, true},
		{"angle", augment.Config{Window: ok, Steps: []augment.Step{{Op: "rotate", MaxDeg: 270}}}, true},
		{"nan angle", augment.Config{Window: ok, Steps: []augment.Step{{Op: "rotate", MaxDeg: math.NaN()}}}, true},
		{"flip prob", augment.Config{Window: ok, Steps: []augment.Step{{Op: "flip", H: 1.5}}}, true},
		{"sigma 0", augment.Config{Window: ok, Steps: []augment.Step{{Op: "elastic", Alpha: 3}}}, true},
		{"alpha 0", augment.Config{Window: ok, Steps: []augment.Step{{Op: "elastic"}}}, false},
		{"contrast 1", augment.Config{Window: ok, Steps: []augment.Step{{Op: "intensity", Contrast: 1}}}, true},
		{"resize 0", augment.Config{Window: ok, Steps: []augment.Step{{Op: "resize"}}}, true},
		{"resize huge", augment.Config{Window: ok, Steps: []augment.Step{{Op: "resize", Rows: 1 << 20, Cols: 4}}}, true},
		{"two windows", augment.Config{Window: ok, Steps: []augment.Step{{Op: "window"}, {Op: "window"}}}, true},
	}
	for _, c := range cases {
		_, err := augment.New(c.cfg)
		if c.bad != (err != nil) {
			t.Errorf("%s: err = %v, want error %v", c.name, err, c.bad)
		}
		if err != nil && !errors.Is(err, augment.ErrConfig) {
			t.Errorf("%s: err = %v, want ErrConfig", c.name, err)
		}
	}
}

func TestDisplacementFieldStatistics(t *testing.T) {
	// The smoothed field's spread follows α/(σ·sqrt(12π)) away from the
	// borders; check within 25%.
	const n = 256
	for _, c := range []struct{ alpha, sigma float64 }{{200, 10}, {34, 4}} {
		dx, dy := augment.DisplacementField(n, n, c.alpha, c.sigma, rand.New(rand.NewPCG(1, 2)))
		var s, s2, k float64
		for y := 64; y < n-64; y++ {
			for x := 64; x < n-64; x++ {
				for _, v := range []float32{dx[y*n+x], dy[y*n+x]} {
					s += float64(v)
					s2 += float64(v) * float64(v)
					k++
				}
			}
		}
		std := math.Sqrt(s2/k - (s/k)*(s/k))
		want := c.alpha / (c.sigma * math.Sqrt(12*math.Pi))
		if math.Abs(std-want)/want > 0.25 {
			t.Errorf("α=%g σ=%g: field std %.3f px, want about %.3f", c.alpha, c.sigma, std, want)
		}
	}
}

// TestWindowResizeMatchesPreprocess checks that a pipeline of a window
// step then a resize gives the preprocess stage's model input bit for
// bit, so a training path built on augment (window first, then the
// geometric steps) feeds a model what serving feeds it.
func TestWindowResizeMatchesPreprocess(t *testing.T) {
	card := &model.Card{Input: model.Shape{Channels: 1, Height: 64, Width: 64},
		Normalisation: model.Normalisation{Kind: "window", Center: -600, Width: 1500}}
	hu := imgx.NewHU(100, 90)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range hu.Pix {
		hu.Pix[i] = int16(r.IntN(3000) - 1500)
	}
	pl, err := augment.New(augment.Config{
		Window: augment.Window{Center: card.Normalisation.Center, Width: card.Normalisation.Width},
		Steps:  []augment.Step{{Op: "window"}, {Op: "resize", Rows: 64, Cols: 64}},
	})
	if err != nil {
		t.Fatal(err)
	}
	got, _, _, err := pl.Apply(augment.FloatFromHU(hu), nil, augment.NewRand(0, ""))
	if err != nil {
		t.Fatal(err)
	}
	if want := preprocess.Input(hu, card); !slices.Equal(got.Pix, want) {
		t.Fatal("window+resize differs from preprocess.Input")
	}
}
