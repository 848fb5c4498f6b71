package segment

import (
	"context"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/segment/internal/segtest"
	"google.golang.org/protobuf/proto"
)

// rowModel ignores its input: every window's probability is the row
// within the window divided by its height, so where windows overlap the
// averaged map shows which windows covered a pixel.
type rowModel struct{ h, w int }

func (m rowModel) Provider() string { return "test" }
func (m rowModel) Run(in []float32, n int) ([]float32, error) {
	out := make([]float32, len(in))
	for i := range out {
		out[i] = float32(i%(m.h*m.w)/m.w) / float32(m.h)
	}
	return out, nil
}

func TestTileOrigins(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want []int
	}{{128, []int{0}}, {129, []int{0, 1}}, {200, []int{0, 72}}, {225, []int{0, 96, 97}}, {512, []int{0, 96, 192, 288, 384}}} {
		if got := TileOrigins(tc.n, 128, 96); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("TileOrigins(%d, 128, 96) = %v, want %v", tc.n, got, tc.want)
		}
	}
}

// TestTileBlendsOverlaps tiles a 40×10 slice with 16×16 windows at
// stride 12: rows are covered by windows starting at 0, 12 and 24 (40−16),
// columns by one window over the slice padded to 16 (3 columns left). Each
// native pixel must be the mean of the window rows it fell on, weighted by
// a Gaussian of standard deviation 2 (16/8) around the window's centre row
// 7.5 (the column weight is the same for every window and cancels).
func TestTileBlendsOverlaps(t *testing.T) {
	hu := imgx.NewHU(40, 10)
	got, err := Tile(rowModel{16, 16}, segtest.Crop(16), hu, 12, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 40*10 {
		t.Fatalf("%d values for 40×10", len(got))
	}
	for y := 0; y < 40; y++ {
		var sum, total float64
		for _, y0 := range []int{0, 12, 24} {
			if y >= y0 && y < y0+16 {
				d := (float64(y-y0) - 7.5) / 2
				g := math.Exp(-d * d / 2)
				sum += g * float64(y-y0) / 16
				total += g
			}
		}
		want := sum / total
		for x := 0; x < 10; x++ {
			if v := float64(got[y*10+x]); math.Abs(v-want) > 1e-5 {
				t.Fatalf("(%d,%d) = %v, want %v", y, x, v, want)
			}
		}
	}
}

// TestTileWeights checks the blending weights: 1 at the centre of an odd
// window, symmetric, falling towards the edges, never 0.
func TestTileWeights(t *testing.T) {
	w := TileWeights(17, 9)
	if c := w[8*9+4]; math.Abs(float64(c)-1) > 1e-6 {
		t.Fatalf("centre weight %v", c)
	}
	for y := 0; y < 17; y++ {
		for x := 0; x < 9; x++ {
			v := w[y*9+x]
			if v <= 0 || v != w[(16-y)*9+(8-x)] {
				t.Fatalf("(%d,%d) = %v, mirror %v", y, x, v, w[(16-y)*9+(8-x)])
			}
			if x > 4 && v >= w[y*9+x-1] {
				t.Fatalf("(%d,%d) = %v not below (%d,%d) = %v", y, x, v, y, x-1, w[y*9+x-1])
			}
		}
	}
	if e := TileWeights(128, 128)[64]; e <= 0 || e > 1e-3 {
		t.Fatalf("128² weight at the middle of the top edge %v", e)
	}
}

// TestTileIsNativeGrid checks with an echo model (probability = input)
// that every pixel of a tiled slice, with and without flip TTA, comes back
// as its own normalised HU: windows and padding line up with the slice.
func TestTileIsNativeGrid(t *testing.T) {
	c := segtest.Crop(16)
	for _, sz := range [][2]int{{40, 10}, {16, 16}, {7, 33}, {50, 61}} {
		hu := imgx.NewHU(sz[0], sz[1])
		for i := range hu.Pix {
			hu.Pix[i] = int16((i*37)%3000 - 1500)
		}
		for _, tta := range []bool{false, true} {
			got, err := Tile(&segtest.EchoModel{}, c, hu, 12, tta)
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range hu.Pix {
				if w := c.Normalisation.Apply(float64(v)); math.Abs(float64(got[i]-w)) > 1e-6 {
					t.Fatalf("%v tta %v: pixel %d = %v, want %v", sz, tta, i, got[i], w)
				}
			}
		}
	}
}

// TestProcessCropModel runs the segment stage of a crop model: an input
// with a placement runs as a window and passes the placement on; one
// without runs tiled over its native HU and is published at the native
// grid, or at 256 per side at most; one with neither fails permanently.
func TestProcessCropModel(t *testing.T) {
	c := segtest.Crop(128)
	st := &Stage{Card: c, Model: &segtest.EchoModel{}}
	ctx := context.Background()
	place := &lungsegv1.Region{Y0: 40, X0: 30, Height: 50, Width: 70}
	in := &lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "s", ReplayId: "r", Rows: 50, Cols: 70}, Model: "c",
		Channels: 1, Height: 128, Width: 128, Tensor: imgx.EncodeFloat32(make([]float32, 128*128)), Placement: place}
	out := runStage(t, st, in)
	if out.Height != 128 || out.Width != 128 || !proto.Equal(out.Placement, place) {
		t.Fatalf("placed input: output %d×%d placement %v", out.Height, out.Width, out.Placement)
	}
	for _, tc := range []struct{ rows, cols, h, w int }{{200, 150, 200, 150}, {300, 100, 256, 100}, {512, 512, 256, 256}} {
		hu := imgx.NewHU(tc.rows, tc.cols)
		for i := range hu.Pix {
			hu.Pix[i] = int16(i%1000 - 500)
		}
		in := &lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "big", ReplayId: "r", Rows: int32(tc.rows), Cols: int32(tc.cols)},
			Model: "c", Channels: 1, Height: 128, Width: 128, NativeHu: hu.EncodeInt16()}
		out := runStage(t, st, in)
		if int(out.Height) != tc.h || int(out.Width) != tc.w || out.Placement != nil || out.Threshold != 0.5 {
			t.Fatalf("%d×%d: output %d×%d placement %v threshold %v, want %d×%d", tc.rows, tc.cols, out.Height, out.Width, out.Placement, out.Threshold, tc.h, tc.w)
		}
		if tc.h == tc.rows && tc.w == tc.cols {
			prob, err := imgx.DecodeFloat32(tc.h*tc.w, out.Prob)
			if err != nil {
				t.Fatal(err)
			}
			for i, v := range hu.Pix {
				if w := c.Normalisation.Apply(float64(v)); math.Abs(float64(prob[i]-w)) > 1e-6 {
					t.Fatalf("%d×%d: pixel %d = %v, want %v", tc.rows, tc.cols, i, prob[i], w)
				}
			}
		}
	}
	b, _ := proto.Marshal(&lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "none", ReplayId: "r", Rows: 300, Cols: 300},
		Model: "c", Channels: 1, Height: 128, Width: 128})
	err := st.Process(ctx, &stage.Msg{Data: b}, &segtest.Emitted{})
	if !stage.IsPermanent(err) || !strings.Contains(err.Error(), "without native HU") {
		t.Fatalf("input without placement or native HU: %v", err)
	}
}

