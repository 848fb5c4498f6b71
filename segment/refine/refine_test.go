package refine

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/segment"
	"github.com/lungseg/lungseg/segment/cascade"
	"github.com/lungseg/lungseg/segment/internal/segtest"
	"google.golang.org/protobuf/proto"
)

// detect runs the segment stage of det (an echo model: its map is its
// input) on one input and returns the output it publishes.
func detect(t *testing.T, det *model.Card, in *lungsegv1.ModelInput) []byte {
	t.Helper()
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var e segtest.Emitted
	if err := (&segment.Stage{Card: det, Model: &segtest.EchoModel{}}).Process(context.Background(), &stage.Msg{Data: b}, &e); err != nil {
		t.Fatal(err)
	}
	if len(e.Outs) != 1 {
		t.Fatalf("segment published %d outputs", len(e.Outs))
	}
	return e.Outs[0].Data
}

// TestProcessCascade runs segment and refine with echo models: the
// detector's map is its input, so a bright square in the input is the
// only candidate, and the refined map inside the crop window is the crop
// model's output there.
func TestProcessCascade(t *testing.T) {
	const rows, cols, size = 32, 32, 16
	det := &model.Card{Name: "d", Version: "1", Threshold: 0.5, Input: model.Shape{Channels: 1, Height: size, Width: size}}
	crop := segtest.Crop(20)
	hu := imgx.NewHU(rows, cols)
	for i := range hu.Pix {
		hu.Pix[i] = int16(i)
	}
	tensor := make([]float32, size*size)
	for y := 4; y < 6; y++ {
		for x := 8; x < 10; x++ {
			tensor[y*size+x] = 0.9 // native rows 8..11, cols 16..19
		}
	}
	input := func(sel string, refine bool, native []byte) *lungsegv1.ModelInput {
		return &lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols}, Model: sel,
			Channels: 1, Height: size, Width: size, Tensor: imgx.EncodeFloat32(tensor), NativeHu: native, Refine: refine}
	}
	cm := &segtest.EchoModel{}
	st := &Stage{Detector: "d", Crop: crop, CropModel: cm}
	var e segtest.Emitted
	for _, in := range []*lungsegv1.ModelInput{input("d+crop", false, hu.EncodeInt16()), input("d", true, hu.EncodeInt16()), input("d", false, nil)} {
		if err := st.Process(context.Background(), &stage.Msg{Data: detect(t, det, in)}, &e); err != nil {
			t.Fatal(err)
		}
	}
	// Both detector outputs that ask for the cascade are refined; the
	// plain one is left to score.
	if len(e.Outs) != 2 {
		t.Fatalf("%d outputs", len(e.Outs))
	}
	// The native map's component spans rows 8..11 and cols 16..19 (the
	// bilinear upsampling's edge pixels next to them are 0.9/4 = 0.225,
	// under the 0.25 detect threshold), so the window centres on (9, 17).
	want := cascade.Window{Y0: 9 - 10, X0: 17 - 10, H: 20, W: 20}
	crops := cascade.Crop(hu, want, crop.Normalisation)
	for k, out := range e.Outs {
		var o lungsegv1.ModelOutput
		if err := proto.Unmarshal(out.Data, &o); err != nil {
			t.Fatal(err)
		}
		if out.Subject != "lung.masks.d+crop" || !o.Cascade || o.Model != "d+crop" || o.ModelVersion != "1" || o.CropModel != "c" || o.CropModelVersion != "2" ||
			o.Threshold != 0.5 || len(o.Windows) != 1 || o.Refine || len(o.NativeHu) != 0 || o.Height != rows || o.Width != cols {
			t.Fatalf("output %d on %s: %+v", k, out.Subject, &o)
		}
		w := o.Windows[0]
		if got := (cascade.Window{Y0: int(w.Y0), X0: int(w.X0), H: int(w.Height), W: int(w.Width)}); got != want {
			t.Fatalf("window %+v, want %+v", got, want)
		}
		// The refined map: the crop model's output inside the window,
		// the detector's map capped at 0.5 outside.
		refined, err := imgx.DecodeFloat32(rows*cols, o.Prob)
		if err != nil {
			t.Fatal(err)
		}
		for y := 0; y < rows; y++ {
			for x := 0; x < cols; x++ {
				wy, wx := y-want.Y0, x-want.X0
				in := wy >= 0 && wy < want.H && wx >= 0 && wx < want.W
				if in && refined[y*cols+x] != crops[wy*want.W+wx] {
					t.Fatalf("pixel (%d,%d) = %v, not the crop model's output %v", y, x, refined[y*cols+x], crops[wy*want.W+wx])
				}
				if !in && refined[y*cols+x] > 0.5 {
					t.Fatalf("pixel (%d,%d) outside the window = %v, over the threshold", y, x, refined[y*cols+x])
				}
			}
		}
	}
	if !reflect.DeepEqual(cm.Batches, []int{1, 1}) {
		t.Fatalf("crop model runs %v", cm.Batches)
	}

	detOut := func(o *lungsegv1.ModelOutput) []byte {
		b, err := proto.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := &lungsegv1.ModelOutput{Meta: &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols}, Model: "d", Height: size, Width: size,
		Prob: imgx.EncodeFloat32(tensor), Refine: true, NativeHu: hu.EncodeInt16()}
	mod := func(f func(o *lungsegv1.ModelOutput)) []byte {
		o := proto.Clone(good).(*lungsegv1.ModelOutput)
		f(o)
		return detOut(o)
	}
	for name, tc := range map[string]struct {
		st     *Stage
		data   []byte
		needle string
	}{
		"no crop model":  {&Stage{Detector: "d"}, detOut(good), "no crop model"},
		"no native HU":   {st, mod(func(o *lungsegv1.ModelOutput) { o.NativeHu = nil }), "without native HU"},
		"short HU":       {st, mod(func(o *lungsegv1.ModelOutput) { o.NativeHu = make([]byte, 10) }), "native HU"},
		"other detector": {st, mod(func(o *lungsegv1.ModelOutput) { o.Model = "e" }), "reached the refine worker"},
		"short map":      {st, mod(func(o *lungsegv1.ModelOutput) { o.Prob = o.Prob[:8] }), "detector map"},
		"garbage":        {st, []byte{0xff, 0xff}, "decoding"},
	} {
		err := tc.st.Process(context.Background(), &stage.Msg{Data: tc.data}, &segtest.Emitted{})
		if !stage.IsPermanent(err) || !strings.Contains(err.Error(), tc.needle) {
			t.Errorf("%s: got %v, want a permanent error mentioning %q", name, err, tc.needle)
		}
	}
}

