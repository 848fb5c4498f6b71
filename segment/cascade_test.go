package segment

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/segment/cascade"
	"google.golang.org/protobuf/proto"
)

// echoModel returns its input as probabilities and records each batch.
type echoModel struct {
	fixed   int
	batches []int
}

func (m *echoModel) Provider() string { return "test" }
func (m *echoModel) FixedBatch() int  { return m.fixed }
func (m *echoModel) Run(in []float32, n int) ([]float32, error) {
	m.batches = append(m.batches, n)
	return append([]float32(nil), in...), nil
}

type emitted struct{ outs []stage.Out }

func (e *emitted) Emit(_ context.Context, o stage.Out) error { e.outs = append(e.outs, o); return nil }
func (e *emitted) Fail(context.Context, stage.Failure) error { return nil }

func testCrop(window int) *model.Card {
	return &model.Card{Name: "c", Version: "2", Task: model.TaskCrop, Detector: "d", Threshold: 0.5,
		Input:         model.Shape{Channels: 1, Height: window, Width: window},
		Normalisation: model.Normalisation{Kind: "window", Center: 0, Width: 4096},
		Cascade:       &model.Cascade{Window: window, DetectThreshold: 0.25, MaxCandidates: 8}}
}

func TestRunWindowsBatches(t *testing.T) {
	hu := imgx.NewHU(10, 10)
	for i := range hu.Pix {
		hu.Pix[i] = int16(10 * i)
	}
	crop := testCrop(4)
	wins := []cascade.Window{{Y0: -2, X0: 0, H: 4, W: 4}, {Y0: 3, X0: 3, H: 4, W: 4}, {Y0: 8, X0: 8, H: 4, W: 4}}
	for _, tc := range []struct {
		fixed int
		want  []int
	}{{0, []int{3}}, {1, []int{1, 1, 1}}, {2, []int{2, 2}}} {
		m := &echoModel{fixed: tc.fixed}
		got, err := RunWindows(m, crop, hu, wins)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(m.batches, tc.want) {
			t.Errorf("fixed batch %d: runs of %v, want %v", tc.fixed, m.batches, tc.want)
		}
		if len(got) != len(wins) {
			t.Fatalf("fixed batch %d: %d outputs", tc.fixed, len(got))
		}
		for k, w := range wins {
			if !reflect.DeepEqual(got[k], cascade.Crop(hu, w, crop.Normalisation)) {
				t.Errorf("fixed batch %d: window %d is not the model's output of its crop", tc.fixed, k)
			}
		}
	}
	if _, err := RunWindows(&echoModel{}, crop, hu, []cascade.Window{{H: 3, W: 4}}); err == nil {
		t.Error("window of the wrong size accepted")
	}
	if got, err := RunWindows(&echoModel{}, crop, hu, nil); err != nil || got != nil {
		t.Errorf("no windows: %v, %v", got, err)
	}
}

