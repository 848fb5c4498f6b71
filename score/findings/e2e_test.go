package findings_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/internal/webhook"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// oracle is a segment stage that "predicts" the ground truth: its
// probability map is the slice's own mask at the original resolution, so
// the findings can be checked against the phantom's nodules.
type oracle struct{}

func (oracle) Process(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
	var in lungsegv1.ModelInput
	if err := proto.Unmarshal(m.Data, &in); err != nil {
		return stage.Permanent(err)
	}
	rows, cols := int(in.Meta.Rows), int(in.Meta.Cols)
	mask, err := imgx.UnpackMask(rows, cols, in.MaskBits)
	if err != nil {
		return stage.Permanent(err)
	}
	prob := make([]float32, rows*cols)
	for i, v := range mask.Pix {
		prob[i] = float32(v)
	}
	out := &lungsegv1.ModelOutput{Meta: in.Meta, Model: in.Model, ModelVersion: in.ModelVersion,
		Height: int32(rows), Width: int32(cols), Prob: imgx.EncodeFloat32(prob), Threshold: 0.5,
		MaskBits: in.MaskBits, HasMask: in.HasMask, Provider: "oracle"}
	b, err := proto.Marshal(out)
	if err != nil {
		return err
	}
	return e.Emit(ctx, stage.Out{Subject: bus.MasksSubject(in.Model), Data: b, SliceID: in.Meta.Id, ReplayID: in.Meta.ReplayId, Model: in.Model})
}

