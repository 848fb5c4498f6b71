package objref_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

func start(t *testing.T) (*bustest.Env, jetstream.ObjectStore) {
	t.Helper()
	env := bustest.Start(t)
	st, err := bus.PixelStore(context.Background(), env.JS, bus.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return env, st
}

func body(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestOffloadRoundTrip: a body at the limit stays inline, one over it is
// stored and comes back byte for byte.
func TestOffloadRoundTrip(t *testing.T) {
	env, _ := start(t)
	ctx := context.Background()
	small := body(objref.Limit, 1)
	got, ref, err := objref.Offload(ctx, env.JS, "a", small)
	if err != nil || ref != nil || !bytes.Equal(got, small) {
		t.Fatalf("body at the limit: ref %v, err %v, same %v", ref, err, bytes.Equal(got, small))
	}
	large := body(3<<20, 2)
	rb, ref, err := objref.Offload(ctx, env.JS, "b", large)
	if err != nil {
		t.Fatal(err)
	}
	if ref == nil || !objref.IsRef(rb) || len(rb) > 512 || ref.Size != int64(len(large)) {
		t.Fatalf("reference %v, %d bytes", ref, len(rb))
	}
	back, err := objref.Resolve(ctx, env.JS, rb)
	if err != nil || !bytes.Equal(back, large) {
		t.Fatalf("resolved %d bytes, err %v", len(back), err)
	}
	// Not a reference: returned as is.
	if b, err := objref.Resolve(ctx, env.JS, small); err != nil || !bytes.Equal(b, small) {
		t.Fatalf("plain body changed: %v", err)
	}
	// The same name with other bytes (a redelivered stage that computed
	// a new inference time) is a new object: the first stays intact.
	other := body(3<<20, 3)
	rb2, ref2, err := objref.Offload(ctx, env.JS, "b", other)
	if err != nil || ref2.Key == ref.Key {
		t.Fatalf("second body: key %v (first %v), err %v", ref2.GetKey(), ref.Key, err)
	}
	for _, c := range []struct {
		ref  []byte
		want []byte
	}{{rb, large}, {rb2, other}} {
		if b, err := objref.Resolve(ctx, env.JS, c.ref); err != nil || !bytes.Equal(b, c.want) {
			t.Fatalf("resolved %d bytes, err %v", len(b), err)
		}
	}
}

// TestResolveErrors: a malformed, a gone and a tampered reference are
// permanent errors naming what is wrong.
func TestResolveErrors(t *testing.T) {
	env, st := start(t)
	ctx := context.Background()
	large := body(2<<20, 4)
	rb, ref, err := objref.Offload(ctx, env.JS, "x", large)
	if err != nil {
		t.Fatal(err)
	}
	bad, _ := proto.Marshal(&lungsegv1.ObjectRef{Bucket: "elsewhere", Key: ref.Key, Sha256: ref.Sha256, Size: ref.Size})
	if _, err := objref.Resolve(ctx, env.JS, append(append([]byte{}, objref.Magic...), bad...)); !errors.Is(err, objref.ErrBadRef) || !objref.IsPermanent(err) {
		t.Errorf("other bucket: %v", err)
	}
	huge, _ := proto.Marshal(&lungsegv1.ObjectRef{Bucket: bus.PixelsBucket, Key: ref.Key, Sha256: ref.Sha256, Size: objref.MaxObject + 1})
	if _, err := objref.Resolve(ctx, env.JS, append(append([]byte{}, objref.Magic...), huge...)); !errors.Is(err, objref.ErrBadRef) {
		t.Errorf("over the object limit: %v", err)
	}
	if _, err := st.PutBytes(ctx, ref.Key, body(2<<20, 5)); err != nil {
		t.Fatal(err)
	}
	if _, err := objref.Resolve(ctx, env.JS, rb); !errors.Is(err, objref.ErrDigest) || !objref.IsPermanent(err) {
		t.Errorf("tampered: %v", err)
	}
	if err := st.Delete(ctx, ref.Key); err != nil {
		t.Fatal(err)
	}
	if _, err := objref.Resolve(ctx, env.JS, rb); !errors.Is(err, objref.ErrMissing) || !objref.IsPermanent(err) {
		t.Errorf("deleted: %v", err)
	}
	if _, _, err := objref.Offload(ctx, nil, "y", large); !errors.Is(err, objref.ErrNoStore) {
		t.Errorf("offload without a store: %v", err)
	}
}

// TestRunnerCarriesLargeBodies publishes a 5 MiB body with stage.Publish
// (it failed with "maximum payload exceeded" before), runs a stage that
// sees it whole and re-emits it, and reads the output stream: a small
// reference with the Lung-Object header, resolving to the same bytes. A
// message whose object is gone is terminated and reported, not retried.
func TestRunnerCarriesLargeBodies(t *testing.T) {
	env, st := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	large := body(5<<20, 6)
	seen := make(chan int, 4)
	proc := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
		seen <- len(m.Data)
		if !bytes.Equal(m.Data, large) {
			return stage.Permanentf("body of %d bytes differs", len(m.Data))
		}
		return e.Emit(ctx, stage.Out{Subject: bus.MasksSubject("m"), Data: m.Data, SliceID: m.SliceID, ReplayID: m.ReplayID, Model: "m"})
	})
	r, err := stage.New(env.JS, stage.Config{Name: "echo", Stream: bus.StreamReady, FilterSubjects: []string{bus.ReadySubject("m")}}, proc, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	// Consumers first: READY and MASKS may keep messages only while a
	// consumer is interested.
	if _, err := r.Consumer(ctx); err != nil {
		t.Fatal(err)
	}
	outs, err := env.JS.CreateOrUpdateConsumer(ctx, bus.StreamMasks, jetstream.ConsumerConfig{Durable: "check", AckPolicy: jetstream.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { stop(); <-done }()

	if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.ReadySubject("m"), Data: large, SliceID: "s1", ReplayID: "r", Model: "m"}, nil); err != nil {
		t.Fatalf("publishing 5 MiB: %v", err)
	}
	select {
	case n := <-seen:
		if n != len(large) {
			t.Fatalf("stage saw %d bytes, want %d", n, len(large))
		}
	case <-ctx.Done():
		t.Fatal("stage never saw the message")
	}
	out, err := outs.Next(jetstream.FetchMaxWait(30 * time.Second))
	if err != nil {
		t.Fatalf("no output: %v", err)
	}
	if !objref.IsRef(out.Data()) || out.Headers().Get(objref.Header) == "" {
		t.Fatalf("output of %d bytes, header %q: not a reference", len(out.Data()), out.Headers().Get(objref.Header))
	}
	if b, err := objref.Resolve(ctx, env.JS, out.Data()); err != nil || !bytes.Equal(b, large) {
		t.Fatalf("output resolves to %d bytes, err %v", len(b), err)
	}

	// A reference to an object that is gone: one error event, permanent.
	rb, ref, err := objref.Offload(ctx, env.JS, "gone", body(2<<20, 7))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, ref.Key); err != nil {
		t.Fatal(err)
	}
	if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.ReadySubject("m"), Data: rb, SliceID: "s2", ReplayID: "r", Model: "m"}, nil); err != nil {
		t.Fatal(err)
	}
	bustest.Eventually(t, 30*time.Second, "the error event", func() bool {
		return len(bustest.Fetch(t, env.JS, bus.StreamErrors, bus.ErrorsSubject("echo", "r"))) == 1
	})
	var ev lungsegv1.ErrorEvent
	if err := proto.Unmarshal(bustest.Fetch(t, env.JS, bus.StreamErrors, bus.ErrorsSubject("echo", "r"))[0].Data(), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Id != "s2" || !ev.Permanent || !bytes.Contains([]byte(ev.Error), []byte("gone")) {
		t.Fatalf("error event %+v", &ev)
	}
	if len(seen) != 0 {
		t.Fatalf("the processor saw the message with the missing object")
	}
}

