package stage_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// collect gathers every message on a subject filter of a stream.
func collect(t *testing.T, js jetstream.JetStream, stream, filter string) func() []jetstream.Msg {
	t.Helper()
	ctx := context.Background()
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []jetstream.Msg
	cc, err := c.Consume(func(m jetstream.Msg) { mu.Lock(); got = append(got, m); mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return func() []jetstream.Msg { mu.Lock(); defer mu.Unlock(); return append([]jetstream.Msg(nil), got...) }
}

func TestRunnerSettlesMessages(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var transient atomic.Int32
	var calls atomic.Int32
	proc := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		calls.Add(1)
		switch string(m.Data) {
		case "bad":
			return stage.Permanentf("input %s is bad", m.SliceID)
		case "flaky":
			if transient.Add(1) < 3 {
				return errors.New("temporary trouble")
			}
		case "panic":
			panic("boom")
		}
		// Emit twice: the dedupe id must keep one copy.
		for i := 0; i < 2; i++ {
			if err := e.Emit(ctx, stage.Out{Subject: bus.PrefixReady + "m1", Data: m.Data, SliceID: m.SliceID, ReplayID: m.ReplayID, Model: "m1"}); err != nil {
				return err
			}
		}
		return nil
	})
	r, err := stage.New(env.JS, stage.Config{
		Name: "preprocess", Stream: bus.StreamRaw, Workers: 2,
		Backoff: []time.Duration{10 * time.Millisecond}, MaxDeliver: 5,
	}, proc, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	ready := collect(t, env.JS, bus.StreamReady, bus.PrefixReady+">")
	errs := collect(t, env.JS, bus.StreamErrors, bus.PrefixErrors+">")
	for _, in := range []struct{ id, data string }{{"a", "good"}, {"b", "bad"}, {"c", "flaky"}, {"d", "panic"}, {"e", "good2"}} {
		err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.SubjRaw, Data: []byte(in.data), SliceID: in.id, ReplayID: "r1"}, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	bustest.Eventually(t, 20*time.Second, "3 outputs and 2 errors", func() bool { return len(ready()) == 3 && len(errs()) == 2 })

	failed := map[string]string{}
	for _, m := range errs() {
		var ev lungsegv1.ErrorEvent
		if err := proto.Unmarshal(m.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Stage != "preprocess" || ev.ReplayId != "r1" || !ev.Permanent {
			t.Errorf("error event %+v", &ev)
		}
		if m.Subject() != "lung.errors.preprocess.r1" {
			t.Errorf("error subject %s", m.Subject())
		}
		failed[ev.Id] = ev.Error
	}
	if len(failed) != 2 || failed["b"] == "" || failed["d"] == "" {
		t.Fatalf("failed = %v, want b and d", failed)
	}
	// Every input is settled: nothing pending or awaiting ack.
	cons, err := env.JS.Consumer(ctx, bus.StreamRaw, "preprocess")
	if err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, 10*time.Second, "consumer drained", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	if n := transient.Load(); n != 3 {
		t.Errorf("flaky message processed %d times, want 3", n)
	}
	// Stay settled: no further deliveries arrive.
	before := calls.Load()
	time.Sleep(200 * time.Millisecond)
	if calls.Load() != before {
		t.Errorf("messages delivered again after settling")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRunnerGivesUpAfterMaxDeliver(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var n atomic.Int32
	proc := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		n.Add(1)
		return errors.New("always down")
	})
	r, err := stage.New(env.JS, stage.Config{Name: "segment", Stream: bus.StreamRaw, MaxDeliver: 3,
		Backoff: []time.Duration{5 * time.Millisecond}}, proc, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	go r.Run(ctx)
	errs := collect(t, env.JS, bus.StreamErrors, bus.PrefixErrors+">")
	if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.SubjRaw, Data: []byte("x"), SliceID: "s1"}, nil); err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, 10*time.Second, "error event", func() bool { return len(errs()) == 1 })
	if got := n.Load(); got != 3 {
		t.Fatalf("processed %d times, want MaxDeliver=3", got)
	}
	var ev lungsegv1.ErrorEvent
	_ = proto.Unmarshal(errs()[0].Data(), &ev)
	if ev.Permanent || ev.Id != "s1" || ev.Error != "always down" {
		t.Fatalf("event %+v", &ev)
	}
}

