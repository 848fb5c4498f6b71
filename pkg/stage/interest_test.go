package stage_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// TestPublishWaitsForAConsumerOfTheSubject: a stage publishing a model's
// input to READY before that model's segment consumer exists (a segment
// process starting late, a consumer still being placed on a cluster) is
// refused and retries, instead of the stream acknowledging the message and
// dropping it. Once the consumer is there it gets the input, once; the
// other model's input, published at the first try, is not repeated. This
// lost one input in a 3-node cluster fault test (TestClusterNodeKilled).
func TestPublishWaitsForAConsumerOfTheSubject(t *testing.T) {
	env := bustest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := env.JS.DeleteConsumer(ctx, bus.StreamReady, bustest.KeepDurable); err != nil {
		t.Fatal(err)
	}
	durable := func(model string) jetstream.Consumer {
		c, err := env.JS.CreateOrUpdateConsumer(ctx, bus.StreamReady, jetstream.ConsumerConfig{Durable: "segment-" + model,
			FilterSubject: bus.ReadySubject(model), AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a := durable("a")

	// Straight to Publish: refused, nothing sent.
	err := stage.Publish(ctx, env.JS, "preprocess", stage.Out{Subject: bus.ReadySubject("b"), Data: []byte("x"), SliceID: "s0"}, nil)
	if !errors.Is(err, bus.ErrNoConsumer) {
		t.Fatalf("publishing to b without a consumer: %v, want ErrNoConsumer", err)
	}

	// Through a runner: both models' inputs for one slice.
	proc := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		for _, model := range []string{"a", "b"} {
			if err := e.Emit(ctx, stage.Out{Subject: bus.ReadySubject(model), Data: m.Data, SliceID: m.SliceID, Model: model}); err != nil {
				return err
			}
		}
		return nil
	})
	r, err := stage.New(env.JS, stage.Config{Name: "preprocess", Stream: bus.StreamRaw,
		Backoff: []time.Duration{20 * time.Millisecond}, MaxDeliver: 1000}, proc, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	go r.Run(ctx)
	if err := stage.Publish(ctx, env.JS, "ingest", stage.Out{Subject: bus.SubjRaw, Data: []byte("px"), SliceID: "s1"}, nil); err != nil {
		t.Fatal(err)
	}
	pending := func(c jetstream.Consumer) uint64 {
		info, err := c.Info(ctx)
		if err != nil {
			return 0
		}
		return info.NumPending
	}
	bustest.Eventually(t, 10*time.Second, "a's input", func() bool { return pending(a) == 1 })
	time.Sleep(200 * time.Millisecond) // several retries of b
	b := durable("b")
	bustest.Eventually(t, 10*time.Second, "b's input", func() bool { return pending(b) == 1 })
	time.Sleep(200 * time.Millisecond)
	if pa, pb := pending(a), pending(b); pa != 1 || pb != 1 {
		t.Fatalf("pending a %d, b %d: want one input each", pa, pb)
	}
}