// objects lists the keys Offload stored in the pixel bucket.
func objects(t *testing.T, st jetstream.ObjectStore) map[string]bool {
	t.Helper()
	infos, err := st.List(context.Background())
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return map[string]bool{}
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, i := range infos {
		if strings.HasPrefix(i.Name, objref.KeyPrefix) {
			out[i.Name] = true
		}
	}
	return out
}

// TestDuplicatePublishDropsItsObject: a stage redelivered publishes its
// large output again under the same dedupe id; the stream keeps the first
// message, and the object of the second is deleted rather than left to
// fill the bucket.
func TestDuplicatePublishDropsItsObject(t *testing.T) {
	env, st := start(t)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.ScoresSubject("m", "r"), Data: body(2<<20, uint64(10+i)), SliceID: "s", ReplayID: "r", Model: "m"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	msgs := bustest.Fetch(t, env.JS, bus.StreamScores, bus.ScoresSubject("m", "r"))
	if len(msgs) != 1 {
		t.Fatalf("%d messages, want 1 (deduped)", len(msgs))
	}
	objs := objects(t, st)
	ref, err := objref.Parse(msgs[0].Data())
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || !objs[ref.Key] {
		t.Fatalf("objects %v, want only the kept message's %s", objs, ref.Key)
	}
	if b, err := objref.Resolve(ctx, env.JS, msgs[0].Data()); err != nil || !bytes.Equal(b, body(2<<20, 10)) {
		t.Fatalf("the kept message resolves to %d bytes (%v), want the first body", len(b), err)
	}
}

