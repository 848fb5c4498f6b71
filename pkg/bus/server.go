package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// EmbeddedOptions configures the in-process nats-server.
type EmbeddedOptions struct {
	// StoreDir holds the JetStream file store.
	StoreDir string
	// Listen is host:port for clients; "" keeps the server in-process only
	// (no TCP listener). Port 0 or -1 picks a free port.
	Listen string
	// SyncAlways flushes every write to disk before acknowledging it
	// (sync_interval: always): no acknowledged message is lost on power
	// failure, at some cost in throughput.
	SyncAlways bool
	// Users, when set, are the only clients the server accepts (in-process
	// ones included), each with its permissions (pkg/natsauth).
	Users []*server.User
}

// StartEmbedded runs a nats-server with JetStream on a file store and waits
// until it is ready. Stop it with Shutdown and WaitForShutdown.
func StartEmbedded(o EmbeddedOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, errors.New("bus: embedded server needs a store directory")
	}
	opts := &server.Options{
		ServerName: "lungseg-embedded",
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: MaxPayload,
	}
	if o.SyncAlways {
		opts.SyncAlways = true
	}
	opts.Users = o.Users
	if o.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("bus: listen address %q: %w", o.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("bus: listen port %q: %w", port, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		} else {
			// nats-server meets a busy port in its accept loop, after
			// start-up, and is then never ready: say it at once
			ln, err := net.Listen("tcp", o.Listen)
			if err != nil {
				return nil, fmt.Errorf("bus: embedded nats-server cannot listen on %s: %w", o.Listen, err)
			}
			_ = ln.Close()
		}
		opts.Host, opts.Port = host, p
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("bus: starting embedded nats-server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, errors.New("bus: embedded nats-server not ready after 30s")
	}
	return s, nil
}

// MaxPayload is the NATS payload limit the pipeline is built for (headers
// count toward it).
const MaxPayload = 1 << 20

// ConnectEmbedded connects to an embedded server in-process; extra
// options add credentials.
func ConnectEmbedded(s *server.Server, name string, extra ...nats.Option) (*nats.Conn, error) {
	return nats.Connect("", append([]nats.Option{nats.InProcessServer(s), nats.Name(name), nats.MaxReconnects(-1)}, extra...)...)
}

// Connect connects to an external NATS server or cluster (comma-separated
// URLs), retrying on failure and reconnecting forever.
func Connect(url, name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(500 * time.Millisecond),
	}, extra...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("bus: connecting to %s: %w", url, err)
	}
	return nc, nil
}

// WaitConnected waits until nc is connected or ctx ends.
func WaitConnected(ctx context.Context, nc *nats.Conn) error {
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("bus: not connected to %s: %w", nc.Opts.Url, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// JetStream returns the JetStream API of a connection.
func JetStream(nc *nats.Conn) (jetstream.JetStream, error) {
	return jetstream.New(nc)
}
