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
	"github.com/lungseg/lungseg/segment/internal/segtest"
	"google.golang.org/protobuf/proto"
)

func TestRunWindowsBatches(t *testing.T) {
	hu := imgx.NewHU(10, 10)
	for i := range hu.Pix {
		hu.Pix[i] = int16(10 * i)
	}
	crop := segtest.Crop(4)
	wins := []cascade.Window{{Y0: -2, X0: 0, H: 4, W: 4}, {Y0: 3, X0: 3, H: 4, W: 4}, {Y0: 8, X0: 8, H: 4, W: 4}}
	for _, tc := range []struct {
		fixed int
		want  []int
	}{{0, []int{3}}, {1, []int{1, 1, 1}}, {2, []int{2, 2}}} {
		m := &segtest.EchoModel{Fixed: tc.fixed}
		got, err := RunWindows(m, crop, hu, wins)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(m.Batches, tc.want) {
			t.Errorf("fixed batch %d: runs of %v, want %v", tc.fixed, m.Batches, tc.want)
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
	if _, err := RunWindows(&segtest.EchoModel{}, crop, hu, []cascade.Window{{H: 3, W: 4}}); err == nil {
		t.Error("window of the wrong size accepted")
	}
	if got, err := RunWindows(&segtest.EchoModel{}, crop, hu, nil); err != nil || got != nil {
		t.Errorf("no windows: %v, %v", got, err)
	}
}

// TestProcessRefineOutput: the detector runs once for an input that asks
// for its cascade, and its output carries what the refine stage needs (the
// native HU, the refine flag); a cascade selected alone gives the
// detector's output marked refine_only, which score leaves unscored.
// segment/refine's tests run refine on these outputs.
func TestProcessRefineOutput(t *testing.T) {
	const rows, cols, size = 32, 32, 16
	det := &model.Card{Name: "d", Version: "1", Threshold: 0.5, Input: model.Shape{Channels: 1, Height: size, Width: size}}
	hu := imgx.NewHU(rows, cols)
	for i := range hu.Pix {
		hu.Pix[i] = int16(i)
	}
	input := func(sel string, refine bool, native []byte) []byte {
		b, err := proto.Marshal(&lungsegv1.ModelInput{Meta: &lungsegv1.SliceMeta{Id: "s", Rows: rows, Cols: cols}, Model: sel,
			Channels: 1, Height: size, Width: size, Tensor: imgx.EncodeFloat32(make([]float32, size*size)), NativeHu: native, Refine: refine})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		sel                 string
		refine              bool
		native              []byte
		wantRefine, wantOnl bool
	}{
		{"d+crop", false, hu.EncodeInt16(), true, true},
		{"d", true, hu.EncodeInt16(), true, false},
		{"d", false, nil, false, false},
	} {
		m := &segtest.EchoModel{}
		st := &Stage{Card: det, Model: m}
		var e segtest.Emitted
		if err := st.Process(context.Background(), &stage.Msg{Data: input(tc.sel, tc.refine, tc.native)}, &e); err != nil {
			t.Fatal(err)
		}
		if len(e.Outs) != 1 || len(m.Batches) != 1 || e.Outs[0].Subject != "lung.masks.d" {
			t.Fatalf("%s: %d outputs after %d runs", tc.sel, len(e.Outs), len(m.Batches))
		}
		var o lungsegv1.ModelOutput
		if err := proto.Unmarshal(e.Outs[0].Data, &o); err != nil {
			t.Fatal(err)
		}
		if o.Model != "d" || o.Refine != tc.wantRefine || o.RefineOnly != tc.wantOnl || o.Cascade || len(o.Windows) != 0 ||
			string(o.NativeHu) != string(tc.native) {
			t.Errorf("%s (refine %v): output model %s refine %v refine_only %v cascade %v, %d bytes of native HU",
				tc.sel, tc.refine, o.Model, o.Refine, o.RefineOnly, o.Cascade, len(o.NativeHu))
		}
	}
	st := &Stage{Card: det, Model: &segtest.EchoModel{}}
	for name, tc := range map[string]struct {
		data   []byte
		needle string
	}{
		"no native HU":      {input("d+crop", false, nil), "without native HU"},
		"short HU":          {input("d+crop", false, make([]byte, 10)), "native HU"},
		"refine, no native": {input("d", true, nil), "without native HU"},
		"refine, short":     {input("d", true, make([]byte, 10)), "native HU"},
	} {
		err := st.Process(context.Background(), &stage.Msg{Data: tc.data}, &segtest.Emitted{})
		if !stage.IsPermanent(err) || !strings.Contains(err.Error(), tc.needle) {
			t.Errorf("%s: got %v, want a permanent error mentioning %q", name, err, tc.needle)
		}
	}
}
