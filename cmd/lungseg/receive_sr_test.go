package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
	"google.golang.org/protobuf/proto"

	"github.com/lungseg/lungseg/ingest/dicomweb"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/seg"
)

// pacsInstance is one instance a stowPACS received.
type pacsInstance struct {
	study, class, instance string
	data                   []byte
}

// stowPACS is a receiving STOW-RS server (a PACS's store endpoint): it
// reads multipart/related requests to /dicom-web/studies[/{study}], keeps
// every Part 10 part and answers with the PS3.18 store response.
type stowPACS struct {
	mu   sync.Mutex
	got  []pacsInstance
	errs []string
}

func (p *stowPACS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fail := func(code int, msg string) {
		p.mu.Lock()
		p.errs = append(p.errs, msg)
		p.mu.Unlock()
		http.Error(w, msg, code)
	}
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/dicom-web/studies") {
		fail(http.StatusNotFound, r.Method+" "+r.URL.Path)
		return
	}
	study := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/dicom-web/studies"), "/")
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/related" || params["type"] != dicomweb.MediaTypeDICOM {
		fail(http.StatusUnsupportedMediaType, "content type "+r.Header.Get("Content-Type"))
		return
	}
	var refs []any
	mr := multipart.NewReader(r.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail(http.StatusBadRequest, "reading parts: "+err.Error())
			return
		}
		b, err := io.ReadAll(part)
		if err != nil {
			fail(http.StatusBadRequest, "reading a part: "+err.Error())
			return
		}
		ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipPixelData())
		if err != nil {
			fail(http.StatusBadRequest, "parsing a part: "+err.Error())
			return
		}
		get := func(t tag.Tag) string {
			e, err := ds.FindElementByTag(t)
			if err != nil {
				return ""
			}
			if v, ok := e.Value.GetValue().([]string); ok && len(v) > 0 {
				return strings.TrimRight(v[0], " \x00")
			}
			return ""
		}
		in := pacsInstance{study: get(tag.StudyInstanceUID), class: get(tag.SOPClassUID), instance: get(tag.SOPInstanceUID), data: b}
		if study != "" && in.study != study {
			fail(http.StatusConflict, "instance of study "+in.study+" sent to "+study)
			return
		}
		p.mu.Lock()
		p.got = append(p.got, in)
		p.mu.Unlock()
		refs = append(refs, map[string]any{
			"00081150": map[string]any{"vr": "UI", "Value": []string{in.class}},
			"00081155": map[string]any{"vr": "UI", "Value": []string{in.instance}},
		})
	}
	w.Header().Set("Content-Type", dicomweb.MediaTypeDICOMJSON)
	json.NewEncoder(w).Encode(map[string]any{"00081199": map[string]any{"vr": "SQ", "Value": refs}})
}

func (p *stowPACS) instances() []pacsInstance {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]pacsInstance(nil), p.got...)
}

