// Package bustest starts a real in-process JetStream server for tests.
package bustest

import (
	"context"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Env is a running server with a connection and the pipeline's streams.
type Env struct {
	Server *server.Server
	NC     *nats.Conn
	JS     jetstream.JetStream
}

// Start runs an embedded JetStream server on a random loopback port with
// its store in t.TempDir(), creates the pipeline streams, and cleans up
// when the test ends.
func Start(t testing.TB) *Env {
	t.Helper()
	s, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, bus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Keep(ctx, js); err != nil {
		t.Fatal(err)
	}
	return &Env{Server: s, NC: nc, JS: js}
}

// KeepDurable is the consumer Keep creates.
const KeepDurable = "bustest-keep"

// Keep gives each interest-retention stream (bus.WorkStreams) a durable
// consumer that never acknowledges, so that tests may publish before their
// stage's consumer exists and read what was published afterwards (as
// Fetch does), as if the streams kept everything.
func Keep(ctx context.Context, js jetstream.JetStream) error {
	for _, st := range bus.WorkStreams {
		if _, err := js.CreateOrUpdateConsumer(ctx, st, jetstream.ConsumerConfig{
			Durable: KeepDurable, AckPolicy: jetstream.AckExplicitPolicy,
		}); err != nil {
			return err
		}
	}
	return nil
}

// Eventually polls cond every 20 ms until it holds or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Fetch returns every message a stream holds on subject (wildcards
// allowed), in stream order, reading with an ordered consumer until no
// more arrive.
func Fetch(t testing.TB, js jetstream.JetStream, stream, subject string) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			out = append(out, m)
			n++
		}
		if n == 0 {
			return out
		}
	}
}
