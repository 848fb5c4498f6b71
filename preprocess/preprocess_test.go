package preprocess_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/preprocess"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

type cards map[string]*model.Card

func (c cards) Get(n string) (*model.Card, error) {
	if v, ok := c[n]; ok {
		return v, nil
	}
	return nil, model.ErrUnknownModel
}

type recorder struct {
	outs  []stage.Out
	fails []stage.Failure
}

func (r *recorder) Emit(_ context.Context, o stage.Out) error { r.outs = append(r.outs, o); return nil }
func (r *recorder) Fail(_ context.Context, f stage.Failure) error {
	r.fails = append(r.fails, f)
	return nil
}

func card(name string, size int) *model.Card {
	return &model.Card{Name: name, Input: model.Shape{Channels: 1, Height: size, Width: size},
		Normalisation: model.Normalisation{Kind: "window", Center: -600, Width: 1500}, Threshold: 0.5, Output: "logits"}
}

func slice(t *testing.T, rows, cols int, models ...string) ([]byte, *imgx.HU) {
	hu := imgx.NewHU(rows, cols)
	m := imgx.NewMask(rows, cols)
	for i := range hu.Pix {
		hu.Pix[i] = int16(i%2000 - 1200)
		if i%7 == 0 {
			m.Pix[i] = 1
		}
	}
	b, err := proto.Marshal(&lungsegv1.Slice{Meta: &lungsegv1.SliceMeta{Id: "s1", ReplayId: "r", Rows: int32(rows), Cols: int32(cols), Models: models},
		Hu: hu.EncodeInt16(), MaskBits: m.PackBits(), HasMask: true})
	if err != nil {
		t.Fatal(err)
	}
	return b, hu
}

func TestProcessEmitsOneInputPerModel(t *testing.T) {
	st := &preprocess.Stage{Cards: cards{"a": card("a", 32), "b": card("b", 16)}}
	data, hu := slice(t, 64, 64, "a", "b", "a+tta", "nope")
	var r recorder
	if err := st.Process(context.Background(), &stage.Msg{Data: data}, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.outs) != 3 || len(r.fails) != 1 || r.fails[0].Model != "nope" {
		t.Fatalf("outs %d fails %+v", len(r.outs), r.fails)
	}
	wantSubj := []string{bus.ReadySubject("a"), bus.ReadySubject("b"), bus.ReadySubject("a")}
	for i, o := range r.outs {
		var in lungsegv1.ModelInput
		if err := proto.Unmarshal(o.Data, &in); err != nil {
			t.Fatal(err)
		}
		if o.Subject != wantSubj[i] || in.Model != o.Model {
			t.Errorf("out %d: subject %s model %s/%s", i, o.Subject, in.Model, o.Model)
		}
		if in.Tta != (in.Model == "a+tta") {
			t.Errorf("%s: tta %v", in.Model, in.Tta)
		}
		if len(in.Tensor) != 4*int(in.Height*in.Width) || !in.HasMask || in.Meta.Rows != 64 {
			t.Errorf("%s: tensor %d bytes for %d×%d", in.Model, len(in.Tensor), in.Height, in.Width)
		}
	}
	// The tensor is the windowed slice averaged over 2×2 (or 4×4) blocks.
	var in lungsegv1.ModelInput
	_ = proto.Unmarshal(r.outs[0].Data, &in)
	x, _ := imgx.DecodeFloat32(32*32, in.Tensor)
	c := st.Cards.(cards)["a"]
	want := (c.Normalisation.Apply(float64(hu.At(0, 0))) + c.Normalisation.Apply(float64(hu.At(0, 1))) +
		c.Normalisation.Apply(float64(hu.At(1, 0))) + c.Normalisation.Apply(float64(hu.At(1, 1)))) / 4
	if math.Abs(float64(x[0]-want)) > 1e-6 {
		t.Fatalf("pixel 0 = %v, want %v", x[0], want)
	}
}

