package findings

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// startBus starts JetStream with the pipeline streams and FINDINGS and
// ALERTS.
func startBus(t *testing.T) *bustest.Env {
	t.Helper()
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, sc := range Streams(bus.StreamOptions{}) {
		if _, err := env.JS.CreateOrUpdateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	return env
}

// collector gathers findings and alerts from their streams.
type collector struct {
	mu       sync.Mutex
	slices   []*lungsegv1.SliceFindings
	findings []*lungsegv1.Finding
	alerts   []*lungsegv1.Alert
	subjects map[string]string // finding or alert id -> subject
}

func collect(t *testing.T, js jetstream.JetStream) *collector {
	t.Helper()
	c := &collector{subjects: map[string]string{}}
	for _, stream := range []string{StreamFindings, StreamAlerts} {
		cons, err := js.OrderedConsumer(context.Background(), stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			c.mu.Lock()
			defer c.mu.Unlock()
			switch subj := m.Subject(); {
			case strings.HasPrefix(subj, PrefixFindings+SliceToken+"."):
				var sf lungsegv1.SliceFindings
				if proto.Unmarshal(m.Data(), &sf) == nil {
					c.slices = append(c.slices, &sf)
				}
			case strings.HasPrefix(subj, PrefixFindings):
				var f lungsegv1.Finding
				if proto.Unmarshal(m.Data(), &f) == nil {
					c.findings = append(c.findings, &f)
					c.subjects[f.Id] = subj
				}
			default:
				var a lungsegv1.Alert
				if proto.Unmarshal(m.Data(), &a) == nil {
					c.alerts = append(c.alerts, &a)
					c.subjects[a.Id] = subj
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cc.Stop)
	}
	return c
}

func (c *collector) counts() (slices, findings, alerts int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.slices), len(c.findings), len(c.alerts)
}

// runStage runs the findings stage on SCORES until the returned stop is
// called.
func runStage(t *testing.T, js jetstream.JetStream, cfg Config, hu HUSource) (*Stage, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := New(ctx, js, cfg, hu, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Start(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := stage.New(js, stage.Config{Name: StageName, Stream: bus.StreamScores,
		FilterSubjects: []string{bus.PrefixScores + ">"}, Backoff: []time.Duration{50 * time.Millisecond}}, st, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
			st.Wait()
		})
	}
	t.Cleanup(stop)
	return st, stop
}

func publishScore(t *testing.T, js jetstream.JetStream, meta *lungsegv1.SliceMeta, model string, pred *imgx.Mask) {
	t.Helper()
	sc := &lungsegv1.Score{Meta: meta, Model: model, ModelVersion: "1", PredBits: pred.PackBits(), PredictedPixels: int64(pred.Count())}
	b, err := proto.Marshal(sc)
	if err != nil {
		t.Fatal(err)
	}
	if err := stage.Publish(context.Background(), js, "score", stage.Out{Subject: bus.ScoresSubject(model, meta.ReplayId),
		Data: b, SliceID: meta.Id, ReplayID: meta.ReplayId, Model: model}, nil); err != nil {
		t.Fatal(err)
	}
}

func publishRaw(t *testing.T, js jetstream.JetStream, meta *lungsegv1.SliceMeta, hu *imgx.HU) {
	t.Helper()
	b, err := proto.Marshal(&lungsegv1.Slice{Meta: meta, Hu: hu.EncodeInt16()})
	if err != nil {
		t.Fatal(err)
	}
	if err := stage.Publish(context.Background(), js, "ingest", stage.Out{Subject: bus.SubjRaw, Data: b,
		SliceID: meta.Id, ReplayID: meta.ReplayId}, nil); err != nil {
		t.Fatal(err)
	}
}

// TestStageSeriesAndSingles runs the stage on real JetStream: a phantom
// series (ground truth as prediction, HU from the raw slices through the
// HU cache) and one slice without a series. The single slice's finding
// comes at once; the series' come only after the quiet period, one per
// nodule, with an alert for each at LR4A or above, and the state bucket
// is empty afterwards.
func TestStageSeriesAndSingles(t *testing.T) {
	env := startBus(t)
	col := collect(t, env.JS)

	cache := NewHUCache(0)
	hctx, hstop := context.WithCancel(context.Background())
	defer hstop()
	hr, err := stage.New(env.JS, stage.Config{Name: HUStageName, Stream: bus.StreamRaw}, cache, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hr.Run(hctx) }()

	const quiet = 400 * time.Millisecond
	st, _ := runStage(t, env.JS, Config{QuietPeriod: quiet, MinSizePx: 3}, cache)

	// Three series, their slices interleaved.
	var ps []phantom.Slice
	nTruth := 0
	series := map[string]bool{}
	for seed := int64(5); seed < 8; seed++ {
		one := phantom.Generate(seed, 16, phantom.Options{Rows: 160, Cols: 160, Series: true, MaxNodules: 3,
			IrregularFraction: -1, MinDiameterMm: 5, MaxDiameterMm: 25})
		nTruth += len(truthNodules(one))
		series[one[0].SeriesUID] = true
		ps = append(ps, one...)
	}
	if len(series) != 3 || nTruth < 3 {
		t.Fatalf("%d series with %d nodules", len(series), nTruth)
	}
	r := rand.New(rand.NewPCG(1, 2))
	r.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
	for _, s := range ps {
		publishRaw(t, env.JS, phantomMeta(s, "r1"), s.HU)
	}
	bustest.Eventually(t, 10*time.Second, "HU cache", func() bool { return cache.Len() == len(ps) })

	// A pickle-like slice: no series, no spacing, with a label.
	single := imgx.NewMask(64, 64)
	for r := 20; r < 44; r++ {
		for c := 20; c < 44; c++ {
			single.Pix[r*64+c] = 1 // 24 px square: ≈ 24·√2·0.7 mm ⇒ LR4B
		}
	}
	singleMeta := &lungsegv1.SliceMeta{Id: "pkl/7", ReplayId: "r1", Source: "pkl", Rows: 64, Cols: 64, Label: "LR4B", SpacingAssumed: true}
	publishScore(t, env.JS, singleMeta, "m1", single)
	bustest.Eventually(t, 10*time.Second, "single-slice finding", func() bool { _, f, _ := col.counts(); return f == 1 })

	lastPublished := map[string]time.Time{} // per series
	for _, s := range ps {
		publishScore(t, env.JS, phantomMeta(s, "r1"), "m1", s.Mask)
		lastPublished[s.SeriesUID] = time.Now()
		time.Sleep(10 * time.Millisecond)
	}
	bustest.Eventually(t, 20*time.Second, "series findings", func() bool { _, f, _ := col.counts(); return f == 1+nTruth })
	time.Sleep(2 * quiet) // nothing more may come
	nSlices, nFindings, nAlerts := col.counts()
	if nSlices != len(ps)+1 || nFindings != 1+nTruth {
		t.Fatalf("%d slice findings, %d findings; want %d, %d", nSlices, nFindings, len(ps)+1, 1+nTruth)
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	wantAlerts := 0
	for i, f := range col.findings {
		if i == 0 {
			if f.CompletedBy != CompletedSingle || f.Category != LR4B || !f.SpacingAssumed || f.TruthLabel != "LR4B" || f.HuKnown {
				t.Errorf("single finding: %+v", f)
			}
		} else {
			if f.CompletedBy != CompletedQuiet || !series[f.SeriesUid] || !f.HuKnown {
				t.Errorf("series finding: completed by %s series %s HU known %v", f.CompletedBy, f.SeriesUid, f.HuKnown)
			}
			if at := time.Unix(0, f.UnixNano); at.Sub(lastPublished[f.SeriesUid]) < quiet {
				t.Errorf("series finding published %v after the series' last slice, before the quiet period %v", at.Sub(lastPublished[f.SeriesUid]), quiet)
			}
		}
		if want := FindingSubject(f.Category, "m1", "r1"); col.subjects[f.Id] != want {
			t.Errorf("finding on %s, want %s", col.subjects[f.Id], want)
		}
		if AtLeast(f.Category, LR4A) {
			wantAlerts++
		}
	}
	if nAlerts != wantAlerts || wantAlerts == 0 {
		t.Errorf("%d alerts, want %d (>0)", nAlerts, wantAlerts)
	}
	for _, a := range col.alerts {
		if a.Finding == nil || !AtLeast(a.Finding.Category, LR4A) || a.Threshold != LR4A || !strings.HasPrefix(a.Summary, a.Finding.Category) {
			t.Errorf("alert %+v", a)
			continue
		}
		if want := AlertSubject(a.Finding.Category, "m1", "r1"); col.subjects[a.Id] != want {
			t.Errorf("alert on %s, want %s", col.subjects[a.Id], want)
		}
	}
	t.Logf("%d slices, %d phantom nodules, %d findings, %d alerts", nSlices, nTruth, nFindings, nAlerts)
	ctx := context.Background()
	if kl, err := st.kv.ListKeys(ctx); err == nil {
		n := 0
		for range kl.Keys() {
			n++
		}
		if n != 0 {
			t.Errorf("%d keys left in the state bucket", n)
		}
	}
}

// TestStageSeriesSurvivesRestart stores a series with one process whose
// quiet period is long, stops it, and starts another: the second
// completes the series from the bucket.
func TestStageSeriesSurvivesRestart(t *testing.T) {
	env := startBus(t)
	col := collect(t, env.JS)
	_, stop := runStage(t, env.JS, Config{QuietPeriod: time.Hour}, nil)
	ps := phantom.Generate(9, 12, phantom.Options{Rows: 128, Cols: 128, Series: true, MaxNodules: 2, IrregularFraction: -1, MinDiameterMm: 6})
	truth := truthNodules(ps)
	if len(truth) == 0 {
		t.Fatal("phantom without nodules")
	}
	for _, s := range ps {
		publishScore(t, env.JS, phantomMeta(s, "r2"), "m2", s.Mask)
	}
	bustest.Eventually(t, 10*time.Second, "slice findings", func() bool { s, _, _ := col.counts(); return s == len(ps) })
	stop()
	if _, f, _ := col.counts(); f != 0 {
		t.Fatalf("%d findings before the series was quiet", f)
	}

	st2, _ := runStage(t, env.JS, Config{QuietPeriod: 100 * time.Millisecond}, nil)
	bustest.Eventually(t, 10*time.Second, "findings after restart", func() bool { _, f, _ := col.counts(); return f == len(truth) })
	// Completing again finds nothing left.
	if n, err := st2.FlushAll(context.Background()); err != nil || n != 0 {
		t.Errorf("FlushAll after completion: %d, %v", n, err)
	}
}

// TestDecodeModelOutputMatchesScore checks that a model output gives the
// same mask as the score stage's Score of it, plus probabilities.
func TestDecodeModelOutputMatchesScore(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	prob := make([]float32, 32*32)
	for i := range prob {
		prob[i] = r.Float32()
	}
	o := &lungsegv1.ModelOutput{Meta: &lungsegv1.SliceMeta{Id: "a", Rows: 50, Cols: 70}, Model: "m", Height: 32, Width: 32,
		Prob: imgx.EncodeFloat32(prob), Threshold: 0.6}
	sc, err := score.ScoreOutput(o)
	if err != nil {
		t.Fatal(err)
	}
	ob, _ := proto.Marshal(o)
	sb, _ := proto.Marshal(sc)
	fromOut, err := Decode(bus.MasksSubject("m"), ob)
	if err != nil {
		t.Fatal(err)
	}
	fromScore, err := Decode(bus.ScoresSubject("m", "r"), sb)
	if err != nil {
		t.Fatal(err)
	}
	if string(fromOut.Pred.PackBits()) != string(fromScore.Pred.PackBits()) || fromOut.Pred.Count() == 0 {
		t.Error("masks differ between model output and score")
	}
	if len(fromOut.Prob) != 50*70 || len(fromScore.Prob) != 50*70 {
		t.Errorf("probabilities: %d from output, %d from score", len(fromOut.Prob), len(fromScore.Prob))
	}
	// On predicted pixels the score's pred_prob gives the same values.
	for i, v := range fromOut.Pred.Pix {
		if v != 0 && fromOut.Prob[i] != fromScore.Prob[i] {
			t.Fatalf("pixel %d: probability %v from output, %v from score", i, fromOut.Prob[i], fromScore.Prob[i])
		}
	}
	sf, err := Config{MinSizePx: 1}.Analyze(fromOut)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range sf.Components {
		if !k.ProbKnown || k.MeanProb < 0.6 || k.MeanProb > 1 {
			t.Errorf("component %d mean probability %v (known %v)", k.Index, k.MeanProb, k.ProbKnown)
		}
	}
	if _, err := Decode("lung.other", ob); err == nil {
		t.Error("unknown subject accepted")
	}
	if _, err := Decode(bus.ScoresSubject("m", "r"), []byte{0xff, 0xff}); err == nil {
		t.Error("garbage accepted")
	}
}

func TestHUCacheEvicts(t *testing.T) {
	c := NewHUCache(3 * 10 * 10 * 2) // three 10×10 slices
	meta := func(id string) *lungsegv1.SliceMeta { return &lungsegv1.SliceMeta{Id: id, ReplayId: "r"} }
	for _, id := range []string{"a", "b", "c"} {
		c.Put(meta(id), imgx.NewHU(10, 10))
	}
	if c.HU(context.Background(), meta("a")) == nil { // a becomes most recent
		t.Fatal("a missing")
	}
	c.Put(meta("d"), imgx.NewHU(10, 10)) // evicts b
	if c.HU(context.Background(), meta("b")) != nil || c.HU(context.Background(), meta("a")) == nil || c.HU(context.Background(), meta("d")) == nil || c.Len() != 3 {
		t.Errorf("LRU order wrong: len %d", c.Len())
	}
	if c.HU(context.Background(), &lungsegv1.SliceMeta{Id: "a", ReplayId: "other"}) != nil {
		t.Error("slice of another replay returned")
	}
	c.Put(meta("huge"), imgx.NewHU(100, 100)) // larger than the cache: ignored
	if c.Len() != 3 {
		t.Errorf("len %d after an oversized put", c.Len())
	}
}

// TestHUCacheFollowWaitsForLaggingConsumer scores a slice while the HU
// cache's consumer has not yet read the slice's raw message (it starts
// 300 ms later, as a consumer behind on a busy machine would): after
// Follow the finding still gets its mean HU, and a slice whose raw message
// never had pixels inline gets none, without waiting out the bound.
func TestHUCacheFollowWaitsForLaggingConsumer(t *testing.T) {
	env := startBus(t)
	col := collect(t, env.JS)
	cache := NewHUCache(0)
	hr, err := stage.New(env.JS, stage.Config{Name: HUStageName, Stream: bus.StreamRaw}, cache, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	hctx, hstop := context.WithCancel(context.Background())
	defer hstop()
	if _, err := hr.Consumer(hctx); err != nil {
		t.Fatal(err)
	}
	const bound = 20 * time.Second
	cache.Follow(env.JS, bus.StreamRaw, HUStageName, bound)
	runStage(t, env.JS, Config{QuietPeriod: time.Minute, MinSizePx: 3}, cache)

	hu := imgx.NewHU(32, 32)
	for i := range hu.Pix {
		hu.Pix[i] = -800
	}
	pred := imgx.NewMask(32, 32)
	for r := 10; r < 20; r++ {
		for c := 10; c < 20; c++ {
			hu.Pix[r*32+c], pred.Pix[r*32+c] = 40, 1
		}
	}
	inline := &lungsegv1.SliceMeta{Id: "inline", ReplayId: "lag", Rows: 32, Cols: 32, SpacingAssumed: true}
	publishRaw(t, env.JS, inline, hu)
	// A raw slice without inline pixels (as when they are in the Object
	// Store): the cache skips it.
	ref := &lungsegv1.SliceMeta{Id: "ref", ReplayId: "lag", Rows: 32, Cols: 32, SpacingAssumed: true}
	b, err := proto.Marshal(&lungsegv1.Slice{Meta: ref, HuRef: &lungsegv1.ObjectRef{Bucket: "b", Key: "k"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := stage.Publish(context.Background(), env.JS, "ingest", stage.Out{Subject: bus.SubjRaw, Data: b,
		SliceID: ref.Id, ReplayID: ref.ReplayId}, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	publishScore(t, env.JS, inline, "m1", pred)
	publishScore(t, env.JS, ref, "m1", pred)
	time.Sleep(300 * time.Millisecond)
	if cache.Len() != 0 {
		t.Fatal("the cache was filled before its consumer ran")
	}
	go func() { _ = hr.Run(hctx) }()
	bustest.Eventually(t, 15*time.Second, "both slices' findings", func() bool { _, f, _ := col.counts(); return f == 2 })
	if took := time.Since(start); took >= bound {
		t.Errorf("findings took %s, the whole wait bound", took)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	for _, f := range col.findings {
		id := ""
		if len(f.SliceIds) > 0 {
			id = f.SliceIds[0]
		}
		switch id {
		case "inline":
			if !f.HuKnown || f.MeanHu != 40 {
				t.Errorf("inline slice: HU known %v, mean %v; want 40", f.HuKnown, f.MeanHu)
			}
		case "ref":
			if f.HuKnown {
				t.Errorf("slice without inline pixels: mean HU %v", f.MeanHu)
			}
		default:
			t.Errorf("finding of slice %q", id)
		}
	}
}
