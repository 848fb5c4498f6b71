// Package dlq keeps the pipeline's dead letters: messages that a stage
// consumer gave up on. JetStream announces them with advisories
// ($JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES when the server stops
// redelivering a message that was never acknowledged, for example because
// the worker crashed on it every time, and ...MSG_TERMINATED when a
// runner terminates a message after its last retry or as bad input). A
// stream captures those advisories so none is lost while no capturer runs;
// the Capturer turns each into a copy of the dead message, with its
// original subject, headers and the reason, on the dead-letter stream
// (lung.dlq.<stream>.<consumer>). List shows the dead letters and Replay
// publishes them again on their original subjects.
package dlq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Streams, subjects and the capturer's durable consumer.
const (
	// StreamAdvisories captures the delivery advisories of every consumer.
	StreamAdvisories = "DLQ_ADVISORIES"
	// StreamDLQ holds the dead letters.
	StreamDLQ = "DLQ"
	// Prefix of dead-letter subjects: lung.dlq.<stream>.<consumer>.
	Prefix = "lung.dlq."
	// SubjMaxDeliveries and SubjTerminated are the advisories captured.
	SubjMaxDeliveries = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"
	SubjTerminated    = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>"
	// Durable is the capturer's consumer on StreamAdvisories.
	Durable = "dlq"
)

// Headers added to a dead letter (its original headers are kept).
const (
	HdrStream     = "Lung-Dlq-Stream"
	HdrSeq        = "Lung-Dlq-Stream-Seq"
	HdrConsumer   = "Lung-Dlq-Consumer"
	HdrSubject    = "Lung-Dlq-Subject"
	HdrReason     = "Lung-Dlq-Reason"
	HdrDeliveries = "Lung-Dlq-Deliveries"
	HdrKind       = "Lung-Dlq-Kind"
	HdrTime       = "Lung-Dlq-Time"
	HdrMissing    = "Lung-Dlq-Missing"
)

// Kinds of dead letter.
const (
	KindMaxDeliveries = "max_deliveries"
	KindTerminated    = "terminated"
)

// Sentinel errors.
var (
	// ErrNotFound means a dead letter with that sequence is not in the stream.
	ErrNotFound = errors.New("dlq: no such dead letter")
	// ErrMissingOriginal means the dead letter has no copy of the message
	// (it had left its stream before it was captured), so it cannot be
	// replayed.
	ErrMissingOriginal = errors.New("dlq: original message was not captured")
)

// Subject is the dead-letter subject of a consumer of a stream.
func Subject(stream, consumer string) string { return Prefix + stream + "." + consumer }

// Streams returns the configurations of the advisory and dead-letter
// streams (file storage, the replicas of o; dead letters are kept 30 days
// unless o.MaxAge is longer).
func Streams(o bus.StreamOptions) []jetstream.StreamConfig {
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	age := 30 * 24 * time.Hour
	if o.MaxAge > age {
		age = o.MaxAge
	}
	return []jetstream.StreamConfig{
		{
			Name:        StreamAdvisories,
			Description: "JetStream max-deliveries and terminated advisories, for the dead-letter capturer",
			Subjects:    []string{SubjMaxDeliveries, SubjTerminated},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.WorkQueuePolicy,
			Replicas:    o.Replicas,
			MaxAge:      age,
			MaxBytes:    bus.StreamBytes(o, StreamAdvisories),
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        StreamDLQ,
			Description: "dead letters: messages a stage consumer gave up on, with the reason",
			Subjects:    []string{Prefix + ">"},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Replicas:    o.Replicas,
			MaxAge:      age,
			MaxBytes:    bus.StreamBytes(o, StreamDLQ),
			Duplicates:  10 * time.Minute,
			MaxMsgSize:  bus.MaxPayload,
			Discard:     jetstream.DiscardOld,
		},
	}
}

