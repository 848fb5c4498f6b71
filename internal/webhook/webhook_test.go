package webhook

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

func startAlerts(t *testing.T) *bustest.Env {
	t.Helper()
	env := bustest.Start(t)
	_, err := env.JS.CreateOrUpdateStream(context.Background(), jetstream.StreamConfig{
		Name: DefaultStream, Subjects: []string{DefaultSubject}, Storage: jetstream.FileStorage, Duplicates: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func publishAlert(t *testing.T, js jetstream.JetStream, id, cat string) *lungsegv1.Alert {
	t.Helper()
	a := &lungsegv1.Alert{Id: id, Threshold: "LR4A", Summary: cat + " nodule",
		Finding: &lungsegv1.Finding{Id: "f-" + id, Category: cat, DiameterMm: 12.5, SeriesUid: "1.2.3", Model: "m", ReplayId: "r"}}
	b, err := proto.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := stage.Publish(context.Background(), js, "findings", stage.Out{Subject: "lung.alerts." + cat + ".m.r", Data: b,
		ReplayID: "r", Model: "m", SliceID: id, MsgID: id}, nil); err != nil {
		t.Fatal(err)
	}
	return a
}

// runSink runs a sink's runner until the test ends; retried counts
// failed attempts that will be retried.
func runSink(t *testing.T, js jetstream.JetStream, cfg Config) (retried *atomic.Int64) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := stage.New(js, s.StageConfig(), s, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	retried = &atomic.Int64{}
	r.Hooks.Retried = func(string) { retried.Add(1) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return retried
}

type attempt struct {
	at     time.Time
	status int
	body   []byte
	header http.Header
}

// receiver records every request and fails the first failFirst attempts
// of each alert with 503.
type receiver struct {
	mu        sync.Mutex
	failFirst int
	byKey     map[string][]attempt
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := r.Header.Get("Idempotency-Key")
	rc.mu.Lock()
	defer rc.mu.Unlock()
	status := http.StatusOK
	if len(rc.byKey[key]) < rc.failFirst {
		status = http.StatusServiceUnavailable
	}
	rc.byKey[key] = append(rc.byKey[key], attempt{time.Now(), status, body, r.Header.Clone()})
	w.WriteHeader(status)
}

func (rc *receiver) delivered() map[string]int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := map[string]int{}
	for k, as := range rc.byKey {
		for _, a := range as {
			if a.status == http.StatusOK {
				out[k]++
			}
		}
	}
	return out
}

// TestRetriesWithBackoff runs a real HTTP server that fails the first two
// attempts of every alert: each alert arrives once with 200 on the third
// attempt, the waits between attempts follow the backoff, and the body is
// the alert as JSON.
func TestRetriesWithBackoff(t *testing.T) {
	env := startAlerts(t)
	rc := &receiver{failFirst: 2, byKey: map[string][]attempt{}}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	backoff := []time.Duration{150 * time.Millisecond, 300 * time.Millisecond}
	runSink(t, env.JS, Config{Name: "test", URL: srv.URL, Backoff: backoff, Headers: map[string]string{"Authorization": "Bearer x"}})

	sent := map[string]*lungsegv1.Alert{}
	for _, id := range []string{"a-1", "a-2", "a-3"} {
		sent[id] = publishAlert(t, env.JS, id, "LR4B")
	}
	bustest.Eventually(t, 10*time.Second, "three deliveries", func() bool { return len(rc.delivered()) == 3 })
	time.Sleep(500 * time.Millisecond) // no extra deliveries
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for id, a := range sent {
		as := rc.byKey[id]
		if len(as) != 3 || as[0].status != 503 || as[1].status != 503 || as[2].status != 200 {
			t.Errorf("%s: %d attempts", id, len(as))
			continue
		}
		for i := 1; i < len(as); i++ {
			if gap := as[i].at.Sub(as[i-1].at); gap < backoff[i-1] {
				t.Errorf("%s: attempt %d after %v, backoff %v", id, i+1, gap, backoff[i-1])
			}
		}
		var got lungsegv1.Alert
		if err := protojson.Unmarshal(as[2].body, &got); err != nil || !proto.Equal(&got, a) {
			t.Errorf("%s: body %s (%v)", id, as[2].body, err)
		}
		h := as[2].header
		if h.Get("Content-Type") != "application/json" || h.Get("Authorization") != "Bearer x" || h.Get("Lungseg-Attempt") != "3" ||
			h.Get("Lungseg-Subject") != "lung.alerts.LR4B.m.r" {
			t.Errorf("%s: headers %v", id, h)
		}
	}
}

// TestRejectedAlertIsReported: a 4xx answer is not retried; the alert is
// reported on the errors subject instead of vanishing.
func TestRejectedAlertIsReported(t *testing.T) {
	env := startAlerts(t)
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "no such patient", http.StatusBadRequest)
	}))
	defer srv.Close()
	runSink(t, env.JS, Config{Name: "rej", URL: srv.URL, Backoff: []time.Duration{50 * time.Millisecond}})
	errs := make(chan *lungsegv1.ErrorEvent, 4)
	cons, err := env.JS.OrderedConsumer(context.Background(), bus.StreamErrors, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var ev lungsegv1.ErrorEvent
		if proto.Unmarshal(m.Data(), &ev) == nil {
			errs <- &ev
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Stop()
	publishAlert(t, env.JS, "a-9", "LR4A")
	select {
	case ev := <-errs:
		if ev.Stage != "webhook-rej" || !ev.Permanent || ev.Id != "a-9" {
			t.Errorf("error event %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no error event")
	}
	time.Sleep(200 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Errorf("%d attempts for a rejected alert", n)
	}
}

// TestReceiverDownThenUp: nothing listens at the URL at first (connection
// refused); attempts fail and are retried; once a server listens there,
// every alert is delivered.
func TestReceiverDownThenUp(t *testing.T) {
	env := startAlerts(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	retried := runSink(t, env.JS, Config{Name: "down", URL: "http://" + addr + "/hook", Backoff: []time.Duration{100 * time.Millisecond}})
	for _, id := range []string{"b-1", "b-2"} {
		publishAlert(t, env.JS, id, "LR4A")
	}
	bustest.Eventually(t, 10*time.Second, "failed attempts", func() bool { return retried.Load() >= 6 })

	rc := &receiver{byKey: map[string][]attempt{}}
	srv := httptest.NewUnstartedServer(rc)
	if srv.Listener, err = net.Listen("tcp", addr); err != nil {
		t.Fatalf("listening again on %s: %v", addr, err)
	}
	srv.Start()
	defer srv.Close()
	bustest.Eventually(t, 10*time.Second, "deliveries", func() bool { return len(rc.delivered()) == 2 })
	for k, n := range rc.delivered() {
		if n != 1 {
			t.Errorf("%s delivered %d times", k, n)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{Name: "x", URL: "ftp://h/p"},
		{Name: "x", URL: "http://"},
		{Name: "bad name", URL: "http://h/"},
		{Name: "", URL: "http://h/"},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	s, err := New(Config{Name: "ok", URL: "https://h/p"})
	if err != nil {
		t.Fatal(err)
	}
	sc := s.StageConfig()
	if sc.Durable != "webhook-ok" || sc.MaxDeliver != Unlimited || sc.Stream != DefaultStream || sc.FilterSubjects[0] != DefaultSubject {
		t.Errorf("stage config %+v", sc)
	}
}
