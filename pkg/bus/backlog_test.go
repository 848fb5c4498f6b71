package bus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/nats-io/nats.go/jetstream"
)

// TestBacklogWaitsForConsumersAndRoom: Wait holds while a work stream has
// no consumer (a slice sent there would be dropped) or the work streams
// hold more than MaxBytes unacknowledged, and returns once the consumers
// catch up.
func TestBacklogWaitsForConsumersAndRoom(t *testing.T) {
	js := startJS(t, bus.StreamOptions{})
	ctx := context.Background()
	b := &bus.Backlog{JS: js, MaxBytes: 250 << 10, Poll: 10 * time.Millisecond}
	held := func(what string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if err := b.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: Wait returned %v, want it held", what, err)
		}
	}
	free := func(what string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := b.Wait(wctx); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	held("no consumers")
	var raw jetstream.Consumer
	for _, s := range bus.WorkStreams {
		c, err := js.CreateOrUpdateConsumer(ctx, s, jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			t.Fatal(err)
		}
		if s == bus.StreamRaw {
			raw = c
		}
	}
	free("consumers, nothing pending")
	for i := range 3 {
		if _, err := js.Publish(ctx, bus.SubjRaw, make([]byte, 100<<10), jetstream.WithMsgID(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond) // past Poll: read the streams again
	held("300 KiB pending")
	if pending, ok, err := b.Pending(ctx); err != nil || !ok || pending < 300<<10 {
		t.Fatalf("pending %d, consumers %v, %v", pending, ok, err)
	}
	ackAll(t, raw, 3)
	free("acknowledged")
}

// TestBacklogCountsWhatWasSent: between two readings of the streams, the
// bytes reported with Sent count as pending, so a publisher faster than
// Poll stops at the bound instead of a Poll's worth of slices past it.
func TestBacklogCountsWhatWasSent(t *testing.T) {
	js := startJS(t, bus.StreamOptions{})
	ctx := context.Background()
	for _, s := range bus.WorkStreams {
		if _, err := js.CreateOrUpdateConsumer(ctx, s, jetstream.ConsumerConfig{Durable: "d", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
	}
	b := &bus.Backlog{JS: js, MaxBytes: 250 << 10, Poll: time.Hour} // one reading
	wait := func() error {
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		return b.Wait(wctx)
	}
	for i := range 2 {
		if err := wait(); err != nil {
			t.Fatalf("%d KiB sent: %v", 100*i, err)
		}
		b.Sent(100 << 10)
	}
	if err := wait(); err != nil {
		t.Fatalf("200 KiB sent: %v", err)
	}
	b.Sent(100 << 10)
	if err := wait(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("300 KiB sent since the reading under a 250 KiB bound: Wait returned %v, want it held", err)
	}
}