func TestProcessRejectsBadSlices(t *testing.T) {
	st := &preprocess.Stage{Cards: cards{"a": card("a", 32)}, Defaults: []string{"a"}}
	good, _ := slice(t, 8, 8)
	var s lungsegv1.Slice
	_ = proto.Unmarshal(good, &s)
	short := proto.Clone(&s).(*lungsegv1.Slice)
	short.Hu = short.Hu[:10]
	badMask := proto.Clone(&s).(*lungsegv1.Slice)
	badMask.MaskBits = badMask.MaskBits[:3]
	huge := proto.Clone(&s).(*lungsegv1.Slice)
	huge.Meta.Rows, huge.Meta.Cols = 100000, 100000
	for name, msg := range map[string]*lungsegv1.Slice{"short pixels": short, "mask bits": badMask, "huge": huge} {
		b, _ := proto.Marshal(msg)
		var r recorder
		err := st.Process(context.Background(), &stage.Msg{Data: b}, &r)
		if err == nil || !stage.IsPermanent(err) || len(r.outs) != 0 {
			t.Errorf("%s: err %v (permanent %v), outs %d", name, err, stage.IsPermanent(err), len(r.outs))
		}
	}
	var r recorder
	if err := st.Process(context.Background(), &stage.Msg{Data: []byte{0xff, 0x01}}, &r); !stage.IsPermanent(err) {
		t.Errorf("garbage: %v", err)
	}
}

func TestTrainingCopies(t *testing.T) {
	st := &preprocess.Stage{Cards: cards{"a": card("a", 32)}, TrainCopies: 3, TrainSeed: 7}
	data, hu := slice(t, 64, 64, "a")
	run := func() []stage.Out {
		var r recorder
		if err := st.Process(context.Background(), &stage.Msg{Data: data}, &r); err != nil {
			t.Fatal(err)
		}
		return r.outs
	}
	outs := run()
	if len(outs) != 1+4 {
		t.Fatalf("%d outputs, want 1 ready + 4 training", len(outs))
	}
	var ex0 lungsegv1.TrainingExample
	if err := proto.Unmarshal(outs[1].Data, &ex0); err != nil || outs[1].Subject != bus.TrainSubject("a") || ex0.Copy != 0 {
		t.Fatalf("copy 0: %v %s %d", err, outs[1].Subject, ex0.Copy)
	}
	x0, _ := imgx.DecodeFloat32(32*32, ex0.Tensor)
	in := preprocess.Input(hu, st.Cards.(cards)["a"])
	for i := range in {
		if in[i] != x0[i] {
			t.Fatalf("copy 0 differs from the serving input at %d", i)
		}
	}
	again := run()
	for k := 1; k <= 3; k++ {
		if string(outs[1+k].Data) != string(again[1+k].Data) {
			t.Errorf("copy %d not reproducible under the seed", k)
		}
		if string(outs[1+k].Data) == string(outs[1].Data) {
			t.Errorf("copy %d equals copy 0", k)
		}
		if outs[1+k].MsgID == outs[1].MsgID {
			t.Errorf("copy %d shares copy 0's dedupe id", k)
		}
	}
}