// TestProcessCascadeField: cascade candidates come only from inside the
// output's lung field, and the refined output carries the field on.
func TestProcessCascadeField(t *testing.T) {
	const rows, cols, size = 32, 32, 16
	crop := segtest.Crop(20)
	hu := imgx.NewHU(rows, cols)
	tensor := make([]float32, size*size)
	for _, c := range [][2]int{{4, 8}, {11, 3}} { // native rows 8..11, cols 16..19; rows 22..25, cols 6..9
		for y := c[0]; y < c[0]+2; y++ {
			for x := c[1]; x < c[1]+2; x++ {
				tensor[y*size+x] = 0.9
			}
		}
	}
	field := imgx.NewMask(rows, cols) // the lower half: only the second square
	for i := rows / 2 * cols; i < rows*cols; i++ {
		field.Pix[i] = 1
	}
	output := func(bits []byte, has bool) []byte {
		b, err := proto.Marshal(&lungsegv1.ModelOutput{Meta: &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols}, Model: "d",
			Height: size, Width: size, Prob: imgx.EncodeFloat32(tensor), NativeHu: hu.EncodeInt16(), Refine: true,
			FieldBits: bits, HasField: has})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	st := &Stage{Detector: "d", Crop: crop, CropModel: &segtest.EchoModel{}}
	for _, tc := range []struct {
		name  string
		has   bool
		wins  int
		first int // the first window's centre row
	}{
		{"cascade, field", true, 1, 23},
		{"cascade, no field", false, 2, 9},
	} {
		var bits []byte
		if tc.has {
			bits = field.PackBits()
		}
		var e segtest.Emitted
		if err := st.Process(context.Background(), &stage.Msg{Data: output(bits, tc.has)}, &e); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var o lungsegv1.ModelOutput
		if err := proto.Unmarshal(e.Outs[0].Data, &o); err != nil {
			t.Fatal(err)
		}
		if o.HasField != tc.has || string(o.FieldBits) != string(bits) {
			t.Errorf("%s: output has_field %v with %d bytes", tc.name, o.HasField, len(o.FieldBits))
		}
		if len(o.Windows) != tc.wins {
			t.Fatalf("%s: %d windows, want %d", tc.name, len(o.Windows), tc.wins)
		}
		if tc.wins > 0 {
			if w := o.Windows[0]; int(w.Y0)+10 != tc.first {
				t.Errorf("%s: first window centred on row %d, want %d", tc.name, w.Y0+10, tc.first)
			}
		}
	}
	err := st.Process(context.Background(), &stage.Msg{Data: output([]byte{1, 2, 3}, true)}, &segtest.Emitted{})
	if !stage.IsPermanent(err) || !strings.Contains(err.Error(), "lung field") {
		t.Fatalf("bad field bits: %v", err)
	}
}

