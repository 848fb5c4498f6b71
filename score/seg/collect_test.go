package seg

import (
	"bytes"
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
	"google.golang.org/protobuf/proto"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
)

// TestCollectorOnJetStream publishes the scores of one phantom series for
// two models (plus a score of a non-DICOM slice) on the SCORES stream,
// runs the collector as a stage, and checks that one SEG and one SR per
// model are stored, announced and handed to the Storer, the SEG with the
// predicted masks as frames, the SR with the nodules the findings package
// groups from them.
func TestCollectorOnJetStream(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	stored := map[string][]byte{}
	col := &Collector{JS: env.JS, Quiet: 300 * time.Millisecond, Log: zerolog.Nop(),
		Store: func(ctx context.Context, study string, b []byte) error {
			mu.Lock()
			defer mu.Unlock()
			stored[study+"/"+strconv.Itoa(len(stored))] = b
			return nil
		}}
	r, err := stage.New(env.JS, RunnerConfig(), col, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go r.Run(rctx)
	go col.Run(rctx)

	ph, sc := scores(t, 32, 32, 5)
	publish := func(s *lungsegv1.Score) {
		b, _ := proto.Marshal(s)
		if err := stage.Publish(ctx, env.JS, "score", stage.Out{Subject: bus.ScoresSubject(s.Model, "r1"), Data: b,
			SliceID: s.Meta.Id, ReplayID: "r1", Model: s.Model}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, model := range []string{"unet-lidc", "other"} {
		for _, s := range sc {
			c := proto.Clone(s).(*lungsegv1.Score)
			c.Model, c.Meta.ReplayId = model, "r1"
			publish(c)
		}
	}
	publish(&lungsegv1.Score{Meta: &lungsegv1.SliceMeta{Id: "png/1", ReplayId: "r1", Rows: 4, Cols: 4}, Model: "other"})

	var events []jetstream.Msg
	bustest.Eventually(t, 30*time.Second, "two SEG and two SR events", func() bool {
		events = bustest.Fetch(t, env.JS, bus.StreamEvents, PrefixResults+">")
		return len(events) == 4
	})
	osb, err := env.JS.ObjectStore(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range events {
		var ref lungsegv1.ObjectRef
		if err := proto.Unmarshal(ev.Data(), &ref); err != nil {
			t.Fatal(err)
		}
		model := ev.Headers().Get(bus.HdrModel)
		if ev.Headers().Get(HdrObject) == ObjectSR {
			checkSREvent(t, ctx, osb, ev, &ref, model, ph[0].SeriesUID, sc)
			continue
		}
		if ev.Headers().Get(HdrObject) != ObjectSEG {
			t.Errorf("event %s announces %q", ev.Subject(), ev.Headers().Get(HdrObject))
		}
		if ref.Key != ObjectKey("r1", model, ph[0].SeriesUID) || ev.Headers().Get(HdrSeries) != ph[0].SeriesUID || ev.Headers().Get(HdrFrames) != "5" {
			t.Errorf("event %s %+v %v", ev.Subject(), &ref, ev.Headers())
		}
		b, err := osb.GetBytes(ctx, ref.Key)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) != ref.Size {
			t.Errorf("object %d bytes, ref says %d", len(b), ref.Size)
		}
		ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipProcessingPixelDataValue())
		if err != nil {
			t.Fatal(err)
		}
		var algName string
		walk(ds.Elements, func(e *dicom.Element) {
			if e.Tag == tag.AlgorithmName {
				algName = dicom.MustGetStrings(e.Value)[0]
			}
		})
		if algName != model {
			t.Errorf("SEG of %s names algorithm %q", model, algName)
		}
		// Frames are the predictions, in position order.
		pd, _ := ds.FindElementByTag(tag.PixelData)
		data := dicom.MustGetPixelDataInfo(pd.Value).UnprocessedValueData
		_, _, frames, _ := FromScores(sc)
		k := 0
		for _, f := range Order(frames) {
			for _, v := range f.Mask.Pix {
				if data[k/8]>>(k%8)&1 != v {
					t.Fatalf("%s: bit %d differs from the prediction", model, k)
				}
				k++
			}
		}
	}
	mu.Lock()
	classes := map[string]int{}
	for _, b := range stored {
		ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipProcessingPixelDataValue())
		if err != nil {
			t.Fatal(err)
		}
		classes[str(ds.Elements, tag.SOPClassUID)]++
	}
	if len(stored) != 4 || classes[SegmentationStorage] != 2 || classes[EnhancedSRStorage] != 2 {
		t.Errorf("%d instances handed to the Storer (%v), want a SEG and an SR per model", len(stored), classes)
	}
	mu.Unlock()
	if col.Pending() != 0 {
		t.Errorf("%d series still pending", col.Pending())
	}
}

func TestCollectorQuietPeriod(t *testing.T) {
	now := time.Unix(1000, 0)
	col := &Collector{Quiet: 10 * time.Second, Now: func() time.Time { return now }, Log: zerolog.Nop()}
	_, sc := scores(t, 16, 16, 3)
	col.Add(sc[0])
	now = now.Add(9 * time.Second)
	col.Add(sc[1])
	now = now.Add(9 * time.Second)
	if n, err := col.Flush(context.Background(), false); n != 0 || err != nil {
		t.Fatalf("flushed %d (%v) before the series was quiet", n, err)
	}
	now = now.Add(2 * time.Second)
	if n, err := col.Flush(context.Background(), false); n != 1 || err != nil {
		t.Fatalf("flushed %d (%v), want 1", n, err)
	}
	// A series whose SEG cannot be made is dropped with an error.
	bad := proto.Clone(sc[2]).(*lungsegv1.Score)
	bad.PredBits = nil
	col.Add(bad)
	if n, err := col.Flush(context.Background(), true); n != 0 || err == nil || col.Pending() != 0 {
		t.Errorf("bad series: flushed %d, err %v, pending %d", n, err, col.Pending())
	}
}

// checkSREvent reads the SR an event announces and compares its groups
// with the nodules findings.Config.Series makes of the model's scores.
func checkSREvent(t *testing.T, ctx context.Context, osb jetstream.ObjectStore, ev jetstream.Msg, ref *lungsegv1.ObjectRef, model, series string, sc []*lungsegv1.Score) {
	t.Helper()
	h := ev.Headers()
	if ref.Key != SRObjectKey("r1", model, series) || h.Get(HdrSeries) != series || h.Get(HdrSRInstance) == "" || h.Get(HdrSEGInstance) == "" {
		t.Errorf("SR event %s %+v %v", ev.Subject(), ref, h)
	}
	b, err := osb.GetBytes(ctx, ref.Key)
	if err != nil {
		t.Fatal(err)
	}
	r, err := ReadSR(b)
	if err != nil {
		t.Fatal(err)
	}
	var ins []findings.SliceInput
	for _, s := range sc {
		c := proto.Clone(s).(*lungsegv1.Score)
		c.Model, c.Meta.ReplayId = model, "r1"
		m, err := imgx.UnpackMask(int(c.Meta.Rows), int(c.Meta.Cols), c.PredBits)
		if err != nil {
			t.Fatal(err)
		}
		ins = append(ins, findings.SliceInput{Meta: c.Meta, Model: c.Model, ModelVersion: c.ModelVersion, Pred: m})
	}
	fs, err := findings.Config{}.Series(ins, findings.CompletedQuiet)
	if err != nil {
		t.Fatal(err)
	}
	if r.SOPInstanceUID != h.Get(HdrSRInstance) || len(fs) == 0 || len(r.Groups) != len(fs) || h.Get(HdrNodules) != strconv.Itoa(len(fs)) {
		t.Fatalf("SR of %s: instance %s, %d groups, header %s; %d findings", model, r.SOPInstanceUID, len(r.Groups), h.Get(HdrNodules), len(fs))
	}
	for i, f := range fs {
		g := r.Groups[i]
		if g.TrackingID != f.Id || !sameDS(g.DiameterMm, f.DiameterMm) || !sameDS(g.VolumeMm3, f.VolumeMm3) || g.SEGInstance != h.Get(HdrSEGInstance) || g.AlgorithmName != model {
			t.Errorf("SR of %s, group %d: %+v; finding %s %g mm %g mm³", model, i, g, f.Id, f.DiameterMm, f.VolumeMm3)
		}
	}
}
