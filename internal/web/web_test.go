package web

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"image/png"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/overlay"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// square returns a rows×cols mask with the square [r0,r1)×[c0,c1) set.
func square(rows, cols, r0, r1, c0, c1 int) *imgx.Mask {
	m := imgx.NewMask(rows, cols)
	for r := r0; r < r1; r++ {
		for c := c0; c < c1; c++ {
			m.Pix[r*cols+c] = 1
		}
	}
	return m
}

// fixture is one 64×64 slice: air with a soft-tissue disc, a truth square
// and two predictions (one exact, one shifted).
type fixture struct {
	meta  *lungsegv1.SliceMeta
	hu    *imgx.HU
	truth *imgx.Mask
	preds map[string]*imgx.Mask
}

func newFixture(replay, id string) fixture {
	const n = 64
	hu := imgx.NewHU(n, n)
	for r := 0; r < n; r++ {
		for c := 0; c < n; c++ {
			hu.Pix[r*n+c] = int16(-1000 + 10*r + c)
		}
	}
	return fixture{
		meta:  &lungsegv1.SliceMeta{Id: id, ReplayId: replay, Rows: n, Cols: n, SpacingRowMm: 0.5, SpacingColMm: 0.5, Label: "LR3"},
		hu:    hu,
		truth: square(n, n, 20, 40, 20, 40),
		preds: map[string]*imgx.Mask{"alpha": square(n, n, 20, 40, 20, 40), "beta": square(n, n, 30, 50, 30, 50)},
	}
}

func (f fixture) publish(t *testing.T, ctx context.Context, env *bustest.Env, raw bool, models ...string) {
	t.Helper()
	pub := func(subj string, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.JS.Publish(ctx, subj, b); err != nil {
			t.Fatal(err)
		}
	}
	if raw {
		pub(bus.SubjRaw, &lungsegv1.Slice{Meta: f.meta, Hu: f.hu.EncodeInt16(), MaskBits: f.truth.PackBits(), HasMask: true})
	}
	for _, m := range models {
		p := f.preds[m]
		inter, a, b := 0, 0, 0
		for i := range p.Pix {
			if p.Pix[i] != 0 {
				a++
				if f.truth.Pix[i] != 0 {
					inter++
				}
			}
			if f.truth.Pix[i] != 0 {
				b++
			}
		}
		dice := 2 * float64(inter) / float64(a+b)
		pub(bus.ScoresSubject(m, f.meta.ReplayId), &lungsegv1.Score{Meta: f.meta, Model: m, HasTruth: true, Dice: dice,
			Iou: float64(inter) / float64(a+b-inter), Rmse: 0.1, TruthPixels: int64(b), PredictedPixels: int64(a),
			PredBits: p.PackBits(), InferenceUs: 2500})
	}
}

// sse reads server-sent events from a response body.
type sse struct {
	r  *bufio.Reader
	ch chan [2]string
}

func readSSE(body io.Reader) *sse {
	s := &sse{r: bufio.NewReader(body), ch: make(chan [2]string, 256)}
	go func() {
		defer close(s.ch)
		var name, data string
		for {
			line, err := s.r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				name = line[7:]
			case strings.HasPrefix(line, "data: "):
				data = line[6:]
			case line == "" && name != "":
				s.ch <- [2]string{name, data}
				name, data = "", ""
			}
		}
	}()
	return s
}

// until returns the first event named name for which ok holds.
func (s *sse) until(t *testing.T, name string, ok func(data []byte) bool) []byte {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev, open := <-s.ch:
			if !open {
				t.Fatalf("event stream ended waiting for %s", name)
			}
			if ev[0] == name && ok([]byte(ev[1])) {
				return []byte(ev[1])
			}
		case <-timeout:
			t.Fatalf("no %s event in time", name)
		}
	}
}

