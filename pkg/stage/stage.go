// Package stage runs one pipeline stage as a durable JetStream pull
// consumer. A stage is a Processor: from one message to zero or more
// published messages. The Runner, not the stage, owns the consumer, the
// acks, the dedupe ids, retries with backoff, the errors subject, the
// per-message logger and the in-progress heartbeats, so the stage packages
// hold only their domain logic and are testable without NATS.
package stage

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Msg is one delivered message as a Processor sees it.
type Msg struct {
	Subject string
	Data    []byte
	Header  nats.Header
	// Delivered counts deliveries of this message, starting at 1.
	Delivered uint64
	// Last is set on the runner's last delivery: an error now is reported
	// and the message terminated, so a processor that can give up on one
	// part of it (one model of a slice) says so with Emitter.Fail and goes
	// on with the rest.
	Last bool
	// SliceID, ReplayID and Model come from the message headers.
	SliceID, ReplayID, Model string
	// Log is a child logger carrying the stage, slice id and model.
	Log zerolog.Logger
}

// Out is one message a Processor publishes.
type Out struct {
	Subject string
	Data    []byte
	// SliceID, ReplayID and Model become headers and, with the stage name,
	// the Nats-Msg-Id that dedupes republishing after a redelivery.
	SliceID, ReplayID, Model string
	// MsgID overrides the default dedupe id.
	MsgID string
}

// Failure reports one input the stage gave up on without failing the
// whole message (for example one bad row of a pickle).
type Failure struct {
	SliceID, ReplayID, Model string
	Err                      error
}

// Emitter publishes a Processor's results durably: Emit returns after the
// stream has acknowledged the message.
type Emitter interface {
	Emit(ctx context.Context, o Out) error
	Fail(ctx context.Context, f Failure) error
}

// Processor is a stage's logic. Process is called concurrently from the
// runner's workers; it must be safe for that. Returning nil acks the
// message; a Permanent error terminates it and reports it on the errors
// subject; any other error is retried with backoff until the delivery
// limit, then reported and terminated.
type Processor interface {
	Process(ctx context.Context, m *Msg, e Emitter) error
}

// ProcessorFunc adapts a function to Processor.
type ProcessorFunc func(ctx context.Context, m *Msg, e Emitter) error

// Process calls f.
func (f ProcessorFunc) Process(ctx context.Context, m *Msg, e Emitter) error { return f(ctx, m, e) }

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Permanent marks err as a property of the input (bad data) that no retry
// can fix.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// Permanentf is Permanent(fmt.Errorf(...)).
func Permanentf(format string, args ...any) error { return Permanent(fmt.Errorf(format, args...)) }

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}
