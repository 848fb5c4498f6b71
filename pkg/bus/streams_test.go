package bus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/dlq"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestEveryStreamHasAByteLimit: no stream of a deployment is unbounded;
// the work streams drop what every consumer acknowledged and refuse,
// rather than drop, when full; the others stay inspectable and drop
// their oldest.
func TestEveryStreamHasAByteLimit(t *testing.T) {
	all := append(bus.Streams(bus.StreamOptions{}), dlq.Streams(bus.StreamOptions{})...)
	for _, c := range all {
		t.Run(c.Name, func(t *testing.T) {
			if c.MaxBytes <= 0 {
				t.Errorf("max_bytes %d: unbounded", c.MaxBytes)
			}
			work := slices.Contains(bus.WorkStreams, c.Name)
			switch {
			case work && (c.Retention != jetstream.InterestPolicy || c.Discard != jetstream.DiscardNew):
				t.Errorf("work stream: retention %v, discard %v; want interest, new", c.Retention, c.Discard)
			case !work && c.Retention == jetstream.InterestPolicy:
				t.Errorf("inspectable stream with interest retention")
			case !work && c.Discard != jetstream.DiscardOld:
				t.Errorf("discard %v; want old", c.Discard)
			}
		})
	}
	for _, w := range []string{bus.StreamRaw, bus.StreamReady, bus.StreamMasks} {
		if !slices.Contains(bus.WorkStreams, w) {
			t.Errorf("%s is not a work stream", w)
		}
	}
}

func startJS(t *testing.T, o bus.StreamOptions) jetstream.JetStream {
	t.Helper()
	s, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := bus.ConnectEmbedded(s, "streams-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := bus.JetStream(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, o); err != nil {
		t.Fatal(err)
	}
	return js
}

func state(t *testing.T, js jetstream.JetStream, name string) jetstream.StreamState {
	t.Helper()
	st, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

// ackAll fetches and acknowledges n messages of durable.
func ackAll(t *testing.T, c jetstream.Consumer, n int) {
	t.Helper()
	for got := 0; got < n; {
		b, err := c.Fetch(n-got, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for m := range b.Messages() {
			if err := m.DoubleAck(context.Background()); err != nil {
				t.Fatal(err)
			}
			k++
		}
		if k == 0 {
			t.Fatalf("fetched %d of %d", got, n)
		}
		got += k
	}
}

// TestWorkStreamKeepsOnlyPending: RAW holds a slice until every consumer
// has acknowledged it, then drops it; when full it refuses new slices and
// keeps every pending one. SCORES keeps what was acknowledged, within its
// byte limit, dropping the oldest.
func TestWorkStreamKeepsOnlyPending(t *testing.T) {
	const limit = 1 << 20
	js := startJS(t, bus.StreamOptions{MaxBytes: limit})
	ctx := context.Background()
	var cons []jetstream.Consumer
	for _, d := range []string{"preprocess", "findings-hu"} {
		c, err := js.CreateOrUpdateConsumer(ctx, bus.StreamRaw, jetstream.ConsumerConfig{Durable: d, AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			t.Fatal(err)
		}
		cons = append(cons, c)
	}
	payload := make([]byte, 100<<10)
	publish := func(subject string, i int) error {
		_, err := js.Publish(ctx, subject, payload, jetstream.WithMsgID(fmt.Sprintf("%s-%d", subject, i)))
		return err
	}
	for i := range 5 {
		if err := publish(bus.SubjRaw, i); err != nil {
			t.Fatal(err)
		}
	}
	ackAll(t, cons[0], 5)
	if s := state(t, js, bus.StreamRaw); s.Msgs != 5 {
		t.Fatalf("RAW holds %d after one of two consumers acked, want 5", s.Msgs)
	}
	ackAll(t, cons[1], 5)
	deadline := time.Now().Add(5 * time.Second)
	for state(t, js, bus.StreamRaw).Msgs != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("RAW still holds %+v after every consumer acked", state(t, js, bus.StreamRaw))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Full of pending slices: new ones are refused, none is dropped.
	var refused error
	sent := 0
	for i := 5; i < 40 && refused == nil; i++ {
		if refused = publish(bus.SubjRaw, i); refused == nil {
			sent++
		}
	}
	if refused == nil {
		t.Fatalf("RAW took %d pending slices of 100 KiB under a 1 MiB limit", sent)
	}
	s := state(t, js, bus.StreamRaw)
	if s.Msgs != uint64(sent) || s.FirstSeq != 6 || s.Bytes > limit {
		t.Fatalf("RAW %+v after %d accepted; want all %d pending kept from seq 6", s, sent, sent)
	}
	t.Logf("RAW full: %d pending slices (%d bytes) kept, the next refused: %v", s.Msgs, s.Bytes, refused)

	// SCORES: inspectable, bounded, oldest dropped.
	for i := range 30 {
		if err := publish("lung.scores.m.r", i); err != nil {
			t.Fatalf("SCORES refused a message: %v", err)
		}
	}
	ss := state(t, js, bus.StreamScores)
	if ss.Bytes > limit || ss.Msgs == 0 || ss.LastSeq != 30 || ss.FirstSeq == 1 {
		t.Fatalf("SCORES %+v; want the newest kept within %d bytes", ss, limit)
	}
}

func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nats.ErrNoResponders, true},
		{fmt.Errorf("wrapped: %w", nats.ErrTimeout), true},
		{context.DeadlineExceeded, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamNameInUse, Description: "name in use"}, false},
		{errors.New("bad config"), false},
		{nil, false},
	} {
		if got := bus.Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRetryTransient(t *testing.T) {
	ctx := context.Background()
	n := 0
	err := bus.RetryTransient(ctx, 10*time.Second, func(context.Context) error {
		if n++; n < 3 {
			return nats.ErrNoResponders // a cluster still electing its meta leader
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("got %v after %d tries, want success on the third", err, n)
	}
	n = 0
	bad := errors.New("bad config")
	if err := bus.RetryTransient(ctx, 10*time.Second, func(context.Context) error { n++; return bad }); err != bad || n != 1 {
		t.Fatalf("got %v after %d tries, want the error at once", err, n)
	}
	n = 0
	start := time.Now()
	err = bus.RetryTransient(ctx, 500*time.Millisecond, func(context.Context) error { n++; return nats.ErrTimeout })
	if !errors.Is(err, nats.ErrTimeout) || n < 2 || time.Since(start) > 5*time.Second {
		t.Fatalf("got %v after %d tries in %v, want the last error once the wait has passed", err, n, time.Since(start))
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	n = 0
	if err := bus.RetryTransient(cctx, time.Minute, func(context.Context) error { n++; return nats.ErrTimeout }); err == nil || n != 1 {
		t.Fatalf("cancelled: %v after %d tries, want the error at once", err, n)
	}
}
