package web

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSCheck fails when nc is not connected or the server does not answer
// a round trip, or JetStream does not answer an account info request.
func NATSCheck(nc *nats.Conn, js jetstream.JetStream) Check {
	return func(ctx context.Context) error {
		if nc == nil {
			return errors.New("no NATS connection")
		}
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("NATS connection %s", st)
		}
		if err := nc.FlushWithContext(ctx); err != nil {
			return fmt.Errorf("NATS round trip: %w", err)
		}
		if js != nil {
			if _, err := js.AccountInfo(ctx); err != nil {
				return fmt.Errorf("JetStream: %w", err)
			}
		}
		return nil
	}
}

// ErrNoWorker means a durable consumer exists but no worker is pulling
// from it (and none holds a message).
var ErrNoWorker = errors.New("web: no worker is consuming")

// ConsumerCheck fails when the durable consumer is missing, or when no
// worker pulls from it: no pull request waiting and no message being
// processed. For a model, the consumer is segment-<model> on READY, so the
// check fails when that model's segment workers are gone, wherever they
// run.
func ConsumerCheck(js jetstream.JetStream, stream, durable string) Check {
	return func(ctx context.Context) error {
		c, err := js.Consumer(ctx, stream, durable)
		if err != nil {
			return fmt.Errorf("consumer %s on %s: %w", durable, stream, err)
		}
		ci, err := c.Info(ctx)
		if err != nil {
			return fmt.Errorf("consumer %s on %s: %w", durable, stream, err)
		}
		if ci.NumWaiting == 0 && ci.NumAckPending == 0 {
			return fmt.Errorf("%w: %s on %s (%d pending)", ErrNoWorker, durable, stream, ci.NumPending)
		}
		return nil
	}
}
