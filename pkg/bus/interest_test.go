package bus_test

import (
	"context"
	"errors"
	"testing"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
)

// TestInterestNeedsAConsumerOfTheSubject: a model's input on READY is
// refused while READY's only consumer takes another model's subject (the
// stream would drop it), and accepted once a consumer takes it; subjects
// outside the work streams are never checked.
func TestInterestNeedsAConsumerOfTheSubject(t *testing.T) {
	js := startJS(t, bus.StreamOptions{})
	ctx := context.Background()
	var in bus.Interest
	a, b := bus.ReadySubject("a"), bus.ReadySubject("b")
	if err := in.Check(ctx, js, a); !errors.Is(err, bus.ErrNoConsumer) {
		t.Fatalf("no consumer: %v, want ErrNoConsumer", err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, bus.StreamReady, jetstream.ConsumerConfig{Durable: "segment-b",
		FilterSubject: b, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	if err := in.Check(ctx, js, a); !errors.Is(err, bus.ErrNoConsumer) {
		t.Fatalf("a consumer of b only: %v, want ErrNoConsumer", err)
	}
	if err := in.Check(ctx, js, b); err != nil {
		t.Fatalf("b: %v", err)
	}
	// What the check guards against: READY acknowledges a publish to a
	// and drops it.
	if _, err := js.Publish(ctx, a, []byte("x")); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, bus.StreamReady)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := st.Info(ctx); info.State.Msgs != 0 || info.State.LastSeq != 1 {
		t.Fatalf("READY holds %d (last seq %d): the stream kept a message nobody takes", info.State.Msgs, info.State.LastSeq)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, bus.StreamReady, jetstream.ConsumerConfig{Durable: "segment-any",
		FilterSubjects: []string{bus.PrefixReady + "*"}, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	if err := in.Check(ctx, js, a); err != nil {
		t.Fatalf("a wildcard consumer: %v", err)
	}
	if err := in.Check(ctx, js, bus.ScoresSubject("a", "r")); err != nil {
		t.Fatalf("scores are not a work stream: %v", err)
	}
	if err := in.Check(ctx, js, bus.SubjRaw); !errors.Is(err, bus.ErrNoConsumer) {
		t.Fatalf("RAW without a consumer: %v", err)
	}
}
