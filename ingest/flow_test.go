package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// busEmitter publishes like the stage runner does, each slice after a
// pause (a slow downstream holding ingest back), and makes the process
// "crash" (its context cancelled) after crashAfter slices.
type busEmitter struct {
	js         jetstream.JetStream
	pause      time.Duration
	crashAfter int64
	crash      context.CancelFunc
	slices     atomic.Int64
}

func (b *busEmitter) Emit(ctx context.Context, o stage.Out) error {
	if o.Subject == bus.SubjRaw {
		time.Sleep(b.pause)
	}
	if err := stage.Publish(ctx, b.js, "ingest", o, nil); err != nil {
		return err
	}
	if o.Subject == bus.SubjRaw && b.slices.Add(1) == b.crashAfter && b.crash != nil {
		b.crash()
	}
	return nil
}

func (b *busEmitter) Fail(ctx context.Context, f stage.Failure) error {
	return stage.PublishError(ctx, b.js, "ingest", f, "", true)
}

// TestJobLongerThanDedupeWindow: a job takes longer than the stream's
// dedupe window (1 s here, 10 min in production, where a large folder held
// back by the backlog bound takes longer), crashes after publishing part
// of its slices and is redelivered at once: the first slices have left the
// window by then. The second delivery resumes from the recorded progress
// (the slice in flight at the crash, published but not yet recorded, is
// recent and deduped): every slice is on RAW exactly once, and the job's
// IngestDone counts them all. Without the progress record the first
// slices are published twice.
func TestJobLongerThanDedupeWindow(t *testing.T) {
	const n, crashAt = 30, 12
	const window = time.Second
	env := bustest.Start(t)
	ctx := context.Background()
	if err := bus.EnsureStreams(ctx, env.JS, bus.StreamOptions{Duplicates: window}); err != nil {
		t.Fatal(err)
	}
	kv, err := bus.ProgressStore(ctx, env.JS, bus.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for i := range n {
		if err := pngpair.Write(dir, fmt.Sprintf("s%03d", i), imgx.NewHU(16, 16), imgx.NewMask(16, 16)); err != nil {
			t.Fatal(err)
		}
	}
	job, _ := proto.Marshal(&lungsegv1.IngestJob{ReplayId: "r", Path: dir, Models: []string{"m"}})
	st := &ingest.Stage{Formats: formats.All(), Models: resolver{}, Progress: kv}

	first, crash := context.WithCancel(ctx)
	em := &busEmitter{js: env.JS, pause: 2 * window / crashAt, crashAfter: crashAt, crash: crash}
	if err := st.Process(first, &stage.Msg{Data: job}, em); err == nil {
		t.Fatal("the crashed delivery returned nil")
	}
	if got := em.slices.Load(); got != crashAt {
		t.Fatalf("first delivery published %d slices, want %d", got, crashAt)
	}
	em2 := &busEmitter{js: env.JS}
	if err := st.Process(ctx, &stage.Msg{Data: job, Delivered: 2}, em2); err != nil {
		t.Fatal(err)
	}
	perID := map[string]int{}
	for _, m := range bustest.Fetch(t, env.JS, bus.StreamRaw, bus.SubjRaw) {
		perID[m.Headers().Get(bus.HdrSlice)]++
	}
	dups := 0
	for id, k := range perID {
		if k > 1 {
			dups += k - 1
			t.Errorf("slice %s published %d times", id, k)
		}
	}
	if len(perID) != n || dups != 0 {
		t.Fatalf("%d distinct slices on RAW (want %d), %d duplicates; second delivery published %d", len(perID), n, dups, em2.slices.Load())
	}
	// The rest, and at most the one in flight at the crash (deduped).
	if got := em2.slices.Load(); got != n-crashAt && got != n-crashAt+1 {
		t.Errorf("second delivery published %d slices, want the %d left (+1 in flight)", got, n-crashAt)
	}
	events := bustest.Fetch(t, env.JS, bus.StreamEvents, bus.IngestedSubject("r"))
	if len(events) != 1 {
		t.Fatalf("%d IngestDone events", len(events))
	}
	var done lungsegv1.IngestDone
	if err := proto.Unmarshal(events[0].Data(), &done); err != nil {
		t.Fatal(err)
	}
	if done.Slices != n {
		t.Errorf("IngestDone counts %d slices, want %d", done.Slices, n)
	}
}

// gate lets `room` slices through, then holds ingest until ctx ends.
type gate struct {
	room  atomic.Int64
	calls atomic.Int64
}

func (g *gate) Sent(int) {}

func (g *gate) Wait(ctx context.Context) error {
	g.calls.Add(1)
	if g.room.Add(-1) >= 0 {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

// TestBacklogHoldsIngest: ingest asks the backlog before reading each
// slice and reads no further while it is full.
func TestBacklogHoldsIngest(t *testing.T) {
	dir := t.TempDir()
	for i := range 10 {
		if err := pngpair.Write(dir, fmt.Sprintf("s%03d", i), imgx.NewHU(16, 16), imgx.NewMask(16, 16)); err != nil {
			t.Fatal(err)
		}
	}
	g := &gate{}
	g.room.Store(4)
	job, _ := proto.Marshal(&lungsegv1.IngestJob{ReplayId: "r", Path: dir, Models: []string{"m"}})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var r recorder
	err := (&ingest.Stage{Formats: formats.All(), Models: resolver{}, Backlog: g}).Process(ctx, &stage.Msg{Data: job}, &r)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline while held", err)
	}
	if len(r.outs) != 4 || g.calls.Load() != 5 {
		t.Fatalf("published %d slices with %d waits; want 4 through and the 5th held", len(r.outs), g.calls.Load())
	}
}
