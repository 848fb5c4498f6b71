package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
	"google.golang.org/protobuf/proto"
)

// TestCategoryTable feeds phantom slices with their ground truth as the
// prediction and pickle-like metadata (label1, assumed 0.7 mm spacing):
// every slice whose largest nodule is round and clear of a category
// boundary must land on the diagonal; unlabelled slices are not counted.
func TestCategoryTable(t *testing.T) {
	ps := phantom.Generate(11, 40, phantom.Options{Rows: 160, Cols: 160, NoiseSigma: -1})
	tab := newCategoryTable(findings.Config{MinSizePx: 3})
	labelled, clear := 0, 0
	for i, s := range ps {
		meta := &lungsegv1.SliceMeta{Id: "pkl/" + s.Name(), Source: "pkl", Rows: int32(s.HU.Rows), Cols: int32(s.HU.Cols),
			SpacingRowMm: 0.7, SpacingColMm: 0.7, SpacingAssumed: true, Label: s.Label}
		if i%7 == 0 {
			meta.Label = "" // unlabelled: not counted
		}
		if err := tab.add(&lungsegv1.Score{Meta: meta, Model: "truth", PredBits: s.Mask.PackBits()}); err != nil {
			t.Fatal(err)
		}
		if meta.Label == "" || len(s.Nodules) == 0 {
			continue
		}
		labelled++
		var big phantom.Nodule
		for _, n := range s.Nodules {
			if n.DiameterMm > big.DiameterMm {
				big = n
			}
		}
		if !big.Irregular && phantom.LungRADS(big.DiameterMm-0.7) == s.Label && phantom.LungRADS(big.DiameterMm+0.7) == s.Label {
			clear++
		}
	}
	// An empty prediction on a labelled slice counts as "none".
	empty := imgx.NewMask(8, 8)
	if err := tab.add(&lungsegv1.Score{Meta: &lungsegv1.SliceMeta{Id: "e", Rows: 8, Cols: 8, Label: "LR3"}, Model: "truth", PredBits: empty.PackBits()}); err != nil {
		t.Fatal(err)
	}
	m := tab.counts["truth"]
	total, agree := 0, 0
	for k, n := range m {
		total += n
		if k[0] == k[1] {
			agree += n
		}
	}
	if total != labelled+1 || m[[2]string{"LR3", noneCategory}] < 1 {
		t.Errorf("%d slices counted, want %d; table %v", total, labelled+1, m)
	}
	if agree < clear || clear < 10 {
		t.Errorf("%d on the diagonal, want at least the %d clear cases", agree, clear)
	}
	var b bytes.Buffer
	tab.print(&b)
	out := b.String()
	for _, want := range []string{"model truth", "label \\ estimate", "none", "LR4B", "size-based"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	t.Logf("\n%s", out)
	if err := tab.add(&lungsegv1.Score{Meta: &lungsegv1.SliceMeta{Id: "x", Rows: 8, Cols: 8, Label: "LR2"}, PredBits: []byte{1}}); err == nil {
		t.Error("bad mask accepted")
	}
}

func sampleFinding() *lungsegv1.Finding {
	return &lungsegv1.Finding{Id: "f-1", ReplayId: "r", Model: "unet", StudyUid: "1.2", SeriesUid: "1.2.3",
		InstanceUids: []string{"1.2.3.1", "1.2.3.2"}, SliceIds: []string{"s/1", "s/2"}, Category: findings.LR4A,
		DiameterMm: 9.25, VolumeMm3: 300, Slices: 2, FirstPosition: 1, LastPosition: 2.25, MeanHu: 31, HuKnown: true,
		UnixNano: time.Now().UnixNano()}
}

func TestFormatMessage(t *testing.T) {
	f := sampleFinding()
	fb, _ := proto.Marshal(f)
	ab, _ := proto.Marshal(findings.NewAlert(f, findings.LR4A, time.Now()))
	sb, _ := proto.Marshal(&lungsegv1.SliceFindings{Meta: &lungsegv1.SliceMeta{Id: "s/1"}, Model: "unet", Category: findings.LR2,
		Components: []*lungsegv1.Component{{Index: 1, DiameterMm: 4.2, AreaPx: 20, AreaMm2: 9.8, ProbKnown: true, MeanProb: 0.9}}})
	tests := []struct {
		subject string
		data    []byte
		want    []string
	}{
		{"lung.findings.LR4A.unet.r", fb, []string{"FINDING f-1", "LR4A (size-based estimate) nodule 9.2 mm", "300 mm³ over 2 slices", "31 HU", "series 1.2.3", "instances 1.2.3.1 .. 1.2.3.2 (2)", "study 1.2"}},
		{"lung.alerts.LR4A.unet.r", ab, []string{"ALERT a-1 (at or above LR4A)", "nodule 9.2 mm"}},
		{"lung.findings.slice.unet.r", sb, []string{"slice s/1  unet: 1 component(s), largest LR2", "#1 4.2 mm, 20 px", "p 0.90"}},
		{"lung.findings.LR2.unet.r", []byte{0xff}, []string{"undecodable finding"}},
		{"lung.other", []byte("abc"), []string{"lung.other: 3 bytes"}},
	}
	for _, tc := range tests {
		got := formatMessage(tc.subject, tc.data)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", tc.subject, got, w)
			}
		}
	}
}

// TestTail subscribes on a real JetStream server and prints findings that
// were stored before (--all) and that arrive later; per-slice components
// are left out unless asked for.
func TestTail(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, sc := range findings.Streams(bus.StreamOptions{}) {
		if _, err := env.JS.CreateOrUpdateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	pub := func(subject string, m proto.Message, id string) {
		b, _ := proto.Marshal(m)
		if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: subject, Data: b, MsgID: id}, nil); err != nil {
			t.Fatal(err)
		}
	}
	f := sampleFinding()
	pub(findings.SliceSubject("unet", "r"), &lungsegv1.SliceFindings{Meta: &lungsegv1.SliceMeta{Id: "s/1"}, Model: "unet"}, "s1")
	pub(findings.FindingSubject(f.Category, "unet", "r"), f, "f1")

	var out testenv.SyncBuffer
	done := make(chan error, 1)
	go func() { done <- tail(ctx, env.JS, "lung.findings.>", true, false, &out) }()
	bustest.Eventually(t, 5*time.Second, "stored finding printed", func() bool { return strings.Contains(out.String(), "FINDING f-1") })
	f2 := sampleFinding()
	f2.Id, f2.Category, f2.DiameterMm = "f-2", findings.LR4B, 17
	pub(findings.FindingSubject(f2.Category, "unet", "r"), f2, "f2")
	bustest.Eventually(t, 5*time.Second, "new finding printed", func() bool { return strings.Contains(out.String(), "FINDING f-2") })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "slice s/1") {
		t.Errorf("per-slice findings printed without --slices:\n%s", out.String())
	}
	if err := tail(context.Background(), env.JS, "nowhere.>", false, false, &out); err == nil {
		t.Error("subject without a stream accepted")
	}
}