// TestReceiveSEGAndSRToPACS sends a phantom CT series by STOW-RS, runs
// every stage with the tiny test model and the receivers with --seg-stow
// pointing at a receiving STOW-RS server, and checks that the server gets
// the series' SEG and its TID 1500 SR, both of the source study and
// valid for dciodvfy, and that the SR's measurement groups are the
// nodule findings the findings stage publishes: same ids, diameters and
// volumes, each referring to the SEG the server received.
func TestReceiveSEGAndSRToPACS(t *testing.T) {
	reg := testRegistry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	n, cfg, pctx, stopPipeline, perr := receivePipeline(t, ctx, reg, "receive-sr-test", log)
	defer stopPipeline()

	pacs := &stowPACS{}
	srv := httptest.NewServer(pacs)
	defer srv.Close()
	ready := make(chan net.Addr, 1)
	rerr := make(chan error, 1)
	go func() {
		rerr <- runReceivers(pctx, receiveConfig{
			acc:  &dicomweb.Acceptor{JS: n.js, Models: []string{"tiny"}, Log: log},
			http: "127.0.0.1:0", segQuiet: 1500 * time.Millisecond,
			stowURL: srv.URL + "/dicom-web", findingsCfg: cfg.findingsConfig(),
			ready: func(h, _ net.Addr) { ready <- h },
		}, log)
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-rerr:
		t.Fatal(err)
	}

	// A phantom series with nodules of 8 mm and more, one file a slice.
	sl := phantom.Generate(73, 6, phantom.Options{Rows: 128, Cols: 128, Series: true, MinDiameterMm: 8, EmptyFraction: -1})
	var parts [][]byte
	dir := t.TempDir()
	for i, s := range sl {
		p := filepath.Join(dir, s.Name()+".dcm")
		err := dicomwrite.WriteFile(p, dicomwrite.Series{StudyUID: s.StudyUID, SeriesUID: s.SeriesUID, Intercept: -1024, PatientID: "P9"},
			dicomwrite.Instance{HU: s.HU, SpacingRowMm: s.SpacingMm, SpacingColMm: s.SpacingMm,
				PositionMm: [3]float64{0, 0, s.PositionMm}, InstanceNumber: i + 1, UID: s.InstanceUID})
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, b)
	}
	study, series := sl[0].StudyUID, sl[0].SeriesUID
	cl := &dicomweb.Client{BaseURL: "http://" + addr.String() + "/dicomweb"}
	if res, err := cl.Store(ctx, study, parts...); err != nil || len(res.Stored) != len(sl) {
		t.Fatalf("STOW-RS in: %v %+v", err, res)
	}

	// The SEG and the SR at the PACS.
	var segIn, srIn *pacsInstance
	bustest.Eventually(t, time.Minute, "a SEG and an SR at the PACS", func() bool {
		for _, in := range pacs.instances() {
			switch in.class {
			case seg.SegmentationStorage:
				segIn = &in
			case seg.EnhancedSRStorage:
				srIn = &in
			}
		}
		return segIn != nil && srIn != nil
	})
	if len(pacs.errs) > 0 {
		t.Errorf("the PACS refused requests: %v", pacs.errs)
	}
	if got := pacs.instances(); len(got) != 2 {
		t.Errorf("the PACS got %d instances, want the SEG and the SR", len(got))
	}
	if segIn.study != study || srIn.study != study {
		t.Errorf("SEG of study %s, SR of study %s; source study %s", segIn.study, srIn.study, study)
	}
	r, err := seg.ReadSR(srIn.data)
	if err != nil {
		t.Fatal(err)
	}
	if r.Template != "1500" || r.Title != "Imaging Measurement Report" || len(r.Sources) != len(sl) {
		t.Errorf("SR: template %q, title %q, %d source images (want %d)", r.Template, r.Title, len(r.Sources), len(sl))
	}
	// The nodule findings of the series: the findings stage publishes them
	// one by one once the series is quiet, so wait for as many as the SR
	// has groups (more fail below).
	var nodules []*lungsegv1.Finding
	bustest.Eventually(t, 2*time.Minute, "the series' nodule findings", func() bool {
		nodules = nil
		for _, m := range bustest.Fetch(t, n.js, bus.StreamFindings, bus.PrefixFindings+"*.tiny.>") {
			if strings.HasPrefix(m.Subject(), bus.PrefixFindings+"slice.") {
				continue
			}
			var f lungsegv1.Finding
			if err := proto.Unmarshal(m.Data(), &f); err != nil {
				t.Fatal(err)
			}
			if f.SeriesUid == series {
				nodules = append(nodules, &f)
			}
		}
		return len(nodules) > 0 && len(nodules) >= len(r.Groups)
	})
	byID := map[string]*lungsegv1.Finding{}
	for _, f := range nodules {
		byID[f.Id] = f
	}
	if len(r.Groups) != len(nodules) {
		t.Errorf("the SR has %d measurement groups, the findings stage %d nodules", len(r.Groups), len(nodules))
	}
	t.Logf("%d nodules, %d measurement groups", len(nodules), len(r.Groups))
	same := func(a, b float64) bool { return math.Abs(a-b) <= 1e-10*math.Max(1, math.Abs(b)) }
	for i, g := range r.Groups {
		f := byID[g.TrackingID]
		if f == nil {
			t.Errorf("group %d: tracking id %q is no finding of the series", i, g.TrackingID)
			continue
		}
		if !same(g.DiameterMm, f.DiameterMm) || g.DiameterUnit != "mm" || !same(g.VolumeMm3, f.VolumeMm3) || g.VolumeUnit != "mm3" {
			t.Errorf("group %s: %g %s, %g %s; the finding says %g mm, %g mm³", f.Id, g.DiameterMm, g.DiameterUnit, g.VolumeMm3, g.VolumeUnit, f.DiameterMm, f.VolumeMm3)
		}
		if g.SEGInstance != segIn.instance || g.Segment != 1 || g.SourceSeries != series || g.AlgorithmName != "tiny" || g.Finding != "Nodule" || g.Site != "Lung" {
			t.Errorf("group %s: %+v (SEG at the PACS %s)", f.Id, g, segIn.instance)
		}
		if !strings.Contains(g.Evaluation, "size-based estimate "+f.Category) {
			t.Errorf("group %s: evaluation %q, category %s", f.Id, g.Evaluation, f.Category)
		}
	}
	// Both announced on the SEG results subject, SEG first.
	var kinds []string
	for _, m := range bustest.Fetch(t, n.js, bus.StreamEvents, seg.ResultsSubject("tiny", "")) {
		if m.Headers().Get(seg.HdrSeries) == series {
			kinds = append(kinds, m.Headers().Get(seg.HdrObject))
		}
	}
	if strings.Join(kinds, ",") != seg.ObjectSEG+","+seg.ObjectSR {
		t.Errorf("events %v, want the SEG's and then the SR's", kinds)
	}
	t.Run("dciodvfy", func(t *testing.T) {
		bin := testenv.RequireCommand(t, "dciodvfy") // Debian dicom3tools
		for name, in := range map[string]*pacsInstance{"SEG": segIn, "SR": srIn} {
			p := filepath.Join(t.TempDir(), name+".dcm")
			if err := os.WriteFile(p, in.data, 0o644); err != nil {
				t.Fatal(err)
			}
			out, _ := exec.Command(bin, p).CombinedOutput()
			if want := map[string]string{"SEG": "Segmentation", "SR": "EnhancedSR"}[name]; !strings.Contains(string(out), want) {
				t.Errorf("dciodvfy did not recognise the %s:\n%s", name, out)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "Error") {
					t.Errorf("dciodvfy %s: %s", name, l)
				}
			}
		}
	})
	stopPipeline()
	<-perr
	if err := <-rerr; err != nil && ctx.Err() == nil {
		t.Errorf("receivers: %v", err)
	}
}