// TestMergedMap is score's hand-made cascade (score's TestScoreCascade
// scores this map): a uniform 0.9 detector map, two overlapping crop
// windows, one reaching past the top and right edges, merged as refine
// merges them. The expected refined map is written out pixel by pixel.
func TestMergedMap(t *testing.T) {
	const rows, cols = 6, 8
	native := make([]float32, rows*cols)
	for i := range native {
		native[i] = 0.9
	}
	w1 := []float32{ // y0 -1, x0 5: rows 1..2, cols 0..2 land on image rows 0..1, cols 5..7
		0.99, 0.99, 0.99, 0.99,
		0.2, 0.6, 0.7, 0.1,
		0.3, 0.4, 0.8, 0.95,
	}
	w2 := []float32{ // y0 0, x0 4: overlaps w1 at rows 0..1, cols 5..6
		0.1, 0.65, 0.1,
		0.3, 0.3, 0.3,
	}
	got, err := cascade.Merge(native, rows, cols, []cascade.Window{{Y0: -1, X0: 5, H: 3, W: 4}, {Y0: 0, X0: 4, H: 2, W: 3}},
		[][]float32{w1, w2}, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	c := float32(0.5) // uncovered: min(0.9, 0.5)
	want := []float32{
		c, c, c, c, 0.1, 0.65, 0.6, 0.7,
		c, c, c, c, 0.3, 0.3, 0.4, 0.8,
		c, c, c, c, c, c, c, c,
		c, c, c, c, c, c, c, c,
		c, c, c, c, c, c, c, c,
		c, c, c, c, c, c, c, c,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("refined map\n%v\nwant\n%v", got, want)
	}
	for name, p := range map[string][]float32{"short": make([]float32, 3), "none": nil} {
		if _, err := cascade.Merge(native, rows, cols, []cascade.Window{{H: 2, W: 2}}, [][]float32{p}, 0.5); err == nil {
			t.Errorf("%s window accepted", name)
		}
	}
}

// constVerifier answers p for every patch and counts the patches.
type constVerifier struct {
	p       float32
	patches int
}

func (c *constVerifier) Run(in []float32, n int) ([]float32, error) {
	c.patches += n
	out := make([]float32, n)
	for i := range out {
		out[i] = c.p
	}
	return out, nil
}

// TestRefineVerifier: on a slice larger than the crop window the refined
// map's components go to the verifier; a rejected one ends at most at
// half the threshold, an accepted one is unchanged; a slice that fits the
// window (a bare crop) is not verified.
func TestRefineVerifier(t *testing.T) {
	const rows, cols, size = 32, 32, 16
	det := &model.Card{Name: "d", Version: "1", Threshold: 0.5, Input: model.Shape{Channels: 1, Height: size, Width: size}}
	hu := imgx.NewHU(rows, cols)
	for i := range hu.Pix {
		hu.Pix[i] = int16(i) // 0.5..0.75 after the crop card's window: all above its threshold
	}
	tensor := make([]float32, size*size)
	tensor[4*size+8] = 0.9
	in := &lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols}, Model: "d+crop",
		Channels: 1, Height: size, Width: size, Tensor: imgx.EncodeFloat32(tensor), NativeHu: hu.EncodeInt16()}
	var o lungsegv1.ModelOutput
	if err := proto.Unmarshal(detect(t, det, in), &o); err != nil {
		t.Fatal(err)
	}
	prob, err := imgx.DecodeFloat32(int(o.Height*o.Width), o.Prob)
	if err != nil {
		t.Fatal(err)
	}
	refined := func(window int, v *constVerifier) []float32 {
		crop := segtest.Crop(window)
		crop.Verifier = &model.Verifier{Patch: 8, Normalisation: crop.Normalisation, Threshold: 0.5}
		st := &Stage{Detector: "d", Crop: crop, CropModel: &segtest.EchoModel{}, Verifier: v}
		out, err := st.Refine(&o, prob, hu)
		if err != nil {
			t.Fatal(err)
		}
		r, err := imgx.DecodeFloat32(rows*cols, out.Prob)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	keep := &constVerifier{p: 0.9}
	kept := refined(20, keep)
	reject := &constVerifier{p: 0.1}
	rejected := refined(20, reject)
	if keep.patches == 0 || keep.patches != reject.patches {
		t.Fatalf("verifier saw %d and %d patches, want the same components, at least one", keep.patches, reject.patches)
	}
	above := 0
	for i := range kept {
		if kept[i] > 0.5 {
			above++
			if rejected[i] > 0.25+1e-6 {
				t.Fatalf("pixel %d: %v after rejection, want ≤ 0.25", i, rejected[i])
			}
		} else if rejected[i] != kept[i] {
			t.Fatalf("pixel %d under the threshold changed: %v → %v", i, kept[i], rejected[i])
		}
	}
	if above == 0 {
		t.Fatal("no refined pixel above the threshold")
	}
	bare := &constVerifier{p: 0.1}
	refined(40, bare)
	if bare.patches != 0 {
		t.Errorf("a slice inside the crop window went to the verifier (%d patches)", bare.patches)
	}
}
