package metrics

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

func TestNewNeedsRegistry(t *testing.T) {
	if _, err := New(nil); !errors.Is(err, ErrNoRegistry) {
		t.Fatalf("New(nil): %v, want ErrNoRegistry", err)
	}
	reg := prometheus.NewRegistry()
	if _, err := New(reg); err != nil {
		t.Fatal(err)
	}
	// A second set on the same registry clashes.
	if _, err := New(reg); err == nil {
		t.Fatal("registering twice on one registry succeeded")
	}
}

// TestHooksCountRunnerMessages runs a real stage runner whose processor
// succeeds, fails once then succeeds, or fails permanently, and checks
// every counter against what happened.
func TestHooksCountRunnerMessages(t *testing.T) {
	env := bustest.Start(t)
	// Only the runner's consumer on RAW, so that its pending series is
	// the only one (bustest keeps a durable of its own there).
	if err := env.JS.DeleteConsumer(context.Background(), bus.StreamRaw, bustest.KeepDurable); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	var tries atomic.Int32
	proc := stage.ProcessorFunc(func(ctx context.Context, msg *stage.Msg, e stage.Emitter) error {
		switch msg.SliceID {
		case "bad":
			return stage.Permanentf("bad input")
		case "flaky":
			if tries.Add(1) == 1 {
				return errors.New("transient")
			}
		}
		return e.Emit(ctx, stage.Out{Subject: bus.ScoresSubject("m", "r"), Data: []byte("x"), SliceID: msg.SliceID, ReplayID: "r"})
	})
	r, err := stage.New(env.JS, stage.Config{Name: "t", Stream: bus.StreamRaw, Backoff: []time.Duration{50 * time.Millisecond}}, proc, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	r.Hooks = m.Hooks()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := r.Consumer(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"ok1", "ok2", "flaky", "bad"} {
		if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.SubjRaw, Data: []byte{1}, SliceID: id, ReplayID: "r"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Pending before any worker runs.
	if err := m.PollConsumers(ctx, env.JS, bus.StreamRaw); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.Pending.WithLabelValues(bus.StreamRaw, "t")); got != 4 {
		t.Fatalf("pending before run = %v, want 4", got)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = r.Run(rctx); close(done) }()
	bustest.Eventually(t, 20*time.Second, "all messages settled", func() bool {
		return testutil.ToFloat64(m.Acked.WithLabelValues("t")) == 3 && testutil.ToFloat64(m.Failed.WithLabelValues("t", "true")) == 1
	})
	stop()
	<-done
	for _, c := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"received", m.Received.WithLabelValues("t"), 5},
		{"acked", m.Acked.WithLabelValues("t"), 3},
		{"redelivered", m.Redelivered.WithLabelValues("t"), 1},
		{"failed permanent", m.Failed.WithLabelValues("t", "true"), 1},
		{"published", m.Published.WithLabelValues("t"), 3},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.Processing); n != 1 {
		t.Errorf("processing histogram has %d series, want 1", n)
	}
	if err := m.PollConsumers(ctx, env.JS, bus.StreamRaw); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.Pending.WithLabelValues(bus.StreamRaw, "t")); got != 0 {
		t.Errorf("pending after run = %v, want 0", got)
	}
	// A deleted consumer's series go away.
	if err := env.JS.DeleteConsumer(ctx, bus.StreamRaw, "t"); err != nil {
		t.Fatal(err)
	}
	if err := m.PollConsumers(ctx, env.JS, bus.StreamRaw); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.Pending); n != 0 {
		t.Errorf("%d pending series after deleting the consumer, want 0", n)
	}
	if _, err := env.JS.OrderedConsumer(ctx, bus.StreamRaw, jetstream.OrderedConsumerConfig{}); err != nil {
		t.Fatal(err)
	}
}

// TestWatchObservesOutputsAndScores publishes model outputs and scores
// through JetStream and checks the inference and Dice histograms.
func TestWatchObservesOutputsAndScores(t *testing.T) {
	env := bustest.Start(t)
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.Watch(ctx, env.NC, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if err := env.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	pub := func(subj string, msg proto.Message) {
		b, err := proto.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.JS.Publish(ctx, subj, b); err != nil {
			t.Fatal(err)
		}
	}
	pub(bus.MasksSubject("a"), &lungsegv1.ModelOutput{Model: "a", Provider: "cpu", InferenceUs: 3000})
	pub(bus.MasksSubject("a"), &lungsegv1.ModelOutput{Model: "a", Provider: "cpu", InferenceUs: 5000})
	pub(bus.MasksSubject("b"), &lungsegv1.ModelOutput{Model: "b", InferenceUs: 1000})
	pub(bus.ScoresSubject("a", "r"), &lungsegv1.Score{Model: "a", HasTruth: true, Dice: 0.8})
	pub(bus.ScoresSubject("a", "r"), &lungsegv1.Score{Model: "a", HasTruth: false})
	bustest.Eventually(t, 10*time.Second, "observations", func() bool {
		return testutil.CollectAndCount(m.Inference) == 2 && testutil.CollectAndCount(m.Dice) == 1
	})
	bustest.Eventually(t, 10*time.Second, "three inferences", func() bool {
		mf, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var count uint64
		var sum float64
		for _, f := range mf {
			if f.GetName() != "lungseg_model_inference_seconds" {
				continue
			}
			for _, s := range f.GetMetric() {
				labels := map[string]string{}
				for _, l := range s.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["model"] == "b" && labels["provider"] != "unknown" {
					t.Fatalf("empty provider exported as %q", labels["provider"])
				}
				count += s.GetHistogram().GetSampleCount()
				sum += s.GetHistogram().GetSampleSum()
			}
		}
		return count == 3 && sum > 0.0089 && sum < 0.0091
	})
}
