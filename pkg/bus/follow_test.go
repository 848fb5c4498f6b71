package bus_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/lungseg/lungseg/pkg/bus"
)

// TestFollowReplacesASilentConsumer: when the ordered consumer under a
// follower goes silent (here stopped behind the follower's back, as one
// on a killed cluster node) while the stream grows, the watchdog starts
// a new one after the last message handled: every message arrives once,
// in order. Without the watchdog the second half never arrives.
func TestFollowReplacesASilentConsumer(t *testing.T) {
	js := startJS(t, bus.StreamOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	publish := func(from, to int) {
		for i := from; i < to; i++ {
			// Another subject in between must not count as "newer".
			if _, err := js.Publish(ctx, "lung.events.other", []byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := js.Publish(ctx, "lung.events.follow.a", []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(0, 3) // before the follower: read with DeliverAll
	var (
		mu  sync.Mutex
		got []string
	)
	f, err := bus.Follow(ctx, js, bus.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"lung.events.follow.*"}},
		func(m jetstream.Msg) {
			mu.Lock()
			got = append(got, string(m.Data()))
			mu.Unlock()
		}, bus.FollowOptions{Check: 50 * time.Millisecond, Stall: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			k := len(got)
			mu.Unlock()
			if k >= n || time.Now().After(deadline) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	publish(3, 6)
	waitFor(6)
	// Quiet with nothing newer: no replacement.
	time.Sleep(600 * time.Millisecond)
	if r := f.Restarts(); r != 0 {
		t.Errorf("%d replacements while the consumer was only quiet", r)
	}
	bus.SilenceForTest(f)
	publish(6, 12)
	waitFor(12)
	time.Sleep(200 * time.Millisecond) // a duplicate would come now
	mu.Lock()
	defer mu.Unlock()
	var want []string
	for i := range 12 {
		want = append(want, fmt.Sprint(i))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("handled %v, want %v", got, want)
	}
	if r := f.Restarts(); r < 1 {
		t.Errorf("the silent consumer was not replaced")
	}
}

// TestFollowDeliverNew: a follower that asks for new messages only gets
// those published after it started, also across a replacement.
func TestFollowDeliverNew(t *testing.T) {
	js := startJS(t, bus.StreamOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pub := func(s string) {
		if _, err := js.Publish(ctx, "lung.events.follow.n", []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	pub("old")
	var (
		mu  sync.Mutex
		got []string
	)
	f, err := bus.Follow(ctx, js, bus.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"lung.events.follow.n"},
		DeliverPolicy: jetstream.DeliverNewPolicy},
		func(m jetstream.Msg) { mu.Lock(); got = append(got, string(m.Data())); mu.Unlock() },
		bus.FollowOptions{Check: 50 * time.Millisecond, Stall: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	bus.SilenceForTest(f)
	pub("new1")
	pub("new2")
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		s := fmt.Sprint(got)
		mu.Unlock()
		if s == "[new1 new2]" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handled %s, want [new1 new2]", s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
