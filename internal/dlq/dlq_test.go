package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

func msgs(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	st, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestCaptureListReplay makes one message die of max deliveries (fetched
// and never acknowledged, as when a worker crashes on it) and one
// terminated by a runner after its retries, runs the capturer, and checks
// the dead letters, then re-drives one.
func TestCaptureListReplay(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := Ensure(ctx, env.JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	cap := &Capturer{JS: env.JS, Log: zerolog.Nop()}
	cctx, stopCap := context.WithCancel(ctx)
	defer stopCap()
	go func() { _ = cap.Run(cctx) }()

	// 1. Never acknowledged: MaxDeliver 2 with a short AckWait.
	if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.SubjRaw, Data: []byte("crasher"), SliceID: "s-crash", ReplayID: "r1"}, nil); err != nil {
		t.Fatal(err)
	}
	crash, err := env.JS.CreateOrUpdateConsumer(ctx, bus.StreamRaw, jetstream.ConsumerConfig{
		Durable: "crashy", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 300 * time.Millisecond, MaxDeliver: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for i := 0; i < 6 && got < 3; i++ {
		b, err := crash.Fetch(1, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for range b.Messages() {
			got++ // never acknowledged
		}
	}
	if got != 2 {
		t.Fatalf("delivered %d times, want MaxDeliver=2", got)
	}

	// 2. Terminated by a runner after its last retry.
	if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.ReadySubject("m1"), Data: []byte("poison"), SliceID: "s-term", ReplayID: "r1", Model: "m1"}, nil); err != nil {
		t.Fatal(err)
	}
	r, err := stage.New(env.JS, stage.Config{Name: "segment", Durable: "segment-m1", Stream: bus.StreamReady,
		FilterSubjects: []string{bus.ReadySubject("m1")}, MaxDeliver: 2, Backoff: []time.Duration{10 * time.Millisecond}},
		stage.ProcessorFunc(func(context.Context, *stage.Msg, stage.Emitter) error { return errors.New("model exploded") }), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	rctx, stopRunner := context.WithCancel(ctx)
	defer stopRunner()
	go func() { _ = r.Run(rctx) }()

	var es []Entry
	bustest.Eventually(t, 20*time.Second, "two dead letters", func() bool {
		es, err = List(ctx, env.JS, Filter{})
		return err == nil && len(es) == 2
	})
	stopRunner()
	byKind := map[string]Entry{}
	for _, e := range es {
		byKind[e.Kind] = e
	}
	md := byKind[KindMaxDeliveries]
	if md.Stream != bus.StreamRaw || md.Consumer != "crashy" || md.Subject != bus.SubjRaw || md.SliceID != "s-crash" ||
		md.ReplayID != "r1" || md.Deliveries != 2 || md.StreamSeq != 1 || md.Bytes != len("crasher") || md.Missing ||
		!strings.Contains(md.Reason, "2 deliveries") || md.Time.IsZero() {
		t.Errorf("max-deliveries dead letter: %+v", md)
	}
	tm := byKind[KindTerminated]
	if tm.Stream != bus.StreamReady || tm.Consumer != "segment-m1" || tm.Subject != bus.ReadySubject("m1") ||
		tm.SliceID != "s-term" || tm.Model != "m1" || !strings.Contains(tm.Reason, "model exploded") {
		t.Errorf("terminated dead letter: %+v", tm)
	}
	if f, err := List(ctx, env.JS, Filter{Stream: bus.StreamReady}); err != nil || len(f) != 1 || f[0].Kind != KindTerminated {
		t.Errorf("List(stream READY) = %+v, %v", f, err)
	}
	if f, err := List(ctx, env.JS, Filter{Replay: "other"}); err != nil || len(f) != 0 {
		t.Errorf("List(replay other) = %+v, %v", f, err)
	}

	// Capturing the same advisory again adds nothing.
	adv, _ := json.Marshal(advisory{Stream: bus.StreamRaw, Consumer: "crashy", StreamSeq: 1, Deliveries: 2})
	if err := cap.Capture(ctx, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.RAW.crashy", adv); err != nil {
		t.Fatal(err)
	}
	if n := msgs(t, env.JS, StreamDLQ); n != 2 {
		t.Fatalf("DLQ holds %d after a repeated advisory, want 2", n)
	}

	// Replay with Keep twice: republished once (dedupe), still listed.
	before := msgs(t, env.JS, bus.StreamRaw)
	for i := 0; i < 2; i++ {
		if n, err := Replay(ctx, env.JS, ReplayOptions{Seqs: []uint64{md.Seq}, Keep: true}); err != nil || n != 1 {
			t.Fatalf("Replay = %d, %v", n, err)
		}
	}
	if after := msgs(t, env.JS, bus.StreamRaw); after != before+1 {
		t.Fatalf("RAW went from %d to %d messages, want +1", before, after)
	}
	st, _ := env.JS.Stream(ctx, bus.StreamRaw)
	m, err := st.GetLastMsgForSubject(ctx, bus.SubjRaw)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != "crasher" || m.Header.Get(bus.HdrSlice) != "s-crash" || m.Header.Get(HdrReason) != "" {
		t.Fatalf("re-driven message %q headers %v", m.Data, m.Header)
	}
	// While no consumer takes its subject (its segment is gone), a dead
	// letter of READY is not republished, which READY would drop: it stays.
	for _, c := range []string{"segment-m1", bustest.KeepDurable} {
		if err := env.JS.DeleteConsumer(ctx, bus.StreamReady, c); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := Replay(ctx, env.JS, ReplayOptions{Filter: Filter{Stream: bus.StreamReady}}); !errors.Is(err, bus.ErrNoConsumer) || n != 0 {
		t.Fatalf("Replay(READY) without its consumer = %d, %v; want ErrNoConsumer", n, err)
	}
	if es, err := List(ctx, env.JS, Filter{Stream: bus.StreamReady}); err != nil || len(es) != 1 {
		t.Fatalf("READY's dead letter after a refused replay: %+v, %v", es, err)
	}
	if err := bustest.Keep(ctx, env.JS); err != nil {
		t.Fatal(err)
	}
	// Replay everything on READY without Keep: deleted afterwards.
	if n, err := Replay(ctx, env.JS, ReplayOptions{Filter: Filter{Stream: bus.StreamReady}}); err != nil || n != 1 {
		t.Fatalf("Replay(READY) = %d, %v", n, err)
	}
	if es, err := List(ctx, env.JS, Filter{}); err != nil || len(es) != 1 || es[0].Kind != KindMaxDeliveries {
		t.Fatalf("after replay: %+v, %v", es, err)
	}
	if _, err := Replay(ctx, env.JS, ReplayOptions{Seqs: []uint64{tm.Seq}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("replaying a deleted dead letter: %v, want ErrNotFound", err)
	}
}

// TestCaptureMissing records a dead letter whose message already left its
// stream; it is listed but cannot be replayed.
func TestCaptureMissing(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := Ensure(ctx, env.JS, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	c := &Capturer{JS: env.JS, Log: zerolog.Nop()}
	adv, _ := json.Marshal(advisory{Stream: bus.StreamRaw, Consumer: "preprocess", StreamSeq: 99, Deliveries: 5})
	if err := c.Capture(ctx, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.RAW.preprocess", adv); err != nil {
		t.Fatal(err)
	}
	// Garbage advisories are skipped, not retried forever.
	if err := c.Capture(ctx, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.RAW.x", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	skip := &Capturer{JS: env.JS, Log: zerolog.Nop(), SkipTerminated: true}
	if err := skip.Capture(ctx, "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.RAW.preprocess", adv); err != nil {
		t.Fatal(err)
	}
	es, err := List(ctx, env.JS, Filter{})
	if err != nil || len(es) != 1 || !es[0].Missing || es[0].StreamSeq != 99 {
		t.Fatalf("List = %+v, %v", es, err)
	}
	if _, err := Replay(ctx, env.JS, ReplayOptions{Seqs: []uint64{es[0].Seq}}); !errors.Is(err, ErrMissingOriginal) {
		t.Fatalf("Replay = %v, want ErrMissingOriginal", err)
	}
}
