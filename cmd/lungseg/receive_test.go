package main

import (
	"bytes"
	"context"
	"fmt"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/httpsec"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
	"google.golang.org/protobuf/proto"

	"github.com/lungseg/lungseg/ingest/dicomweb"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/seg"
)

// TestReceiveEndToEnd sends one phantom series with dcmtk's storescu to
// the C-STORE SCP and another by STOW-RS, runs every stage with the tiny
// test model on a real JetStream, and checks that each series gets its
// scores and one SEG whose frames are the predicted masks, valid for
// dciodvfy where installed; bad input in between gets a clear error and
// the receivers go on.
func TestReceiveEndToEnd(t *testing.T) {
	storescu := testenv.RequireCommand(t, "storescu")
	reg := testRegistry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := zerolog.Nop()
	n, _, pctx, stopPipeline, perr := receivePipeline(t, ctx, reg, "receive-test", log)
	defer stopPipeline()

	ready := make(chan [2]net.Addr, 1)
	rerr := make(chan error, 1)
	go func() {
		rerr <- runReceivers(pctx, receiveConfig{
			acc:  &dicomweb.Acceptor{JS: n.js, Models: []string{"tiny"}, Log: log},
			http: "127.0.0.1:0", dimse: "127.0.0.1:0", ae: "LUNGSEG",
			segQuiet: 1500 * time.Millisecond,
			ready:    func(h, d net.Addr) { ready <- [2]net.Addr{h, d} },
		}, log)
	}()
	var addrs [2]net.Addr
	select {
	case addrs = <-ready:
	case err := <-rerr:
		t.Fatal(err)
	}

	// Series A by C-STORE, series B by STOW-RS.
	dir := t.TempDir()
	write := func(seed int64, sub string) ([]phantom.Slice, []string) {
		sl := phantom.Generate(seed, 4, phantom.Options{Rows: 128, Cols: 128, Series: true})
		var paths []string
		for i, s := range sl {
			p := filepath.Join(dir, sub, s.Name()+".dcm")
			err := dicomwrite.WriteFile(p, dicomwrite.Series{StudyUID: s.StudyUID, SeriesUID: s.SeriesUID, Intercept: -1024, PatientID: "P1"},
				dicomwrite.Instance{HU: s.HU, SpacingRowMm: s.SpacingMm, SpacingColMm: s.SpacingMm,
					PositionMm: [3]float64{0, 0, s.PositionMm}, InstanceNumber: i + 1, UID: s.InstanceUID})
			if err != nil {
				t.Fatal(err)
			}
			paths = append(paths, p)
		}
		return sl, paths
	}
	a, aFiles := write(71, "a")
	b, bFiles := write(72, "b")
	host, port, _ := net.SplitHostPort(addrs[1].String())
	out, err := exec.CommandContext(ctx, storescu, append([]string{"-aet", "CT1", "-aec", "LUNGSEG", host, port}, aFiles...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("storescu: %v\n%s", err, out)
	}
	var parts [][]byte
	for _, p := range bFiles {
		data, _ := os.ReadFile(p)
		parts = append(parts, data)
	}
	// A hostile part among them: the good ones are stored (202).
	parts = append(parts, append([]byte(strings.Repeat("\x00", 128)+"DICM"), 2, 0, 0x10, 0, 'U', 'I', 0xff, 0xff))
	cl := &dicomweb.Client{BaseURL: "http://" + addrs[0].String() + "/dicomweb"}
	res, err := cl.Store(ctx, "", parts...)
	if err != nil || res.Status != 202 || len(res.Stored) != 4 || len(res.Failed) != 1 {
		t.Fatalf("STOW-RS: %v %+v", err, res)
	}

	// Scores, then one SEG per series.
	want := map[string][]phantom.Slice{a[0].SeriesUID: a, b[0].SeriesUID: b}
	var events []jetstream.Msg
	bustest.Eventually(t, 2*time.Minute, "a SEG for each series", func() bool {
		events = nil
		for _, m := range bustest.Fetch(t, n.js, bus.StreamEvents, seg.ResultsSubject("tiny", "")) {
			if m.Headers().Get(seg.HdrObject) == seg.ObjectSEG { // the SRs: TestReceiveSEGAndSRToPACS
				events = append(events, m)
			}
		}
		return len(events) >= 2
	})
	scores := map[string]*lungsegv1.Score{}
	for _, m := range bustest.Fetch(t, n.js, bus.StreamScores, bus.ScoresSubject("tiny", "")) {
		var s lungsegv1.Score
		if err := proto.Unmarshal(m.Data(), &s); err != nil {
			t.Fatal(err)
		}
		scores[s.Meta.InstanceUid] = &s
	}
	if len(scores) != 8 {
		t.Fatalf("%d scores, want 8", len(scores))
	}
	obj, err := n.js.ObjectStore(ctx, seg.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range events {
		series := ev.Headers().Get(seg.HdrSeries)
		ph, ok := want[series]
		if !ok {
			t.Fatalf("SEG of unknown series %s", series)
		}
		delete(want, series)
		var ref lungsegv1.ObjectRef
		proto.Unmarshal(ev.Data(), &ref)
		data, err := obj.GetBytes(ctx, ref.Key)
		if err != nil {
			t.Fatal(err)
		}
		ds, err := dicom.Parse(bytes.NewReader(data), int64(len(data)), nil, dicom.SkipProcessingPixelDataValue())
		if err != nil {
			t.Fatal(err)
		}
		// The SEG repeats the source's patient, so a PACS files it there.
		if pid, err := ds.FindElementByTag(tag.PatientID); err != nil || pid.Value.String() != "[P1]" {
			t.Errorf("SEG PatientID %v (%v), want the source's P1", pid, err)
		}
		pd, _ := ds.FindElementByTag(tag.PixelData)
		bits := dicom.MustGetPixelDataInfo(pd.Value).UnprocessedValueData
		k := 0
		for _, s := range ph { // phantom order is position order
			sc := scores[s.InstanceUID]
			if sc == nil {
				t.Fatalf("no score for %s", s.InstanceUID)
			}
			pred, err := imgx.UnpackMask(128, 128, sc.PredBits)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range pred.Pix {
				if bits[k/8]>>(k%8)&1 != v {
					t.Fatalf("series %s: SEG bit %d differs from the predicted mask", series, k)
				}
				k++
			}
		}
		if bin, err := exec.LookPath("dciodvfy"); err == nil {
			p := filepath.Join(dir, fmt.Sprintf("seg-%d.dcm", len(want)))
			os.WriteFile(p, data, 0o644)
			out, _ := exec.Command(bin, p).CombinedOutput()
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "Error") {
					t.Errorf("dciodvfy: %s", l)
				}
			}
		}
	}
	if len(want) != 0 {
		t.Errorf("no SEG for %d series", len(want))
	}

	// Findings: per-slice records for every received instance, and the
	// series-level nodule findings once each series has gone quiet.
	series := map[string]bool{a[0].SeriesUID: true, b[0].SeriesUID: true}
	var sliceRecs, nodules []jetstream.Msg
	bustest.Eventually(t, time.Minute, "findings of every slice and series", func() bool {
		sliceRecs = bustest.Fetch(t, n.js, bus.StreamFindings, bus.PrefixFindings+"slice.tiny.>")
		nodules = nil
		for _, m := range bustest.Fetch(t, n.js, bus.StreamFindings, bus.PrefixFindings+"*.tiny.>") {
			if !strings.HasPrefix(m.Subject(), bus.PrefixFindings+"slice.") {
				nodules = append(nodules, m)
			}
		}
		seen := map[string]bool{}
		for _, m := range nodules {
			var f lungsegv1.Finding
			if err := proto.Unmarshal(m.Data(), &f); err == nil {
				seen[f.SeriesUid] = true
			}
		}
		return len(sliceRecs) >= len(a)+len(b) && seen[a[0].SeriesUID] && seen[b[0].SeriesUID]
	})
	for _, m := range nodules {
		var f lungsegv1.Finding
		if err := proto.Unmarshal(m.Data(), &f); err != nil {
			t.Fatal(err)
		}
		if !series[f.SeriesUid] || f.Model != "tiny" || f.Category == "" || f.DiameterMm <= 0 || len(f.InstanceUids) == 0 {
			t.Errorf("finding %+v", &f)
		}
	}
	stopPipeline()
	<-perr
	if err := <-rerr; err != nil && ctx.Err() == nil {
		t.Errorf("receivers: %v", err)
	}
}

