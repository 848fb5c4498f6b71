package pipeline_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/preprocess"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/segment/cascade"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// The tiny cascade models (segment/testdata/make_tiny_cascade.py) are 1×1
// convolutions: logits = a*x + b of the windowed input x.
const (
	detA, detB   = 20.0, -20.0 * 850 / 1500
	cropA, cropB = 30.0, -30.0 * 1049.5 / 1500
	// cropHU is where the crop model's logit crosses 0 (probability 0.5,
	// its threshold): integer HU above it are mask pixels in a window.
	cropHU = -300.5
)

// cascadeRegistry copies the tiny detector and crop model into a fresh
// registry.
func cascadeRegistry(t *testing.T) *model.Registry {
	t.Helper()
	reg := testenv.TestRegistry(t, "tiny-det", "tiny-crop")
	r, err := model.OpenRegistry(reg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

// TestCascadeEndToEnd runs preprocess, segment, refine and score on a real
// JetStream server with ONNX Runtime and the tiny cascade: two 512×512
// phantom slices (one inline, one with its pixels in the object store) and
// one broken cascade input. The cascade's mask must be exactly the pixels
// that some crop window covers and whose HU the crop model puts above its
// threshold, computed here from the phantom's HU; the windows must be the
// ones cascade.Plan places on the published detector map, and that map
// must be the detector's 1×1 convolution of preprocess's input. With the
// cascade selected beside its detector, segment publishes one detector
// output per slice, which refine turns into the cascade's.
func TestCascadeEndToEnd(t *testing.T) {
	env := bustest.Start(t)
	js := env.JS
	reg := cascadeRegistry(t)
	if got := reg.Cascades(); !slices.Equal(got, []string{"tiny-det+crop"}) {
		t.Fatalf("cascades %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	objects, err := bus.PixelStore(ctx, js, bus.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cfg := pipeline.Config{Registry: reg, Stages: []string{pipeline.Preprocess, pipeline.Segment, pipeline.Refine, pipeline.Score}}
		if err := pipeline.Run(rctx, js, cfg, zerolog.Nop()); err != nil && rctx.Err() == nil {
			t.Errorf("pipeline: %v", err)
		}
	}()
	defer func() { stop(); wg.Wait() }()

	const replayID = "casc"
	sel := []string{"tiny-det+crop", "tiny-det"}
	slicesIn := phantom.Generate(7, 2, phantom.Options{EmptyFraction: -1})
	publish := func(subject string, m proto.Message, model, id string) {
		t.Helper()
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		msg := nats.NewMsg(subject)
		msg.Data = b
		msg.Header.Set(bus.HdrSlice, id)
		msg.Header.Set(bus.HdrReplay, replayID)
		if model != "" {
			msg.Header.Set(bus.HdrModel, model)
		}
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	// A cascade input whose native HU has the wrong size fails alone.
	publish(bus.ReadySubject("tiny-det"), &lungsegv1.ModelInput{
		Meta:  &lungsegv1.SliceMeta{Id: "bad", ReplayId: replayID, Rows: 512, Cols: 512},
		Model: "tiny-det+crop", Channels: 1, Height: 256, Width: 256,
		Tensor: imgx.EncodeFloat32(make([]float32, 256*256)), NativeHu: make([]byte, 100),
	}, "tiny-det+crop", "bad")
	for i, s := range slicesIn {
		meta := &lungsegv1.SliceMeta{Id: s.Name(), ReplayId: replayID, Rows: 512, Cols: 512, Models: sel,
			SpacingRowMm: s.SpacingMm, SpacingColMm: s.SpacingMm}
		msg := &lungsegv1.Slice{Meta: meta, Hu: s.HU.EncodeInt16(), MaskBits: s.Mask.PackBits(), HasMask: true}
		if i == 1 {
			key := replayID + "/" + s.Name()
			if _, err := objects.PutBytes(ctx, key, msg.Hu); err != nil {
				t.Fatal(err)
			}
			sum := sha256Hex(msg.Hu)
			msg.HuRef = &lungsegv1.ObjectRef{Bucket: bus.PixelsBucket, Key: key, Sha256: sum, Size: int64(len(msg.Hu))}
			msg.Hu = nil
		}
		publish(bus.SubjRaw, msg, "", s.Name())
	}

	scores := map[string]*lungsegv1.Score{}
	bustest.Eventually(t, time.Minute, "4 scores", func() bool {
		for _, m := range bustest.Fetch(t, js, bus.StreamScores, bus.PrefixScores+"*."+replayID) {
			var s lungsegv1.Score
			if err := proto.Unmarshal(m.Data(), &s); err != nil {
				t.Fatal(err)
			}
			scores[s.Model+"/"+s.Meta.Id] = &s
		}
		return len(scores) >= 4
	})
	if len(scores) != 4 {
		t.Fatalf("scores %v", len(scores))
	}

	// The broken input is reported as a permanent segment error.
	var failed bool
	for _, m := range bustest.Fetch(t, js, bus.StreamErrors, bus.ErrorsSubject("segment", replayID)) {
		var ev lungsegv1.ErrorEvent
		if err := proto.Unmarshal(m.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Id == "bad" && ev.Model == "tiny-det+crop" && ev.Permanent {
			failed = true
		} else {
			t.Errorf("unexpected error event %+v", &ev)
		}
	}
	if !failed {
		t.Error("no error event for the broken cascade input")
	}

	outputs := map[string]*lungsegv1.ModelOutput{}
	detRuns := map[string]int{}
	for _, subj := range []string{bus.MasksSubject("tiny-det"), bus.MasksSubject("tiny-det+crop")} {
		for _, m := range bustest.Fetch(t, js, bus.StreamMasks, subj) {
			// The cascade's 512² float32 map goes by object reference.
			data, err := objref.Resolve(ctx, js, m.Data())
			if err != nil {
				t.Fatal(err)
			}
			var o lungsegv1.ModelOutput
			if err := proto.Unmarshal(data, &o); err != nil {
				t.Fatal(err)
			}
			outputs[o.Model+"/"+o.Meta.Id] = &o
			if subj == bus.MasksSubject("tiny-det") {
				detRuns[o.Meta.Id]++
			}
		}
	}
	detCard, _ := reg.Get("tiny-det")
	cropCard, _ := reg.Get("tiny-crop")
	p, err := cascade.ParamsOf(cropCard)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slicesIn {
		o := outputs["tiny-det+crop/"+s.Name()]
		if o == nil || !o.Cascade || o.CropModel != "tiny-crop" || o.Threshold != 0.5 {
			t.Fatalf("%s: cascade output %+v", s.Name(), o)
		}
		// One detector run for both selections: its output goes to
		// score and to refine.
		d := outputs["tiny-det/"+s.Name()]
		if detRuns[s.Name()] != 1 || d == nil || !d.Refine || d.RefineOnly || d.Cascade {
			t.Fatalf("%s: %d detector outputs, %+v", s.Name(), detRuns[s.Name()], d)
		}
		// The detector map is the 1×1 convolution of preprocess's input.
		prob, err := imgx.DecodeFloat32(256*256, d.Prob)
		if err != nil {
			t.Fatal(err)
		}
		for i, x := range preprocess.Input(s.HU, detCard) {
			if want := sigmoid(detA*float64(x) + detB); math.Abs(float64(prob[i])-want) > 1e-5 {
				t.Fatalf("%s: detector pixel %d = %v, want %v", s.Name(), i, prob[i], want)
			}
		}
		// Preprocess sent the slice's lung field; candidates come only
		// from inside it.
		field, err := lungfield.Compute(s.HU, s.SpacingMm, s.SpacingMm, lungfield.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !o.HasField || string(o.FieldBits) != string(field.PackBits()) {
			t.Fatalf("%s: output has_field %v with %d bytes, not the slice's lung field", s.Name(), o.HasField, len(o.FieldBits))
		}
		native := imgx.ResizeBilinear(prob, 256, 256, 512, 512)
		wins := cascade.PlanIn(native, 512, 512, p, field)
		if len(wins) == 0 || len(wins) != len(o.Windows) {
			t.Fatalf("%s: %d windows planned, %d published", s.Name(), len(wins), len(o.Windows))
		}
		var large bool
		for _, c := range cascade.Components(native, 512, 512, p.DetectThreshold) {
			large = large || c.Height() > p.Window-cascade.Margin
		}
		if !large {
			t.Errorf("%s: no component too large for a window (the body should be one)", s.Name())
		}
		covered := make([]bool, 512*512)
		for k, w := range wins {
			pw := o.Windows[k]
			if int(pw.Y0) != w.Y0 || int(pw.X0) != w.X0 || int(pw.Height) != 128 || int(pw.Width) != 128 {
				t.Fatalf("%s: window %d is %+v, want %+v", s.Name(), k, pw, w)
			}
			for y := max(0, w.Y0); y < min(512, w.Y0+w.H); y++ {
				for x := max(0, w.X0); x < min(512, w.X0+w.W); x++ {
					covered[y*512+x] = true
				}
			}
		}
		sc := scores["tiny-det+crop/"+s.Name()]
		pred, err := imgx.UnpackMask(512, 512, sc.PredBits)
		if err != nil {
			t.Fatal(err)
		}
		want := imgx.NewMask(512, 512)
		var inside []float64
		for i, h := range s.HU.Pix {
			if covered[i] && float64(h) > cropHU && field.Pix[i] != 0 {
				want.Pix[i] = 1
				x := cropCard.Normalisation.Apply(float64(h))
				inside = append(inside, sigmoid(cropA*float64(x)+cropB))
			}
		}
		if n := want.Count(); n == 0 {
			t.Fatalf("%s: expected mask is empty: the test checks nothing", s.Name())
		}
		if !slices.Equal(pred.Pix, want.Pix) {
			diff := 0
			for i := range pred.Pix {
				if pred.Pix[i] != want.Pix[i] {
					diff++
				}
			}
			t.Fatalf("%s: cascade mask differs from the expected one in %d pixels (%d predicted, %d expected)",
				s.Name(), diff, pred.Count(), want.Count())
		}
		pp, err := imgx.DecodeFloat32(len(inside), sc.PredProb)
		if err != nil {
			t.Fatal(err)
		}
		for i := range inside {
			if math.Abs(float64(pp[i])-inside[i]) > 1e-5 {
				t.Fatalf("%s: pred_prob[%d] = %v, want %v", s.Name(), i, pp[i], inside[i])
			}
		}
		if int(sc.PredictedPixels) != want.Count() || int(sc.TruthPixels) != s.Mask.Count() {
			t.Errorf("%s: predicted %d truth %d", s.Name(), sc.PredictedPixels, sc.TruthPixels)
		}
		t.Logf("%s: %d windows, %d cascade mask pixels, dice %.3f", s.Name(), len(wins), sc.PredictedPixels, sc.Dice)
		// The plain detector is scored apart: its map covers the body,
		// whose part outside the lung field score removes.
		plain := scores["tiny-det/"+s.Name()]
		if plain == nil || plain.PredictedPixels <= sc.PredictedPixels || !plain.HasField || plain.OutsideFieldPixels == 0 {
			t.Errorf("%s: plain detector predicted %d pixels (%d removed outside the field), cascade %d",
				s.Name(), plain.GetPredictedPixels(), plain.GetOutsideFieldPixels(), sc.PredictedPixels)
		}
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