// TestReleaseAfterEveryConsumer: on a work stream (interest retention) a
// message by reference read by two stages keeps its object while either
// still holds it, and loses it once both have acknowledged it.
func TestReleaseAfterEveryConsumer(t *testing.T) {
	env, st := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Only the two stages read RAW here (bustest keeps a durable that
	// never acknowledges, so that other tests can read the stream back).
	if err := env.JS.DeleteConsumer(ctx, bus.StreamRaw, bustest.KeepDurable); err != nil {
		t.Fatal(err)
	}
	done := map[string]chan struct{}{"fast": make(chan struct{}, 1), "slow": make(chan struct{}, 1)}
	gate := make(chan struct{})
	var runners []*stage.Runner
	for _, name := range []string{"fast", "slow"} {
		proc := stage.ProcessorFunc(func(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
			if name == "slow" {
				<-gate
			}
			defer func() { done[name] <- struct{}{} }()
			if len(m.Data) != 3<<20 {
				return stage.Permanentf("got %d bytes", len(m.Data))
			}
			return nil
		})
		r, err := stage.New(env.JS, stage.Config{Name: name, Stream: bus.StreamRaw}, proc, zerolog.New(zerolog.NewTestWriter(t)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Consumer(ctx); err != nil {
			t.Fatal(err)
		}
		runners = append(runners, r)
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, r := range runners {
		wg.Add(1)
		go func() { defer wg.Done(); _ = r.Run(rctx) }()
	}
	defer func() { stop(); close(gate); wg.Wait() }()
	if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.SubjRaw, Data: body(3<<20, 20), SliceID: "s", ReplayID: "r"}, nil); err != nil {
		t.Fatal(err)
	}
	objs := objects(t, st)
	if len(objs) != 1 {
		t.Fatalf("objects %v, want 1", objs)
	}
	<-done["fast"]
	// fast has acknowledged (and tried to release); slow still holds it.
	bustest.Eventually(t, 10*time.Second, "fast's ack", func() bool {
		c, err := env.JS.Consumer(ctx, bus.StreamRaw, "fast")
		if err != nil {
			return false
		}
		i, err := c.Info(ctx)
		return err == nil && i.AckFloor.Stream == 1
	})
	if got := objects(t, st); len(got) != 1 {
		t.Fatalf("the object went while slow still held the message: %v", got)
	}
	gate <- struct{}{}
	<-done["slow"]
	bustest.Eventually(t, 10*time.Second, "the object released", func() bool { return len(objects(t, st)) == 0 })
}