// oracleRegistry is a registry with the tiny test model's card under the
// name "oracle" (preprocess needs the card; the oracle stage replaces the
// ONNX session).
func oracleRegistry(t *testing.T) string {
	t.Helper()
	src := filepath.Join(testenv.RepoRoot(t), "segment", "testdata", "tiny")
	card, err := model.LoadCard(src)
	if err != nil {
		t.Fatal(err)
	}
	card.Name = "oracle"
	dir := filepath.Join(t.TempDir(), "oracle")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(card)
	if err := os.WriteFile(filepath.Join(dir, model.CardFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	onnx, err := os.ReadFile(filepath.Join(src, model.ModelFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, model.ModelFile), onnx, 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(dir)
}

func run(t *testing.T, ctx context.Context, wg *sync.WaitGroup, what string, f func(context.Context) error) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := f(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("%s: %v", what, err)
		}
	}()
}

// TestReplayToWebhook replays a DICOM phantom series through ingest,
// preprocess, an oracle segment stage (ground truth as prediction) and
// score, then the findings stage and a webhook sink whose receiver is down
// (nothing listens at its address) until all alerts have been published.
// When the receiver comes up, it gets every alert exactly once, and the
// findings match the phantom: one per nodule.
func TestReplayToWebhook(t *testing.T) {
	env := bustest.Start(t)
	js := env.JS
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, sc := range findings.Streams(bus.StreamOptions{}) {
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	reg, err := model.OpenRegistry(oracleRegistry(t))
	if err != nil {
		t.Fatal(err)
	}

	// A series with at least two nodules, one of them large enough for
	// an alert.
	var ps []phantom.Slice
	var sizes []float64
	for seed := int64(20); ; seed++ {
		ps = phantom.Generate(seed, 20, phantom.Options{Rows: 192, Cols: 192, Series: true, MaxNodules: 4,
			IrregularFraction: -1, MinDiameterMm: 4, MaxDiameterMm: 25})
		sizes = largestSections(ps)
		alerting := 0
		for _, d := range sizes {
			if d >= 9 {
				alerting++
			}
		}
		if len(sizes) >= 2 && alerting >= 1 {
			break
		}
		if seed > 60 {
			t.Fatal("no suitable phantom series")
		}
	}
	dir := filepath.Join(t.TempDir(), "series")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := phantom.WriteDICOM(dir, ps); err != nil {
		t.Fatal(err)
	}

	// The receiver's address, with nothing listening yet.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	log := zerolog.Nop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	run(t, ctx, &wg, "pipeline", func(ctx context.Context) error {
		return pipeline.Run(ctx, js, pipeline.Config{Registry: reg, Stages: []string{pipeline.Ingest, pipeline.Preprocess, pipeline.Score},
			Formats: formats.All(), Defaults: []string{"oracle"}}, log)
	})
	oracleRunner, err := stage.New(js, stage.Config{Name: pipeline.Segment, Durable: "segment-oracle", Stream: bus.StreamReady,
		FilterSubjects: []string{bus.ReadySubject("oracle")}}, oracle{}, log)
	if err != nil {
		t.Fatal(err)
	}
	run(t, ctx, &wg, "oracle", oracleRunner.Run)

	cache := findings.NewHUCache(0)
	huRunner, err := stage.New(js, stage.Config{Name: findings.HUStageName, Stream: bus.StreamRaw}, cache, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := huRunner.Consumer(ctx); err != nil {
		t.Fatal(err)
	}
	cache.Follow(js, bus.StreamRaw, findings.HUStageName, 0)
	run(t, ctx, &wg, "hu cache", huRunner.Run)
	const quiet = 500 * time.Millisecond
	fst, err := findings.New(ctx, js, findings.Config{QuietPeriod: quiet}, cache, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := fst.Start(ctx); err != nil {
		t.Fatal(err)
	}
	fRunner, err := stage.New(js, stage.Config{Name: findings.StageName, Stream: bus.StreamScores,
		FilterSubjects: []string{bus.PrefixScores + ">"}}, fst, log)
	if err != nil {
		t.Fatal(err)
	}
	run(t, ctx, &wg, "findings", fRunner.Run)

	sink, err := webhook.New(webhook.Config{Name: "e2e", URL: "http://" + addr + "/alerts",
		Backoff: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	sinkRunner, err := stage.New(js, sink.StageConfig(), sink, log)
	if err != nil {
		t.Fatal(err)
	}
	var failedAttempts atomic.Int64
	sinkRunner.Hooks.Retried = func(string) { failedAttempts.Add(1) }
	run(t, ctx, &wg, "webhook", sinkRunner.Run)

	rep, err := replay.Run(ctx, js, replay.Options{Inputs: []string{dir}, Models: []string{"oracle"},
		MasksDir: filepath.Join(dir, phantom.MasksDir), Timeout: time.Minute}, log)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Errors) != 0 || len(rep.Slices) != len(ps) || rep.Models["oracle"].Slices != len(ps) {
		t.Fatalf("replay: %d slices, errors %+v", len(rep.Slices), rep.Errors)
	}
	for _, s := range rep.Slices {
		if s.HasTruth && s.Dice != 1 {
			t.Fatalf("oracle Dice %v on %s", s.Dice, s.ID)
		}
	}

	// Findings and alerts as published.
	stored := func(stream string, into func(subject string, data []byte)) {
		cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		info, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		n := info.CachedInfo().State.Msgs
		for i := uint64(0); i < n; i++ {
			m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				t.Fatal(err)
			}
			into(m.Subject(), m.Data())
		}
	}
	var nodules []*lungsegv1.Finding
	countFindings := func() int {
		nodules = nil
		stored(findings.StreamFindings, func(subject string, data []byte) {
			var f lungsegv1.Finding
			if strings.HasPrefix(subject, findings.PrefixFindings+findings.SliceToken+".") ||
				strings.HasPrefix(subject, findings.PrefixFindings+findings.FlushedToken+".") {
				return // slice components; the answer to the replay's flush
			}
			if err := proto.Unmarshal(data, &f); err != nil {
				t.Fatal(err)
			}
			nodules = append(nodules, &f)
		})
		return len(nodules)
	}
	bustest.Eventually(t, 30*time.Second, "nodule findings", func() bool { return countFindings() == len(sizes) })
	wantAlerts := map[string]bool{}
	for _, f := range nodules {
		if findings.AtLeast(f.Category, findings.LR4A) {
			wantAlerts["a-"+f.Id[2:]] = true
		}
		// Scores carry the probabilities of predicted pixels (pred_prob);
		// the stand-in segment predicts the truth with probability 1. HU
		// comes from the HU cache.
		if !f.HuKnown || !f.ProbKnown || f.MeanProb != 1 || f.SeriesUid != ps[0].SeriesUID || f.ReplayId != rep.ReplayID {
			t.Errorf("finding %s: HU known %v, p %v (known %v), series %s, replay %s", f.Id, f.HuKnown, f.MeanProb, f.ProbKnown, f.SeriesUid, f.ReplayId)
		}
	}
	if len(wantAlerts) == 0 {
		t.Fatal("no finding at LR4A or above")
	}
	// Sizes and alert count agree with the phantom within a pixel spacing.
	sp := ps[0].SpacingMm
	surely, maybe := 0, 0
	for _, d := range sizes {
		if d >= 8+sp {
			surely++
		}
		if d >= 8-sp {
			maybe++
		}
	}
	if len(wantAlerts) < surely || len(wantAlerts) > maybe {
		t.Errorf("%d alerting findings; the phantom has %d to %d nodules of 8 mm or more", len(wantAlerts), surely, maybe)
	}
	for _, f := range nodules {
		ok := false
		for _, d := range sizes {
			ok = ok || (f.DiameterMm-d <= sp && d-f.DiameterMm <= sp)
		}
		if !ok {
			t.Errorf("finding %s: %.2f mm matches no phantom nodule %v", f.Id, f.DiameterMm, sizes)
		}
	}
	bustest.Eventually(t, 10*time.Second, "alerts published", func() bool {
		info, err := js.Stream(ctx, findings.StreamAlerts)
		return err == nil && int(info.CachedInfo().State.Msgs) == len(wantAlerts)
	})
	// The receiver is down: attempts fail and are retried.
	bustest.Eventually(t, 10*time.Second, "failed attempts", func() bool { return failedAttempts.Load() >= int64(2*len(wantAlerts)) })
	downFor := failedAttempts.Load()

	// The receiver comes up.
	var mu sync.Mutex
	got := map[string]int{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var a lungsegv1.Alert
		if err := protojson.Unmarshal(body, &a); err != nil || a.Finding == nil || r.Header.Get("Idempotency-Key") != a.Id {
			t.Errorf("bad alert body %s: %v", body, err)
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got[a.Id]++
		mu.Unlock()
	}))
	if srv.Listener, err = net.Listen("tcp", addr); err != nil {
		t.Fatalf("listening again on %s: %v", addr, err)
	}
	srv.Start()
	defer srv.Close()
	bustest.Eventually(t, 20*time.Second, "alerts delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == len(wantAlerts)
	})
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	for id := range wantAlerts {
		if got[id] != 1 {
			t.Errorf("alert %s delivered %d times", id, got[id])
		}
	}
	mu.Unlock()
	t.Logf("%d slices, %d phantom nodules (largest sections %.1f mm), %d findings, %d alerts; %d failed attempts while the receiver was down",
		len(ps), len(sizes), sizes, len(nodules), len(wantAlerts), downFor)
}

// largestSections returns the largest section diameter of each nodule of
// a phantom series.
func largestSections(ps []phantom.Slice) []float64 {
	by := map[int]float64{}
	for _, s := range ps {
		for _, n := range s.Nodules {
			by[n.ID] = max(by[n.ID], n.SectionDiameterMm)
		}
	}
	var out []float64
	for _, d := range by {
		out = append(out, d)
	}
	return out
}