// TestStowRequiresToken runs the STOW-RS receiver with a token: a request
// without it gets 401 and stores nothing; with it the instance is stored.
func TestStowRequiresToken(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ready := make(chan net.Addr, 1)
	rerr := make(chan error, 1)
	go func() {
		rerr <- runReceivers(ctx, receiveConfig{
			acc:     &dicomweb.Acceptor{JS: env.JS, Models: []string{"tiny"}, Log: zerolog.Nop()},
			http:    "127.0.0.1:0",
			httpSec: httpsec.Options{Token: "s3cret"},
			ready:   func(h, _ net.Addr) { ready <- h },
		}, zerolog.Nop())
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-rerr:
		t.Fatal(err)
	}
	dir := t.TempDir()
	ph := phantom.Generate(3, 1, phantom.Options{Rows: 32, Cols: 32})
	if err := phantom.WriteDICOM(dir, ph); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, ph[0].Name()+".dcm"))
	if err != nil {
		t.Fatal(err)
	}
	cl := &dicomweb.Client{BaseURL: "http://" + addr.String() + "/dicomweb"}
	if res, err := cl.Store(ctx, "", data); err == nil || (res != nil && res.Status != 401) {
		t.Fatalf("without token: %v %+v", err, res)
	}
	cl.Header = http.Header{"Authorization": {"Bearer s3cret"}}
	if res, err := cl.Store(ctx, "", data); err != nil || res.Status != 200 || len(res.Stored) != 1 {
		t.Fatalf("with token: %v %+v", err, res)
	}
	cancel()
	<-rerr
}

// receivePipeline starts every stage as receive runs them, with the
// registry reg, on an embedded server with a temporary store: the node
// (closed at the end of the test), the config, the pipeline's context
// and its stop, and where pipeline.Run's result arrives.
func receivePipeline(t *testing.T, ctx context.Context, reg, name string, log zerolog.Logger) (*node, *Config, context.Context, context.CancelFunc, <-chan error) {
	t.Helper()
	cfg := defaultConfig()
	cfg.ModelsDir, cfg.Listen, cfg.LogLevel = reg, "", "warn"
	cfg.DataDir = t.TempDir()
	cfg.Findings.QuietPeriod = Duration(1500 * time.Millisecond)
	n, err := connect(ctx, &cfg, name, true, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	pc, err := pipelineConfig(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(ctx)
	perr := make(chan error, 1)
	go func() { perr <- pipeline.Run(pctx, n.js, pc, log) }()
	return n, &cfg, pctx, stop, perr
}
