package natsauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest/dicomweb"
	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/internal/webhook"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/natsauth"
	"github.com/lungseg/lungseg/pkg/ortlib"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/lungseg/lungseg/score/seg"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// violations collects a connection's permission violations.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
		v.mu.Lock()
		v.errs = append(v.errs, err.Error())
		v.mu.Unlock()
	}
}

func (v *violations) list() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.errs...)
}

// tinyRegistry copies the tiny test model and the tiny cascade (detector
// tiny-det, crop model tiny-crop) into a registry folder.
func tinyRegistry(t *testing.T) *model.Registry {
	t.Helper()
	root := testenv.TestRegistry(t, "tiny", "tiny-det", "tiny-crop")
	reg, err := model.OpenRegistry(root)
	if err != nil {
		t.Fatal(err)
	}
	if c := reg.Cascades(); len(c) != 1 || c[0] != cascade {
		t.Fatalf("cascades %v, want %s", c, cascade)
	}
	return reg
}

// cascade is the tiny registry's cascade selection.
const cascade = "tiny-det+crop"

// TestPipelinePermissions runs every stage of the pipeline in its own
// connection as its own NATS user (streams and buckets made by admin),
// replays phantom slices as the replay user, one of them 1024×1024 so its
// pixels go through the object store, and checks that every slice is
// scored, findings are published and no connection met a permission
// violation. A second replay runs the tiny cascade, whose crop model reads
// native HU, on a 640×640 slice (inline, so preprocess stores its native
// HU in the pixel bucket) and a 1024×1024 one (ingest stored its pixels):
// refine, as its own user, reads both from the bucket. Then stage users are refused
// outside their rights.
func TestPipelinePermissions(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := zerolog.Nop()
	if err := ortlib.Init(ctx, log); err != nil {
		t.Fatal(err)
	}

	url := startUsers(t)

	viol := map[string]*violations{}
	connect := func(role string) jetstream.JetStream {
		t.Helper()
		v := &violations{}
		viol[role] = v
		return roleJS(t, url, role, v.handler)
	}

	admin := connect(natsauth.RoleAdmin)
	if err := bus.EnsureStreams(ctx, admin, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.PixelStore(ctx, admin, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// The findings bucket, made the way the stage makes it.
	if _, err := findings.New(ctx, admin, findings.Config{}, nil, log); err != nil {
		t.Fatal(err)
	}

	reg := tinyRegistry(t)
	fcfg := findings.Config{QuietPeriod: 300 * time.Millisecond}
	if fcfg.WithDefaults().StateBucket != natsauth.FindingsBucket {
		t.Fatalf("findings bucket %q, natsauth grants %q", fcfg.WithDefaults().StateBucket, natsauth.FindingsBucket)
	}
	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for _, st := range []struct{ stage, role string }{
		{pipeline.Ingest, natsauth.RoleIngest},
		{pipeline.Preprocess, natsauth.RolePreprocess},
		{pipeline.Segment, natsauth.RoleSegment},
		{pipeline.Refine, natsauth.RoleRefine},
		{pipeline.Score, natsauth.RoleScore},
		{pipeline.Findings, natsauth.RoleFindings},
	} {
		js := connect(st.role)
		cfg := pipeline.Config{Registry: reg, Stages: []string{st.stage}, SkipStreamSetup: true,
			Formats: formats.All(), Findings: fcfg}
		if st.stage == pipeline.Findings {
			cfg.Webhooks = []webhook.Config{{Name: "perm", URL: "http://127.0.0.1:1/alerts"}}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pipeline.Run(pctx, js, cfg, log); err != nil && pctx.Err() == nil {
				errc <- err
			}
		}()
	}
	// A webhook on its own, as the webhook user.
	wjs := connect(natsauth.RoleWebhook)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := webhook.Run(pctx, wjs, webhook.Config{Name: "solo", URL: "http://127.0.0.1:1/alerts"}, log); err != nil && pctx.Err() == nil {
			errc <- err
		}
	}()
	defer wg.Wait()
	defer stop()

	dir := t.TempDir()
	small := phantom.Generate(11, 3, phantom.Options{Rows: 64, Cols: 64, Series: true})
	big := phantom.Generate(12, 1, phantom.Options{Rows: 1024, Cols: 1024})
	bigDir := t.TempDir()
	if err := phantom.WriteDICOM(dir, small); err != nil {
		t.Fatal(err)
	}
	if err := phantom.WriteDICOM(bigDir, big); err != nil {
		t.Fatal(err)
	}
	rjs := connect(natsauth.RoleReplay)
	rep, err := replay.Run(ctx, rjs, replay.Options{Inputs: []string{dir, bigDir}, Models: []string{"tiny"}, Timeout: time.Minute}, log)
	select {
	case err := <-errc:
		t.Fatalf("a stage failed: %v", err)
	default:
	}
	if err != nil {
		t.Fatalf("replay: %v (violations %v)", err, allViolations(viol))
	}
	if len(rep.Errors) != 0 || len(rep.Slices) != len(small)+len(big) {
		b, _ := json.Marshal(rep.Errors)
		t.Fatalf("replay scored %d of %d slices, errors %s", len(rep.Slices), len(small)+len(big), b)
	}
	// The replay user read its findings and asked for its series; the
	// findings user heard it and answered.
	if !rep.FindingsComplete {
		t.Errorf("findings not complete: %s (violations %v)", rep.FindingsNote, allViolations(viol))
	}
	// The big slice's pixels went through the object store.
	obj, err := admin.ObjectStore(ctx, bus.PixelsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := obj.Status(ctx); err != nil || st.Size() == 0 {
		t.Fatalf("pixel bucket empty (err %v): the 1024×1024 slice did not take the object store path", err)
	}
	// Findings: every slice's components are published by the findings
	// user.
	fs, err := admin.Stream(ctx, bus.StreamFindings)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := fs.Info(ctx, jetstream.WithSubjectFilter(bus.PrefixFindings+findings.SliceToken+".>"))
		if err != nil {
			t.Fatal(err)
		}
		if int(info.State.Msgs) >= len(rep.Slices) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("FINDINGS holds %d slice findings, want %d (violations %v)", info.State.Msgs, len(rep.Slices), allViolations(viol))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v := allViolations(viol); len(v) != 0 {
		t.Fatalf("a role needed a subject it is not allowed: %v", v)
	}

	// The cascade: native HU through the pixel bucket both ways.
	mid := phantom.Generate(13, 1, phantom.Options{Rows: 640, Cols: 640})
	midDir := t.TempDir()
	if err := phantom.WriteDICOM(midDir, mid); err != nil {
		t.Fatal(err)
	}
	crep, err := replay.Run(ctx, rjs, replay.Options{Inputs: []string{midDir, bigDir}, Models: []string{cascade}, Timeout: time.Minute}, log)
	if err != nil {
		t.Fatalf("cascade replay: %v (violations %v)", err, allViolations(viol))
	}
	if len(crep.Errors) != 0 || len(crep.Slices) != len(mid)+len(big) {
		b, _ := json.Marshal(crep.Errors)
		t.Fatalf("cascade replay scored %d of %d slices, errors %s (violations %v)", len(crep.Slices), len(mid)+len(big), b, allViolations(viol))
	}
	for _, r := range crep.Slices {
		if r.Model != cascade {
			t.Fatalf("cascade replay scored %s with %s, want %s", r.ID, r.Model, cascade)
		}
	}
	objs, err := obj.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var native []string
	for _, o := range objs {
		if strings.HasPrefix(o.Name, "native/"+crep.ReplayID+"/") {
			native = append(native, o.Name)
		}
	}
	if len(native) != len(mid) {
		t.Fatalf("native HU objects of the cascade replay %v, want one for the 640×640 slice", native)
	}
	if v := allViolations(viol); len(v) != 0 {
		t.Fatalf("a role needed a subject it is not allowed: %v", v)
	}

	// The receivers as the receive user: DICOM slices accepted as live
	// slices, and the SEG collector on the same connection.
	recv := connect(natsauth.RoleReceive)
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	studies, err := bus.StudyStore(sctx, recv, bus.StreamOptions{})
	scancel()
	if err != nil {
		t.Fatalf("receive opens the studies bucket: %v (violations %v)", err, allViolations(viol))
	}
	col := &seg.Collector{JS: recv, Quiet: 300 * time.Millisecond, Studies: studies, Log: log}
	cr, err := stage.New(recv, seg.RunnerConfig(), col, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cr.Consumer(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := cr.Run(pctx); err != nil && pctx.Err() == nil {
			errc <- err
		}
	}()
	go func() {
		defer wg.Done()
		if err := col.Run(pctx); err != nil && pctx.Err() == nil {
			errc <- err
		}
	}()
	acc := &dicomweb.Acceptor{JS: recv, Models: []string{"tiny"}, Studies: studies, Source: "test", Log: log}
	for _, sl := range small {
		b, err := os.ReadFile(filepath.Join(dir, sl.Name()+".dcm"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := acc.Accept(ctx, sl.Name(), b, ""); err != nil {
			t.Fatalf("receive accepting %s: %v (violations %v)", sl.Name(), err, allViolations(viol))
		}
	}
	ev, err := admin.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		info, err := ev.Info(ctx, jetstream.WithSubjectFilter(seg.PrefixResults+">"))
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SEG announced on %s> (violations %v)", seg.PrefixResults, allViolations(viol))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v := allViolations(viol); len(v) != 0 {
		t.Fatalf("a role needed a subject it is not allowed: %v", v)
	}

	// Outside their rights: the replay user cannot store pixel objects
	// (it only reads large scores), the findings user cannot publish
	// scores, the receive user cannot create other streams, the webhook
	// user cannot open the findings bucket.
	if ps, err := connect(natsauth.RoleReplay).ObjectStore(ctx, bus.PixelsBucket); err != nil {
		t.Fatalf("replay opens the pixel bucket: %v", err)
	} else {
		gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
		_, gerr := ps.PutBytes(gctx, "native/forged/s1", []byte("x"))
		gcancel()
		if gerr == nil {
			t.Fatal("replay stored a pixel object")
		}
	}
	fjs := connect(natsauth.RoleFindings)
	pc, pcancel := context.WithTimeout(ctx, 2*time.Second)
	_, perr := fjs.Publish(pc, bus.ScoresSubject("tiny", "forged"), []byte("x"))
	pcancel()
	if perr == nil {
		t.Fatal("findings published a score")
	}
	rc, rcancel := context.WithTimeout(ctx, 2*time.Second)
	_, rerr := recv.CreateStream(rc, jetstream.StreamConfig{Name: "SPY", Subjects: []string{"lung.>"}})
	rcancel()
	if rerr == nil {
		t.Fatal("receive created a stream other than its buckets")
	}
	wh := connect(natsauth.RoleWebhook)
	kc, kcancel := context.WithTimeout(ctx, 2*time.Second)
	_, kerr := wh.KeyValue(kc, natsauth.FindingsBucket)
	kcancel()
	if kerr == nil {
		t.Fatal("webhook opened the findings bucket")
	}
}

func allViolations(m map[string]*violations) []string {
	var out []string
	for role, v := range m {
		for _, e := range v.list() {
			out = append(out, role+": "+e)
		}
	}
	return out
}