// TestRunnerRedeliversAfterCrash: a process that dies holding a message
// (its connection gone, no ack, no nak) loses it to another worker of the
// durable within the default AckWait, seconds rather than minutes.
func TestRunnerRedeliversAfterCrash(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if stage.DefaultAckWait > time.Minute {
		t.Fatalf("DefaultAckWait %v: a crash stalls the pipeline for minutes", stage.DefaultAckWait)
	}
	// The doomed process: its own connection, a processor that never returns.
	nc2, err := nats.Connect(env.Server.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js2, _ := jetstream.New(nc2)
	held := make(chan struct{}, 1)
	release := make(chan struct{})
	defer close(release)
	stuck := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		held <- struct{}{}
		<-release
		return errors.New("never acked")
	})
	dead, err := stage.New(js2, stage.Config{Name: "preprocess", Stream: bus.StreamRaw}, stuck, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithCancel(ctx)
	defer dcancel()
	go dead.Run(dctx)
	if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.SubjRaw, Data: []byte("x"), SliceID: "s1", ReplayID: "r"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("the first process never got the message")
	}
	nc2.Close() // kill -9: no ack, no nak, no more heartbeats
	crashed := time.Now()

	var got atomic.Int32
	var delivered atomic.Uint64
	ok := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		got.Add(1)
		delivered.Store(m.Delivered)
		return nil
	})
	alive, err := stage.New(env.JS, stage.Config{Name: "preprocess", Stream: bus.StreamRaw}, ok, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	go alive.Run(ctx)
	bustest.Eventually(t, stage.DefaultAckWait+15*time.Second, "redelivery to the live worker", func() bool { return got.Load() == 1 })
	t.Logf("redelivered %v after the crash (AckWait %v), delivery %d", time.Since(crashed).Round(100*time.Millisecond), stage.DefaultAckWait, delivered.Load())
	if delivered.Load() != 2 {
		t.Errorf("delivery %d, want 2", delivered.Load())
	}
}

// TestRunnerSlowStageKeepsItsMessages: a stage slower than AckWait (each
// message takes 1.5 AckWaits, and five wait their turn behind one worker)
// gets every message exactly once: heartbeats cover the message in hand,
// and the runner holds no others.
func TestRunnerSlowStageKeepsItsMessages(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const ackWait = time.Second
	var mu sync.Mutex
	deliveries := map[string][]uint64{}
	slow := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		mu.Lock()
		deliveries[m.SliceID] = append(deliveries[m.SliceID], m.Delivered)
		mu.Unlock()
		select {
		case <-time.After(ackWait * 3 / 2):
		case <-ctx.Done():
			return ctx.Err()
		}
		return e.Emit(ctx, stage.Out{Subject: bus.PrefixReady + "m1", Data: m.Data, SliceID: m.SliceID, ReplayID: m.ReplayID, Model: "m1"})
	})
	r, err := stage.New(env.JS, stage.Config{Name: "preprocess", Stream: bus.StreamRaw, AckWait: ackWait}, slow, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Consumer(ctx); err != nil {
		t.Fatal(err)
	}
	ids := []string{"a", "b", "c", "d", "e"}
	for _, id := range ids {
		if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.SubjRaw, Data: []byte(id), SliceID: id, ReplayID: "r"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	cons, err := env.JS.Consumer(ctx, bus.StreamRaw, "preprocess")
	if err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, 30*time.Second, "all five settled", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Consumer >= uint64(len(ids))
	})
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if d := deliveries[id]; len(d) != 1 || d[0] != 1 {
			t.Errorf("slice %s: deliveries %v, want exactly [1]", id, d)
		}
	}
	info, _ := cons.Info(context.Background())
	if info != nil && info.NumRedelivered != 0 {
		t.Errorf("%d redelivered", info.NumRedelivered)
	}
}

// TestRunnerSurvivesUnseenDeliveries: deliveries that no worker saw (here
// two fetched and dropped, as a pull that expired before its message came
// or a node killed mid-delivery) count on the server; they must not use up
// the message's deliveries, or it would stay unprocessed and unreported
// in its interest stream. The consumer's MaxDeliver is ServerMaxDeliver.
func TestRunnerSurvivesUnseenDeliveries(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var n atomic.Int32
	proc := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		n.Add(1)
		return nil
	})
	const ackWait = 300 * time.Millisecond
	r, err := stage.New(env.JS, stage.Config{Name: "segment", Stream: bus.StreamRaw, MaxDeliver: 2, AckWait: ackWait}, proc, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c, err := r.Consumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config.MaxDeliver; got != stage.ServerMaxDeliver(2) || got <= 2 {
		t.Fatalf("consumer MaxDeliver %d, want ServerMaxDeliver(2) = %d", got, stage.ServerMaxDeliver(2))
	}
	if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.SubjRaw, Data: []byte("x"), SliceID: "s1"}, nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // delivered, never settled: lost on the way
		b, err := c.Fetch(1, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for range b.Messages() {
			got++
		}
		if got != 1 {
			t.Fatalf("unseen delivery %d: fetched %d messages", i+1, got)
		}
		time.Sleep(ackWait + 200*time.Millisecond)
	}
	go r.Run(ctx)
	bustest.Eventually(t, 10*time.Second, "the message processed", func() bool { return n.Load() == 1 })
	if got := stage.ServerMaxDeliver(-1); got != -1 {
		t.Errorf("ServerMaxDeliver(-1) = %d, want unlimited", got)
	}
}