// TestProcessCascade runs the stage with echo models: the detector's map
// is its input, so a bright square in the input is the only candidate.
func TestProcessCascade(t *testing.T) {
	const rows, cols, size = 32, 32, 16
	det := &model.Card{Name: "d", Version: "1", Threshold: 0.5, Input: model.Shape{Channels: 1, Height: size, Width: size}}
	crop := testCrop(20)
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
	input := func(sel string, native []byte) []byte {
		b, err := proto.Marshal(&lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols}, Model: sel,
			Channels: 1, Height: size, Width: size, Tensor: imgx.EncodeFloat32(tensor), NativeHu: native})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cm := &echoModel{}
	st := &Stage{Card: det, Model: &echoModel{}, Crop: crop, CropModel: cm}
	var e emitted
	if err := st.Process(context.Background(), &stage.Msg{Data: input("d+crop", hu.EncodeInt16())}, &e); err != nil {
		t.Fatal(err)
	}
	if err := st.Process(context.Background(), &stage.Msg{Data: input("d", nil)}, &e); err != nil {
		t.Fatal(err)
	}
	if len(e.outs) != 2 {
		t.Fatalf("%d outputs", len(e.outs))
	}
	var o lungsegv1.ModelOutput
	if err := proto.Unmarshal(e.outs[0].Data, &o); err != nil {
		t.Fatal(err)
	}
	// The native map's component spans rows 8..11 and cols 16..19 (the
	// bilinear upsampling's edge pixels next to them are 0.9/4 = 0.225,
	// under the 0.25 detect threshold), so the window centres on (9, 17).
	want := cascade.Window{Y0: 9 - 10, X0: 17 - 10, H: 20, W: 20}
	if !o.Cascade || o.Model != "d+crop" || o.CropModel != "c" || o.CropModelVersion != "2" || o.Threshold != 0.5 || len(o.Windows) != 1 {
		t.Fatalf("output %+v", &o)
	}
	w := o.Windows[0]
	if got := (cascade.Window{Y0: int(w.Y0), X0: int(w.X0), H: int(w.Height), W: int(w.Width)}); got != want {
		t.Fatalf("window %+v, want %+v", got, want)
	}
	if p, _ := imgx.DecodeFloat32(400, w.Prob); !reflect.DeepEqual(p, cascade.Crop(hu, want, crop.Normalisation)) {
		t.Fatal("window probabilities are not the crop model's output")
	}
	if !reflect.DeepEqual(cm.batches, []int{1}) {
		t.Fatalf("crop model runs %v", cm.batches)
	}
	o.Reset()
	if err := proto.Unmarshal(e.outs[1].Data, &o); err != nil {
		t.Fatal(err)
	}
	if o.Cascade || len(o.Windows) != 0 || o.Model != "d" {
		t.Fatalf("plain output %+v", &o)
	}

	for name, tc := range map[string]struct {
		st     *Stage
		data   []byte
		needle string
	}{
		"no crop model": {&Stage{Card: det, Model: &echoModel{}}, input("d+crop", hu.EncodeInt16()), "no crop model"},
		"no native HU":  {st, input("d+crop", nil), "without native HU"},
		"short HU":      {st, input("d+crop", make([]byte, 10)), "native HU"},
	} {
		err := tc.st.Process(context.Background(), &stage.Msg{Data: tc.data}, &emitted{})
		if !stage.IsPermanent(err) || !strings.Contains(err.Error(), tc.needle) {
			t.Errorf("%s: got %v, want a permanent error mentioning %q", name, err, tc.needle)
		}
	}
}

// TestProcessCascadeField: cascade candidates come only from inside the
// input's lung field, and every output carries the field on.
func TestProcessCascadeField(t *testing.T) {
	const rows, cols, size = 32, 32, 16
	det := &model.Card{Name: "d", Version: "1", Threshold: 0.5, Input: model.Shape{Channels: 1, Height: size, Width: size}}
	crop := testCrop(20)
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
	input := func(sel string, bits []byte, has bool) []byte {
		b, err := proto.Marshal(&lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols}, Model: sel,
			Channels: 1, Height: size, Width: size, Tensor: imgx.EncodeFloat32(tensor), NativeHu: hu.EncodeInt16(),
			FieldBits: bits, HasField: has})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	st := &Stage{Card: det, Model: &echoModel{}, Crop: crop, CropModel: &echoModel{}}
	for _, tc := range []struct {
		name  string
		sel   string
		has   bool
		wins  int
		first int // the first window's centre row
	}{
		{"cascade, field", "d+crop", true, 1, 23},
		{"cascade, no field", "d+crop", false, 2, 9},
		{"plain, field", "d", true, 0, 0},
	} {
		var bits []byte
		if tc.has {
			bits = field.PackBits()
		}
		var e emitted
		if err := st.Process(context.Background(), &stage.Msg{Data: input(tc.sel, bits, tc.has)}, &e); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var o lungsegv1.ModelOutput
		if err := proto.Unmarshal(e.outs[0].Data, &o); err != nil {
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
	err := st.Process(context.Background(), &stage.Msg{Data: input("d+crop", []byte{1, 2, 3}, true)}, &emitted{})
	if !stage.IsPermanent(err) || !strings.Contains(err.Error(), "lung field") {
		t.Fatalf("bad field bits: %v", err)
	}
}