func runStage(t *testing.T, st *Stage, in *lungsegv1.ModelInput) *lungsegv1.ModelOutput {
	t.Helper()
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var e segtest.Emitted
	if err := st.Process(context.Background(), &stage.Msg{Data: b}, &e); err != nil {
		t.Fatal(err)
	}
	if len(e.Outs) != 1 {
		t.Fatalf("%d outputs", len(e.Outs))
	}
	var out lungsegv1.ModelOutput
	if err := proto.Unmarshal(e.Outs[0].Data, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// centreBright is a verifier that accepts a patch whose centre pixel of
// the HU channel is above 0.8 and counts its calls.
type centreBright struct {
	p, calls, patches int
}

func (c *centreBright) Run(in []float32, n int) ([]float32, error) {
	c.calls++
	c.patches += n
	out := make([]float32, n)
	for k := range out {
		if in[k*2*c.p*c.p+c.p/2*c.p+c.p/2] > 0.8 {
			out[k] = 1
		}
	}
	return out, nil
}

// TestProcessCropModelVerifier: with a verifier, a tiled slice's rejected
// component is lowered under the threshold and the accepted one kept;
// components outside the lung field are not judged; a bare crop (an
// input with a placement) is not verified.
func TestProcessCropModelVerifier(t *testing.T) {
	c := segtest.Crop(128)
	c.Verifier = &model.Verifier{Patch: 16, Normalisation: c.Normalisation, Threshold: 0.5}
	v := &centreBright{p: 16}
	st := &Stage{Card: c, Model: &segtest.EchoModel{}, Verifier: v}
	const rows, cols = 200, 150
	hu := imgx.NewHU(rows, cols)
	for i := range hu.Pix {
		hu.Pix[i] = -1000 // 0.256 after the card's window: under the threshold
	}
	set := func(y0, x0, n int, val int16) {
		for y := y0; y < y0+n; y++ {
			for x := x0; x < x0+n; x++ {
				hu.Pix[y*cols+x] = val
			}
		}
	}
	set(40, 40, 6, 1500)  // 0.866: accepted
	set(120, 100, 6, 600) // 0.646: above the threshold, rejected
	set(180, 10, 4, 1500) // outside the field below: not judged
	field := imgx.NewMask(rows, cols)
	for i := 0; i < 170*cols; i++ {
		field.Pix[i] = 1
	}
	in := &lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "big", ReplayId: "r", Rows: rows, Cols: cols},
		Model: "c", Channels: 1, Height: 128, Width: 128, NativeHu: hu.EncodeInt16(),
		FieldBits: field.PackBits(), HasField: true}
	out := runStage(t, st, in)
	prob, err := imgx.DecodeFloat32(rows*cols, out.Prob)
	if err != nil {
		t.Fatal(err)
	}
	if v.patches != 2 {
		t.Errorf("verifier saw %d patches, want the 2 components inside the field", v.patches)
	}
	for i, h := range hu.Pix {
		w := c.Normalisation.Apply(float64(h))
		switch {
		case h == 600:
			if prob[i] > 0.25+1e-6 {
				t.Fatalf("rejected pixel %d = %v, want ≤ 0.25", i, prob[i])
			}
		case math.Abs(float64(prob[i]-w)) > 1e-6:
			t.Fatalf("pixel %d = %v, want %v (unchanged)", i, prob[i], w)
		}
	}
	// a bare crop with a placement is one candidate: not verified
	calls := v.calls
	place := &lungsegv1.Region{Y0: 40, X0: 30, Height: 50, Width: 70}
	runStage(t, st, &lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "s", ReplayId: "r", Rows: 50, Cols: 70}, Model: "c",
		Channels: 1, Height: 128, Width: 128, Tensor: imgx.EncodeFloat32(make([]float32, 128*128)), Placement: place})
	if v.calls != calls {
		t.Errorf("the verifier ran on a bare crop")
	}
}