// Ensure creates or updates the advisory and dead-letter streams.
func Ensure(ctx context.Context, js jetstream.JetStream, o bus.StreamOptions) error {
	for _, cfg := range Streams(o) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("dlq: creating stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// ConsumerConfig is the capturer's durable consumer.
func ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       Durable,
		Description:   "lungseg dead-letter capturer",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// advisory is the union of the max-deliveries and terminated advisories.
type advisory struct {
	Type       string `json:"type"`
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
	Reason     string `json:"reason"`
}

// Capturer turns advisories into dead letters.
type Capturer struct {
	JS  jetstream.JetStream
	Log zerolog.Logger
	// SkipTerminated ignores messages terminated by a runner (they are
	// already on the errors subject) and keeps only those the server
	// stopped redelivering.
	SkipTerminated bool
}

// Run captures until ctx ends.
func (c *Capturer) Run(ctx context.Context) error {
	cons, err := c.JS.CreateOrUpdateConsumer(ctx, StreamAdvisories, ConsumerConfig())
	if err != nil {
		return fmt.Errorf("dlq: creating consumer: %w", err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if err := c.Capture(ctx, m.Subject(), m.Data()); err != nil {
			c.Log.Error().Err(err).Str("advisory", m.Subject()).Msg("capturing dead letter; will retry")
			_ = m.NakWithDelay(2 * time.Second)
			return
		}
		_ = m.Ack()
	})
	if err != nil {
		return fmt.Errorf("dlq: consume: %w", err)
	}
	c.Log.Info().Msg("dead-letter capturer running")
	<-ctx.Done()
	cc.Stop()
	return nil
}

// Capture records the dead letter one advisory announces. It is
// idempotent: the dead letter's Nats-Msg-Id is its stream, sequence and
// consumer.
func (c *Capturer) Capture(ctx context.Context, subject string, data []byte) error {
	var a advisory
	if err := json.Unmarshal(data, &a); err != nil {
		c.Log.Warn().Err(err).Str("advisory", subject).Msg("undecodable advisory skipped")
		return nil
	}
	kind := KindMaxDeliveries
	if strings.HasPrefix(subject, strings.TrimSuffix(SubjTerminated, ">")) {
		kind = KindTerminated
		if c.SkipTerminated {
			return nil
		}
	}
	if a.Stream == StreamDLQ || a.Stream == StreamAdvisories || a.Stream == "" {
		return nil
	}
	reason := a.Reason
	if kind == KindMaxDeliveries {
		reason = fmt.Sprintf("not acknowledged after %d deliveries (consumer max deliver reached)", a.Deliveries)
	} else if reason == "" {
		reason = "terminated by the consumer"
	}
	out := nats.NewMsg(Subject(a.Stream, a.Consumer))
	st, err := c.JS.Stream(ctx, a.Stream)
	if err != nil {
		return fmt.Errorf("dlq: looking up stream %s: %w", a.Stream, err)
	}
	orig, err := st.GetMsg(ctx, a.StreamSeq)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		out.Header.Set(HdrMissing, "true")
	case err != nil:
		return fmt.Errorf("dlq: reading %s sequence %d: %w", a.Stream, a.StreamSeq, err)
	default:
		for k, vs := range orig.Header {
			if k == nats.MsgIdHdr || strings.HasPrefix(k, "Nats-") {
				continue
			}
			for _, v := range vs {
				out.Header.Add(k, v)
			}
		}
		out.Header.Set(HdrSubject, orig.Subject)
		out.Data = orig.Data
	}
	out.Header.Set(HdrStream, a.Stream)
	out.Header.Set(HdrSeq, strconv.FormatUint(a.StreamSeq, 10))
	out.Header.Set(HdrConsumer, a.Consumer)
	out.Header.Set(HdrReason, reason)
	out.Header.Set(HdrDeliveries, strconv.FormatUint(a.Deliveries, 10))
	out.Header.Set(HdrKind, kind)
	out.Header.Set(HdrTime, time.Now().UTC().Format(time.RFC3339Nano))
	id := strings.Join([]string{"dlq", a.Stream, strconv.FormatUint(a.StreamSeq, 10), a.Consumer}, "|")
	if _, err := c.JS.PublishMsg(ctx, out, jetstream.WithMsgID(id)); err != nil {
		return fmt.Errorf("dlq: publishing dead letter: %w", err)
	}
	c.Log.Warn().Str("stream", a.Stream).Uint64("seq", a.StreamSeq).Str("consumer", a.Consumer).
		Str("kind", kind).Str("slice", orig0(orig, bus.HdrSlice)).Msg("dead letter captured")
	return nil
}

func orig0(m *jetstream.RawStreamMsg, h string) string {
	if m == nil || m.Header == nil {
		return ""
	}
	return m.Header.Get(h)
}

// Entry describes one dead letter.
type Entry struct {
	// Seq is the dead letter's sequence in StreamDLQ.
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Kind       string    `json:"kind"`
	Stream     string    `json:"stream"`
	StreamSeq  uint64    `json:"stream_seq"`
	Consumer   string    `json:"consumer"`
	Subject    string    `json:"subject"`
	Deliveries uint64    `json:"deliveries"`
	Reason     string    `json:"reason"`
	SliceID    string    `json:"slice,omitempty"`
	ReplayID   string    `json:"replay,omitempty"`
	Model      string    `json:"model,omitempty"`
	Bytes      int       `json:"bytes"`
	// Missing is set when the original message could not be read.
	Missing bool `json:"missing,omitempty"`
}

func entryOf(seq uint64, h nats.Header, data []byte) Entry {
	e := Entry{
		Seq: seq, Kind: h.Get(HdrKind), Stream: h.Get(HdrStream), Consumer: h.Get(HdrConsumer),
		Subject: h.Get(HdrSubject), Reason: h.Get(HdrReason), SliceID: h.Get(bus.HdrSlice),
		ReplayID: h.Get(bus.HdrReplay), Model: h.Get(bus.HdrModel), Bytes: len(data),
		Missing: h.Get(HdrMissing) == "true",
	}
	e.StreamSeq, _ = strconv.ParseUint(h.Get(HdrSeq), 10, 64)
	e.Deliveries, _ = strconv.ParseUint(h.Get(HdrDeliveries), 10, 64)
	e.Time, _ = time.Parse(time.RFC3339Nano, h.Get(HdrTime))
	return e
}

// Filter selects dead letters; empty fields match all.
type Filter struct {
	Stream, Consumer, Replay string
}

func (f Filter) match(e Entry) bool {
	return (f.Stream == "" || f.Stream == e.Stream) && (f.Consumer == "" || f.Consumer == e.Consumer) &&
		(f.Replay == "" || f.Replay == e.ReplayID)
}

func (f Filter) subject() string {
	switch {
	case f.Stream != "" && f.Consumer != "":
		return Subject(f.Stream, f.Consumer)
	case f.Stream != "":
		return Prefix + f.Stream + ".*"
	}
	return Prefix + ">"
}

// List returns the dead letters that match f, oldest first.
func List(ctx context.Context, js jetstream.JetStream, f Filter) ([]Entry, error) {
	st, err := js.Stream(ctx, StreamDLQ)
	if err != nil {
		return nil, fmt.Errorf("dlq: %w", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dlq: %w", err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{f.subject()}})
	if err != nil {
		return nil, fmt.Errorf("dlq: %w", err)
	}
	var out []Entry
	last := info.State.LastSeq
	for {
		batch, err := cons.FetchNoWait(256)
		if err != nil {
			return nil, fmt.Errorf("dlq: reading: %w", err)
		}
		n := 0
		var seq uint64
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return nil, err
			}
			seq = md.Sequence.Stream
			if e := entryOf(seq, m.Headers(), m.Data()); f.match(e) {
				out = append(out, e)
			}
		}
		if err := batch.Error(); err != nil {
			return nil, fmt.Errorf("dlq: reading: %w", err)
		}
		if n == 0 || seq >= last {
			return out, nil
		}
	}
}

// ReplayOptions select what Replay re-drives.
type ReplayOptions struct {
	// Seqs are dead-letter sequences; empty means every dead letter that
	// matches Filter.
	Seqs   []uint64
	Filter Filter
	// Keep leaves replayed dead letters in the stream (by default each is
	// deleted once republished).
	Keep bool
}

// Replay publishes dead letters again on their original subjects with
// their original headers, so the consumer that gave up on them gets them
// anew, and returns how many it re-drove. Each republish has the
// Nats-Msg-Id dlq-replay|<seq>, so replaying the same dead letter twice
// within the stream's dedupe window publishes it once. A dead letter of a
// work stream whose subject no consumer takes (its stage is not running)
// is not republished: Replay stops with an error wrapping
// bus.ErrNoConsumer and the dead letter stays.
func Replay(ctx context.Context, js jetstream.JetStream, o ReplayOptions) (int, error) {
	// Asked afresh on each Replay (an operator's command, rare), not from
	// the process's cache: a consumer removed since would not be noticed.
	var interest bus.Interest
	seqs := o.Seqs
	if len(seqs) == 0 {
		es, err := List(ctx, js, o.Filter)
		if err != nil {
			return 0, err
		}
		for _, e := range es {
			seqs = append(seqs, e.Seq)
		}
	}
	st, err := js.Stream(ctx, StreamDLQ)
	if err != nil {
		return 0, fmt.Errorf("dlq: %w", err)
	}
	n := 0
	for _, seq := range seqs {
		raw, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return n, fmt.Errorf("%w: %d", ErrNotFound, seq)
		}
		if err != nil {
			return n, fmt.Errorf("dlq: reading dead letter %d: %w", seq, err)
		}
		e := entryOf(seq, raw.Header, raw.Data)
		if e.Missing || e.Subject == "" {
			return n, fmt.Errorf("%w (dead letter %d)", ErrMissingOriginal, seq)
		}
		// A work stream would acknowledge a message no consumer takes and
		// drop it: the dead letter stays until its stage runs again.
		if err := interest.Check(ctx, js, e.Subject); err != nil {
			return n, fmt.Errorf("dlq: republishing dead letter %d to %s: %w", seq, e.Subject, err)
		}
		msg := nats.NewMsg(e.Subject)
		msg.Data = raw.Data
		for k, vs := range raw.Header {
			if strings.HasPrefix(k, "Lung-Dlq-") || strings.HasPrefix(k, "Nats-") {
				continue
			}
			for _, v := range vs {
				msg.Header.Add(k, v)
			}
		}
		if _, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID("dlq-replay|"+strconv.FormatUint(seq, 10))); err != nil {
			return n, fmt.Errorf("dlq: republishing dead letter %d to %s: %w", seq, e.Subject, err)
		}
		n++
		if !o.Keep {
			if err := st.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return n, fmt.Errorf("dlq: deleting replayed dead letter %d: %w", seq, err)
			}
		}
	}
	return n, nil
}