// TestCascadeInputsCarryNativeHU checks that only cascade selections get
// the native HU, inline when the input stays under the message limit and
// through the object store when not. A cascade selected beside its
// detector rides on the detector's input (refine set), so that segment
// runs the detector once; selected alone it has an input of its own.
func TestCascadeInputsCarryNativeHU(t *testing.T) {
	ctx := context.Background()
	cs := cards{"a": card("a", 256)}

	for _, sel := range [][]string{{"a", "a+crop"}, {"a+crop"}, {"a", "a+tta"}} {
		data, hu := slice(t, 64, 64, sel...)
		var r recorder
		if err := (&preprocess.Stage{Cards: cs}).Process(ctx, &stage.Msg{Data: data}, &r); err != nil {
			t.Fatal(err)
		}
		wantOuts := len(sel)
		if len(sel) == 2 && sel[1] == "a+crop" {
			wantOuts = 1
		}
		if len(r.outs) != wantOuts || len(r.fails) != 0 {
			t.Fatalf("%v: outs %d fails %+v", sel, len(r.outs), r.fails)
		}
		for _, o := range r.outs {
			var in lungsegv1.ModelInput
			if err := proto.Unmarshal(o.Data, &in); err != nil {
				t.Fatal(err)
			}
			if o.Subject != bus.ReadySubject("a") {
				t.Errorf("%s went to %s", in.Model, o.Subject)
			}
			wantRefine := in.Model == "a" && slices.Contains(sel, "a+crop")
			if in.Refine != wantRefine {
				t.Errorf("%v: %s has refine %v", sel, in.Model, in.Refine)
			}
			wantHU := in.Model == "a+crop" || wantRefine
			if got := len(in.NativeHu) > 0; got != wantHU || in.NativeHuRef != nil {
				t.Errorf("%v: %s: native HU %d bytes, ref %v", sel, in.Model, len(in.NativeHu), in.NativeHuRef)
			}
			if wantHU && string(in.NativeHu) != string(hu.EncodeInt16()) {
				t.Errorf("%s: native HU differs from the slice's", in.Model)
			}
		}
	}

	// 620×620 int16 fits in a Slice but not beside a 256² float32 tensor:
	// the detector goes on alone, the cascade fails.
	data, hu := slice(t, 620, 620, "a+crop", "a")
	r := recorder{}
	if err := (&preprocess.Stage{Cards: cs}).Process(ctx, &stage.Msg{Data: data}, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.outs) != 1 || len(r.fails) != 1 || r.fails[0].Model != "a+crop" || !strings.Contains(r.fails[0].Err.Error(), "message limit") {
		t.Fatalf("without object store: outs %d fails %+v", len(r.outs), r.fails)
	}
	var plain lungsegv1.ModelInput
	if err := proto.Unmarshal(r.outs[0].Data, &plain); err != nil {
		t.Fatal(err)
	}
	if plain.Model != "a" || plain.Refine || len(plain.NativeHu) != 0 {
		t.Fatalf("without object store: the detector's input is %s, refine %v, %d bytes of native HU", plain.Model, plain.Refine, len(plain.NativeHu))
	}

	env := bustest.Start(t)
	objects, err := bus.PixelStore(ctx, env.JS, bus.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r = recorder{}
	if err := (&preprocess.Stage{Cards: cs, Objects: objects}).Process(ctx, &stage.Msg{Data: data}, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.outs) != 1 || len(r.fails) != 0 {
		t.Fatalf("with object store: outs %d fails %+v", len(r.outs), r.fails)
	}
	var in lungsegv1.ModelInput
	if err := proto.Unmarshal(r.outs[0].Data, &in); err != nil {
		t.Fatal(err)
	}
	if !in.Refine || len(r.outs[0].Data) > preprocess.MaxInput || len(in.NativeHu) != 0 || in.NativeHuRef == nil {
		t.Fatalf("%s: %d bytes, native HU %d bytes, ref %v", in.Model, len(r.outs[0].Data), len(in.NativeHu), in.NativeHuRef)
	}
	px, err := objects.GetBytes(ctx, in.NativeHuRef.Key)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(px)
	if string(px) != string(hu.EncodeInt16()) || hex.EncodeToString(sum[:]) != in.NativeHuRef.Sha256 || in.NativeHuRef.Size != int64(len(px)) {
		t.Fatalf("stored native pixels differ from the slice's (ref %+v)", in.NativeHuRef)
	}

	// A slice whose pixels are already in the object store passes its
	// reference on.
	ref := &lungsegv1.ObjectRef{Bucket: bus.PixelsBucket, Key: "r/big", Sha256: in.NativeHuRef.Sha256, Size: int64(len(px))}
	if _, err := objects.PutBytes(ctx, ref.Key, px); err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(&lungsegv1.Slice{Meta: &lungsegv1.SliceMeta{Id: "big", ReplayId: "r", Rows: 620, Cols: 620, Models: []string{"a+crop"}}, HuRef: ref})
	if err != nil {
		t.Fatal(err)
	}
	r = recorder{}
	if err := (&preprocess.Stage{Cards: cs, Objects: objects}).Process(ctx, &stage.Msg{Data: b}, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.outs) != 1 {
		t.Fatalf("outs %d fails %+v", len(r.outs), r.fails)
	}
	in.Reset()
	if err := proto.Unmarshal(r.outs[0].Data, &in); err != nil {
		t.Fatal(err)
	}
	if len(in.NativeHu) != 0 || !proto.Equal(in.NativeHuRef, ref) {
		t.Fatalf("native HU %d bytes, ref %v, want %v", len(in.NativeHu), in.NativeHuRef, ref)
	}
}

// TestLungField: every input of a slice carries the slice's lung field
// (computed once from its HU and spacing); a slice too small for one, or
// a stage with NoLungField, sends none. A 512² cascade input with native
// HU, tensor, truth and field stays under MaxInput.
func TestLungField(t *testing.T) {
	ctx := context.Background()
	cs := cards{"a": card("a", 256)}
	ph := phantom.Generate(11, 1, phantom.Options{})[0]
	want, err := lungfield.Compute(ph.HU, ph.SpacingMm, ph.SpacingMm, lungfield.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := want.Count(); n == 0 || n == len(want.Pix) {
		t.Fatalf("phantom field of %d px", n)
	}
	b, err := proto.Marshal(&lungsegv1.Slice{Meta: &lungsegv1.SliceMeta{Id: "ph", ReplayId: "r", Rows: 512, Cols: 512,
		SpacingRowMm: ph.SpacingMm, SpacingColMm: ph.SpacingMm, Models: []string{"a", "a+crop", "a+tta"}},
		Hu: ph.HU.EncodeInt16(), MaskBits: ph.Mask.PackBits(), HasMask: true})
	if err != nil {
		t.Fatal(err)
	}
	small, _ := slice(t, 64, 64, "a")
	for _, c := range []struct {
		name     string
		st       *preprocess.Stage
		data     []byte
		inputs   int
		hasField bool
	}{
		// "a+crop" rides on "a"'s input (refine).
		{"chest", &preprocess.Stage{Cards: cs}, b, 2, true},
		{"chest, no field", &preprocess.Stage{Cards: cs, NoLungField: true}, b, 2, false},
		{"64×64", &preprocess.Stage{Cards: cs}, small, 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var r recorder
			if err := c.st.Process(ctx, &stage.Msg{Data: c.data}, &r); err != nil {
				t.Fatal(err)
			}
			if len(r.outs) != c.inputs || len(r.fails) != 0 {
				t.Fatalf("outs %d fails %+v", len(r.outs), r.fails)
			}
			for _, o := range r.outs {
				var in lungsegv1.ModelInput
				if err := proto.Unmarshal(o.Data, &in); err != nil {
					t.Fatal(err)
				}
				if len(o.Data) > preprocess.MaxInput {
					t.Errorf("%s: %d bytes, over %d", in.Model, len(o.Data), preprocess.MaxInput)
				}
				t.Logf("%s: %d bytes (limit %d)", in.Model, len(o.Data), preprocess.MaxInput)
				if in.HasField != c.hasField || (len(in.FieldBits) > 0) != c.hasField {
					t.Fatalf("%s: has_field %v with %d bytes, want %v", in.Model, in.HasField, len(in.FieldBits), c.hasField)
				}
				if c.hasField && string(in.FieldBits) != string(want.PackBits()) {
					t.Errorf("%s: field bits differ from lungfield.Compute's", in.Model)
				}
				if in.Refine && c.hasField && len(in.NativeHu) != 2*512*512 {
					t.Errorf("cascade input carries %d bytes of native HU inline", len(in.NativeHu))
				}
			}
		})
	}
}

// unserved is a recorder whose Emit refuses one model's READY subject as
// stage.Publish does while no segment consumer takes it.
type unserved struct {
	recorder
	model string
}

func (u *unserved) Emit(ctx context.Context, o stage.Out) error {
	if o.Subject == bus.ReadySubject(u.model) {
		return fmt.Errorf("publishing to %s: %w", o.Subject, bus.ErrNoConsumer)
	}
	return u.recorder.Emit(ctx, o)
}

// TestProcessGoesOnPastAnUnservedModel: a model no segment consumer takes
// yet holds back neither the models after it nor those before; the slice
// is retried for it (an error wrapping bus.ErrNoConsumer), and on the
// runner's last delivery it is reported for that model alone.
func TestProcessGoesOnPastAnUnservedModel(t *testing.T) {
	st := &preprocess.Stage{Cards: cards{"a": card("a", 16), "b": card("b", 16), "c": card("c", 16)}}
	data, _ := slice(t, 32, 32, "a", "b", "c")
	u := &unserved{model: "b"}
	err := st.Process(context.Background(), &stage.Msg{Data: data, Delivered: 1}, u)
	if !errors.Is(err, bus.ErrNoConsumer) || stage.IsPermanent(err) {
		t.Fatalf("err %v, want a retryable ErrNoConsumer", err)
	}
	if len(u.outs) != 2 || u.outs[0].Model != "a" || u.outs[1].Model != "c" || len(u.fails) != 0 {
		t.Fatalf("outs %d (%v), fails %+v: want a and c sent, nothing failed", len(u.outs), u.outs, u.fails)
	}
	u = &unserved{model: "b"}
	if err := st.Process(context.Background(), &stage.Msg{Data: data, Delivered: 5, Last: true}, u); err != nil {
		t.Fatalf("last delivery: %v", err)
	}
	if len(u.outs) != 2 || len(u.fails) != 1 || u.fails[0].Model != "b" || !errors.Is(u.fails[0].Err, bus.ErrNoConsumer) || u.fails[0].SliceID != "s1" {
		t.Fatalf("last delivery: outs %d, fails %+v: want b reported", len(u.outs), u.fails)
	}
}