func startServer(t *testing.T, o Options) (*bustest.Env, *Server, *httptest.Server, context.Context) {
	t.Helper()
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	o.Log = zerolog.Nop()
	s, err := New(env.JS, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return env, s, hs, ctx
}

func get(t *testing.T, u string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestViewerStreamsAndRenders publishes a raw slice and two models'
// scores through JetStream and checks what the page receives and what it
// would draw.
func TestViewerStreamsAndRenders(t *testing.T) {
	env, _, hs, ctx := startServer(t, Options{})

	resp := get(t, hs.URL+"/events")
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	ev := readSSE(resp.Body)
	var snap Snapshot
	if err := json.Unmarshal(ev.until(t, "snapshot", func([]byte) bool { return true }), &snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.Slices) != 0 || snap.Truth != "#00ff00" {
		t.Fatalf("initial snapshot %+v", snap)
	}

	// The raw slice first (the viewer reads raw slices and scores with
	// separate consumers, so their relative order is not guaranteed).
	f := newFixture("r1", "case/7")
	f.publish(t, ctx, env, true)
	ev.until(t, "slice", func(b []byte) bool { return strings.Contains(string(b), `"has_ct":true`) })
	f.publish(t, ctx, env, false, "alpha", "beta")
	f2 := newFixture("r1", "case/8")
	f2.publish(t, ctx, env, false, "alpha") // score without its raw slice

	var view SliceView
	if err := json.Unmarshal(ev.until(t, "slice", func(b []byte) bool {
		var v SliceView
		_ = json.Unmarshal(b, &v)
		return v.ID == "case/7" && len(v.Scores) == 2 && v.HasCT
	}), &view); err != nil {
		t.Fatal(err)
	}
	if !view.HasCT || !view.HasTruth || view.Truth != 400 || view.Key != Key("r1", "case/7") || view.Label != "LR3" {
		t.Errorf("slice view %+v", view)
	}
	if view.Scores[0].Model != "alpha" || view.Scores[0].Dice != 1 || view.Scores[1].Model != "beta" {
		t.Fatalf("scores %+v", view.Scores)
	}
	// alpha predicts a 20×20 square at 0.5 mm: one 400-pixel region, the
	// disc of 100 mm² has a diameter of 11.28 mm (LR4A).
	fd := view.Scores[0].Findings
	if len(fd) != 1 || fd[0].Pixels != 400 || fd[0].Category != "LR4A" || fd[0].DiameterMm < 11.27 || fd[0].DiameterMm > 11.29 {
		t.Errorf("findings %+v", fd)
	}
	ev.until(t, "alert", func(b []byte) bool {
		return strings.Contains(string(b), `"low-dice"`) && strings.Contains(string(b), "beta")
	})
	var st Stats
	if err := json.Unmarshal(ev.until(t, "stats", func(b []byte) bool {
		var s Stats
		_ = json.Unmarshal(b, &s)
		return len(s.Models) == 2 && s.Models[0].Slices == 2
	}), &st); err != nil {
		t.Fatal(err)
	}
	// beta's square overlaps the truth on 10×10: Dice = 200/800.
	if st.Replay != "r1" || st.Models[0].MeanDice != 1 || st.Models[1].MeanDice != 0.25 || st.Models[0].InferenceMs != 2.5 {
		t.Errorf("stats %+v", st)
	}
	if st.Models[0].Color == st.Models[1].Color {
		t.Error("two models share a colour")
	}

	// The rendered slice: native size, model outlines, truth on top.
	resp2 := get(t, hs.URL+"/api/slice.png?key="+url.QueryEscape(view.Key))
	defer resp2.Body.Close()
	if resp2.StatusCode != 200 || resp2.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("slice.png: %s %s", resp2.Status, resp2.Header.Get("Content-Type"))
	}
	img, err := png.Decode(resp2.Body)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 64 || b.Dy() != 64 {
		t.Fatalf("size %v", b)
	}
	rgba := func(x, y int) color.RGBA { return color.RGBAModel.Convert(img.At(x, y)).(color.RGBA) }
	alpha, beta := parseHex(st.Models[0].Color), parseHex(st.Models[1].Color)
	// alpha follows the truth exactly: along the shared edge the two
	// alternate in dashes.
	edge := map[color.RGBA]int{}
	for y := 21; y < 39; y++ {
		edge[rgba(20, y)]++
	}
	if edge[overlay.TruthColor] < 6 || edge[alpha] < 6 || edge[overlay.TruthColor]+edge[alpha] != 18 {
		t.Errorf("shared truth/alpha edge colours %v", edge)
	}
	if c := rgba(49, 45); c != beta {
		t.Errorf("beta edge %v, want %v", c, beta)
	}
	if c := rgba(19, 30); c != alpha { // alpha's 2-pixel outline shows outside the truth
		t.Errorf("alpha outer edge %v, want %v", c, alpha)
	}
	if c := rgba(5, 5); c.R != c.G || c.G != c.B {
		t.Errorf("background %v is not grey", c)
	}
	// Only beta.
	resp3 := get(t, hs.URL+"/api/slice.png?size=128&layers=beta&key="+url.QueryEscape(view.Key))
	defer resp3.Body.Close()
	img3, err := png.Decode(resp3.Body)
	if err != nil {
		t.Fatal(err)
	}
	if b := img3.Bounds(); b.Dx() != 128 {
		t.Fatalf("size %v", b)
	}
	if c := color.RGBAModel.Convert(img3.At(40, 60)).(color.RGBA); c.R != c.G || c.G != c.B {
		t.Errorf("truth drawn although not asked for: %v", c)
	}

	// HU values, bit for bit.
	resp4 := get(t, hs.URL+"/api/hu?key="+url.QueryEscape(view.Key))
	defer resp4.Body.Close()
	b, _ := io.ReadAll(resp4.Body)
	if resp4.Header.Get("X-Rows") != "64" || resp4.Header.Get("X-Cols") != "64" || len(b) != 64*64*2 {
		t.Fatalf("hu: rows %s cols %s, %d bytes", resp4.Header.Get("X-Rows"), resp4.Header.Get("X-Cols"), len(b))
	}
	if v := int16(binary.LittleEndian.Uint16(b[2*(10*64+3):])); v != f.hu.At(10, 3) {
		t.Errorf("HU at (10,3) = %d, want %d", v, f.hu.At(10, 3))
	}

	// A score without its CT: known but not renderable; unknown keys 404.
	for _, c := range []struct {
		q    string
		code int
	}{
		{"key=" + url.QueryEscape(Key("r1", "case/8")), 404},
		{"key=nope", 404},
		{"key=" + url.QueryEscape(view.Key) + "&size=5000", 400},
		{"key=" + url.QueryEscape(view.Key) + "&thick=9", 400},
	} {
		r := get(t, hs.URL+"/api/slice.png?"+c.q)
		r.Body.Close()
		if r.StatusCode != c.code {
			t.Errorf("slice.png?%s: %d, want %d", c.q, r.StatusCode, c.code)
		}
	}

	// An error event becomes an alert and counts in the stats.
	if err := publishError(ctx, env, "ingest", "r1", "bad.dcm", "truncated file"); err != nil {
		t.Fatal(err)
	}
	ev.until(t, "alert", func(b []byte) bool { return strings.Contains(string(b), "truncated file") })

	// A new page gets everything in its snapshot.
	resp5 := get(t, hs.URL+"/api/state")
	defer resp5.Body.Close()
	var snap2 Snapshot
	if err := json.NewDecoder(resp5.Body).Decode(&snap2); err != nil {
		t.Fatal(err)
	}
	if len(snap2.Slices) != 2 || snap2.Slices[0].ID != "case/8" || len(snap2.Models) != 2 || len(snap2.Stats) != 1 || snap2.Stats[0].Errors != 1 {
		t.Errorf("snapshot: %d slices, models %v, stats %+v", len(snap2.Slices), snap2.Models, snap2.Stats)
	}

	// The page itself, with its script and stylesheet, from the binary.
	for _, p := range []string{"/", "/app.js", "/style.css"} {
		r := get(t, hs.URL+p)
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != 200 || len(body) < 100 {
			t.Errorf("%s: %s, %d bytes", p, r.Status, len(body))
		}
		if strings.Contains(string(body), "http://") || strings.Contains(string(body), "https://") {
			t.Errorf("%s refers to an external URL", p)
		}
	}
}

func publishError(ctx context.Context, env *bustest.Env, stage, replay, id, msg string) error {
	b, err := proto.Marshal(&lungsegv1.ErrorEvent{Stage: stage, ReplayId: replay, Id: id, Error: msg, Permanent: true})
	if err != nil {
		return err
	}
	_, err = env.JS.Publish(ctx, bus.ErrorsSubject(stage, replay), b)
	return err
}

func TestToken(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_total", Help: "x"})
	reg.MustRegister(c)
	c.Add(3)
	_, _, hs, _ := startServer(t, Options{Token: "s3cret", Gatherer: reg})
	for _, c := range []struct {
		path string
		hdr  []string
		code int
	}{
		{"/", nil, 401},
		{"/api/state", nil, 401},
		{"/metrics", nil, 401},
		{"/metrics", []string{"Authorization", "Bearer wrong"}, 401},
		{"/metrics", []string{"Authorization", "Bearer s3cret"}, 200},
		{"/api/state?token=s3cret", nil, 200},
		{"/api/state", []string{"Cookie", tokenCookie + "=s3cret"}, 200},
		{"/healthz", nil, 200},
	} {
		r := get(t, hs.URL+c.path, c.hdr...)
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if r.StatusCode != c.code {
			t.Errorf("%s %v: %d, want %d", c.path, c.hdr, r.StatusCode, c.code)
		}
		if c.path == "/metrics" && c.code == 200 && !strings.Contains(string(body), "test_total 3") {
			t.Errorf("metrics body lacks the counter:\n%s", body)
		}
	}
	// Visiting the page with ?token= sets the cookie the page's own
	// requests then carry.
	r := get(t, hs.URL+"/?token=s3cret")
	r.Body.Close()
	var found bool
	for _, ck := range r.Cookies() {
		found = found || (ck.Name == tokenCookie && ck.Value == "s3cret" && ck.HttpOnly)
	}
	if r.StatusCode != 200 || !found {
		t.Errorf("page with token: %s, cookie set %v", r.Status, found)
	}
}

func TestHealthz(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A durable consumer nobody pulls from.
	if _, err := env.JS.CreateOrUpdateConsumer(ctx, bus.StreamReady, jsConsumer("segment-m", bus.ReadySubject("m"))); err != nil {
		t.Fatal(err)
	}
	s, err := New(env.JS, Options{Log: zerolog.Nop(), Checks: map[string]Check{
		"nats":  NATSCheck(env.NC, env.JS),
		"model": ConsumerCheck(env.JS, bus.StreamReady, "segment-m"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	defer hs.Close()
	health := func() (int, Health) {
		r := get(t, hs.URL+"/healthz")
		defer r.Body.Close()
		var h Health
		if err := json.NewDecoder(r.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		return r.StatusCode, h
	}
	code, h := health()
	if code != 503 || h.Status != "fail" || h.Checks["nats"] != "ok" || !strings.Contains(h.Checks["model"], "no worker") {
		t.Fatalf("no worker: %d %+v", code, h)
	}
	// A worker pulls: healthy.
	cons, err := env.JS.Consumer(ctx, bus.StreamReady, "segment-m")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jsMsg) { _ = m.Ack() })
	if err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, 10*time.Second, "healthy", func() bool { c, _ := health(); return c == 200 })
	cc.Stop()
	// The model's consumer is gone: unhealthy again.
	if err := env.JS.DeleteConsumer(ctx, bus.StreamReady, "segment-m"); err != nil {
		t.Fatal(err)
	}
	if code, h = health(); code != 503 || !strings.Contains(h.Checks["model"], "segment-m") {
		t.Fatalf("deleted consumer: %d %+v", code, h)
	}
	// NATS gone: the NATS check fails.
	env.NC.Close()
	if err := NATSCheck(env.NC, env.JS)(ctx); err == nil {
		t.Fatal("NATS check passes on a closed connection")
	}
	if err := ConsumerCheck(env.JS, bus.StreamReady, "x")(ctx); err == nil || errors.Is(err, ErrNoWorker) {
		t.Fatalf("consumer check on a closed connection: %v", err)
	}
}

func TestHubEvictsAndDropsSlowClients(t *testing.T) {
	h := newHub(2, 3)
	for i := 0; i < 3; i++ {
		f := newFixture("r", fmt.Sprint(i))
		if err := h.addSlice(&lungsegv1.Slice{Meta: f.meta, Hu: f.hu.EncodeInt16()}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.pixels(Key("r", "0"), nil); !errors.Is(err, ErrNoSlice) {
		t.Errorf("oldest slice still cached: %v", err)
	}
	if _, err := h.pixels(Key("r", "2"), nil); err != nil {
		t.Errorf("newest slice: %v", err)
	}
	// Bad messages are rejected before they are cached.
	f := newFixture("r", "bad")
	if err := h.addSlice(&lungsegv1.Slice{Meta: f.meta, Hu: []byte{1, 2}}); !errors.Is(err, imgx.ErrShape) {
		t.Errorf("short HU: %v", err)
	}
	if err := h.addScore(&lungsegv1.Score{Meta: f.meta, Model: "m", PredBits: []byte{1}}); !errors.Is(err, imgx.ErrShape) {
		t.Errorf("short prediction: %v", err)
	}
	big := &lungsegv1.SliceMeta{Id: "x", Rows: 1 << 20, Cols: 1}
	if err := h.addSlice(&lungsegv1.Slice{Meta: big}); err == nil {
		t.Error("oversized slice accepted")
	}
	// A client that does not read is dropped, not waited for.
	c, _ := h.subscribe(1, 10)
	for i := 0; i < 3; i++ {
		f := newFixture("r", fmt.Sprint("s", i))
		_ = h.addSlice(&lungsegv1.Slice{Meta: f.meta, Hu: f.hu.EncodeInt16()})
	}
	n := 0
	for range c {
		n++
	}
	if n != 1 {
		t.Errorf("slow client got %d events before being dropped, want 1", n)
	}
	// Alerts are bounded.
	for i := 0; i < 5; i++ {
		h.addError(&lungsegv1.ErrorEvent{Stage: "ingest", ReplayId: "r", Id: fmt.Sprint(i), Error: "e"})
	}
	if len(h.alerts) != 3 || h.alerts[2].ID != "4" {
		t.Errorf("alerts %+v", h.alerts)
	}
}

type jsMsg = jetstream.Msg

func jsConsumer(name, filter string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{Durable: name, FilterSubject: filter, AckPolicy: jetstream.AckExplicitPolicy}
}

// TestViewerShowsNoduleFindingsAndAlerts publishes a nodule finding, a
// per-slice component record and an alert of the findings stage; the page
// lists the finding and the alert, not the per-slice record.
func TestViewerShowsNoduleFindingsAndAlerts(t *testing.T) {
	env, _, hs, ctx := startServer(t, Options{})
	resp := get(t, hs.URL+"/events")
	defer resp.Body.Close()
	ev := readSSE(resp.Body)
	ev.until(t, "snapshot", func([]byte) bool { return true })

	f := &lungsegv1.Finding{Id: "f-1", ReplayId: "r1", Model: "m", Category: "LR4B", DiameterMm: 17.5, SliceIds: []string{"s3"}}
	pub := func(subject string, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.JS.Publish(ctx, subject, b); err != nil {
			t.Fatal(err)
		}
	}
	pub(bus.PrefixFindings+"slice.m.r1", &lungsegv1.SliceFindings{})
	pub(bus.PrefixFindings+"LR4B.m.r1", f)
	pub(bus.PrefixAlerts+"LR4B.m.r1", &lungsegv1.Alert{Id: "a-1", Finding: f, Threshold: "LR4A", Summary: "LR4B nodule 17.5 mm"})
	// The two arrive through different consumers, in either order.
	got := map[string]Alert{}
	ev.until(t, "alert", func(b []byte) bool {
		var a Alert
		if err := json.Unmarshal(b, &a); err != nil {
			t.Fatal(err)
		}
		got[a.Kind] = a
		_, n := got["nodule"]
		_, al := got["alert"]
		return n && al
	})
	if a := got["nodule"]; a.ID != "s3" || !strings.Contains(a.Text, "17.5 mm") {
		t.Errorf("finding shown as %+v", a)
	}
	if a := got["alert"]; !strings.Contains(a.Text, "ALERT") || !strings.Contains(a.Text, "LR4B nodule 17.5 mm") {
		t.Errorf("alert shown as %+v", a)
	}
	for k := range got {
		if k != "nodule" && k != "alert" {
			t.Errorf("unexpected entry %+v", got[k])
		}
	}
}

// TestHubStatsAsTheCLI: the running scores lead with the mean over slices
// with truth pixels, pool second, and count empty-truth slices apart, so a
// model that misses every nodule of a series reads 0, not the share of
// empty slices it got right.
func TestHubStatsAsTheCLI(t *testing.T) {
	h := newHub(16, 16)
	meta := func(id string) *lungsegv1.SliceMeta {
		return &lungsegv1.SliceMeta{Id: id, ReplayId: "r", Rows: 8, Cols: 8}
	}
	score := func(id string, dice float64, truth, pred int64) {
		t.Helper()
		m := imgx.NewMask(8, 8)
		for i := 0; i < int(pred); i++ {
			m.Pix[i] = 1
		}
		if err := h.addScore(&lungsegv1.Score{Meta: meta(id), Model: "m", HasTruth: true, Dice: dice, Iou: dice / (2 - dice),
			TruthPixels: truth, PredictedPixels: pred, BothEmpty: truth == 0 && pred == 0, PredBits: m.PackBits()}); err != nil {
			t.Fatal(err)
		}
	}
	// a missed nodule, three clean empty slices: the old running mean
	// over every scored slice read 0.75
	score("s1", 0, 10, 0)
	score("s2", 0, 0, 0)
	score("s3", 0, 0, 0)
	score("s4", 0, 0, 0)
	h.mu.Lock()
	st := h.statsViewLocked("r").Models[0]
	h.mu.Unlock()
	if st.WithTruth != 1 || st.MeanDice != 0 || st.EmptyClean != 3 || st.EmptyFP != 0 || st.PooledDice != 0 {
		t.Fatalf("after a miss: %+v", st)
	}
	// Dice 0.5 on 20 truth + 20 predicted (10 shared), and a false positive
	score("s5", 0.5, 20, 20)
	score("s6", 0, 0, 5)
	h.mu.Lock()
	st = h.statsViewLocked("r").Models[0]
	h.mu.Unlock()
	// mean over the two slices with truth: (0 + 0.5)/2; pooled 2·10/(10+40+5)
	if st.WithTruth != 2 || st.MeanDice != 0.25 || st.EmptyClean != 3 || st.EmptyFP != 1 || st.Scored != 6 {
		t.Errorf("stats %+v", st)
	}
	if want := 20.0 / 55; math.Abs(st.PooledDice-want) > 1e-12 {
		t.Errorf("pooled %v, want %v", st.PooledDice, want)
	}
}
