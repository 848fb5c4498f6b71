package stage

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// Config configures a Runner. Zero fields take the defaults below.
type Config struct {
	// Name is the stage name: it appears in logs, error subjects and
	// dedupe ids.
	Name string
	// Stream and FilterSubjects select what the durable consumer reads.
	Stream         string
	FilterSubjects []string
	// Durable is the consumer name; workers in other processes with the
	// same name share its work. Defaults to Name.
	Durable string
	// Workers processing messages concurrently in this process (default 1).
	Workers int
	// MaxDeliver bounds deliveries of one message (default 5): a message
	// that fails on its MaxDeliver-th delivery or later is reported on the
	// errors subject and terminated. The consumer's own MaxDeliver is
	// ServerMaxDeliver of it, a backstop: deliveries no worker saw (a pull
	// that expired before its message came, a cluster node killed
	// mid-delivery) count on the server, and a message that reached the
	// server's limit unseen would stay in an interest stream unprocessed
	// and unreported.
	MaxDeliver int
	// AckWait is how long JetStream waits for a delivered message to be
	// settled before it redelivers it (default DefaultAckWait). The runner
	// sends an in-progress heartbeat every AckWait/HeartbeatsPerAckWait for
	// every message this process holds, from the moment it is fetched, so a
	// slow message (a long ingest job, an ONNX inference on a busy machine)
	// is never redelivered while its process lives, and the messages of a
	// process that died are redelivered after AckWait.
	AckWait time.Duration
	// Backoff are the delays before retrying a failed message, indexed
	// by delivery count (default 1s, 5s, 15s, 30s).
	Backoff []time.Duration
	// MaxAckPending bounds unacknowledged messages across all workers of
	// the durable (default 256).
	MaxAckPending int
}

// DefaultAckWait is the consumers' redelivery timeout: after a crash, the
// messages the dead process held come back this long after its last
// heartbeat.
const DefaultAckWait = 30 * time.Second

// HeartbeatsPerAckWait is how many in-progress heartbeats the runner sends
// per AckWait for each message it holds: a message survives
// HeartbeatsPerAckWait-1 lost or late heartbeats in a row (a stalled
// connection, a stop-the-world pause, a machine saturated by other work).
const HeartbeatsPerAckWait = 6

// fetchWait bounds one idle pull; shutdown cancels it at once.
const fetchWait = 5 * time.Second

func (c *Config) setDefaults() {
	if c.Durable == "" {
		c.Durable = c.Name
	}
	if c.Workers <= 0 {
		c.Workers = 1
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = 5
	}
	if c.AckWait <= 0 {
		c.AckWait = DefaultAckWait
	}
	if len(c.Backoff) == 0 {
		c.Backoff = []time.Duration{time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second}
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = 256
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if err := bus.CheckToken("stage name", c.Name); err != nil {
		return err
	}
	if c.Stream == "" {
		return errors.New("stage: stream is required")
	}
	return nil
}

// Runner consumes one durable consumer and runs a Processor on each
// message.
type Runner struct {
	js   jetstream.JetStream
	cfg  Config
	proc Processor
	log  zerolog.Logger
	// Hooks for observability; nil fields are skipped.
	Hooks Hooks
}

// Hooks observe a Runner's messages (for metrics).
type Hooks struct {
	Received  func(stage string)
	Acked     func(stage string, d time.Duration)
	Failed    func(stage string, permanent bool)
	Retried   func(stage string)
	Published func(stage, subject string)
}

// New returns a Runner; call Run to start it.
func New(js jetstream.JetStream, cfg Config, p Processor, log zerolog.Logger) (*Runner, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Runner{js: js, cfg: cfg, proc: p, log: log.With().Str("stage", cfg.Name).Logger()}, nil
}

// DeliveryMargin is how many times more deliveries the server allows
// than the runner's MaxDeliver (see Config.MaxDeliver).
const DeliveryMargin = 4

// ServerMaxDeliver is the consumer MaxDeliver of a runner whose
// Config.MaxDeliver is n (unlimited stays unlimited).
func ServerMaxDeliver(n int) int {
	if n <= 0 {
		return n
	}
	return n * DeliveryMargin
}

// Consumer creates or updates the runner's durable consumer.
func (r *Runner) Consumer(ctx context.Context) (jetstream.Consumer, error) {
	cc := jetstream.ConsumerConfig{
		Durable:        r.cfg.Durable,
		Description:    "lungseg stage " + r.cfg.Name,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        r.cfg.AckWait,
		MaxDeliver:     ServerMaxDeliver(r.cfg.MaxDeliver),
		MaxAckPending:  r.cfg.MaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		FilterSubjects: r.cfg.FilterSubjects,
	}
	c, err := r.js.CreateOrUpdateConsumer(ctx, r.cfg.Stream, cc)
	if err != nil {
		return nil, fmt.Errorf("stage %s: creating consumer %s on %s: %w", r.cfg.Name, r.cfg.Durable, r.cfg.Stream, err)
	}
	return c, nil
}

// Run consumes until ctx is cancelled, then lets the workers finish the
// messages in hand and returns. Each worker fetches one message at a time,
// only when it is free: the process holds no message it is not working on
// (no client-side read-ahead to buffer, to heartbeat or to lose in a crash),
// so its memory is bounded by its workers, and the rest of the backlog waits
// in the stream where another worker of the durable can take it.
func (r *Runner) Run(ctx context.Context) error {
	cons, err := r.Consumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	r.log.Info().Str("consumer", r.cfg.Durable).Int("workers", r.cfg.Workers).Dur("ack_wait_ms", r.cfg.AckWait).Msg("stage running")
	var wg sync.WaitGroup
	for i := 0; i < r.cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(ctx, cons)
		}()
	}
	wg.Wait()
	r.log.Info().Msg("stage stopped")
	return nil
}

// work is one worker: fetch one message, handle it, repeat until ctx ends.
func (r *Runner) work(ctx context.Context, cons jetstream.Consumer) {
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, fetchWait)
		b, err := cons.Fetch(1, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			if ctx.Err() == nil {
				r.log.Debug().Err(err).Msg("fetch")
				sleep(ctx, 200*time.Millisecond) // server away: do not spin
			}
			continue
		}
		n := 0
		for m := range b.Messages() {
			n++
			r.handle(ctx, m)
		}
		cancel()
		if err := b.Error(); n == 0 && err != nil && ctx.Err() == nil &&
			!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			r.log.Debug().Err(err).Msg("fetch")
			sleep(ctx, 200*time.Millisecond)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// handle runs the processor on one message and settles it.
func (r *Runner) handle(ctx context.Context, jm jetstream.Msg) {
	start := time.Now()
	h := jm.Headers()
	m := &Msg{
		Subject:  jm.Subject(),
		Data:     jm.Data(),
		Header:   h,
		SliceID:  h.Get(bus.HdrSlice),
		ReplayID: h.Get(bus.HdrReplay),
		Model:    h.Get(bus.HdrModel),
	}
	if md, err := jm.Metadata(); err == nil {
		m.Delivered = md.NumDelivered
	}
	m.Last = m.Delivered >= uint64(r.cfg.MaxDeliver)
	m.Log = withIDs(r.log.With(), m.SliceID, m.Model, m.ReplayID).Logger()
	if r.Hooks.Received != nil {
		r.Hooks.Received(r.cfg.Name)
	}

	// Heartbeats keep a long message (a big pickle, a slow inference)
	// from being redelivered while this process lives.
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(r.cfg.AckWait / HeartbeatsPerAckWait)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				_ = jm.InProgress()
			case <-done:
				return
			}
		}
	}()
	em := &emitter{r: r}
	err := r.resolve(ctx, m)
	if err == nil {
		err = r.safeProcess(ctx, m, em)
	}
	close(done)

	switch {
	case err == nil:
		// Finish the ack even when shutting down: the output is published.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		aerr := jm.DoubleAck(actx)
		cancel()
		if aerr != nil {
			m.Log.Warn().Err(aerr).Msg("ack failed; message will be redelivered and deduped")
			return
		}
		r.release(ctx, jm)
		if r.Hooks.Acked != nil {
			r.Hooks.Acked(r.cfg.Name, time.Since(start))
		}
	case ctx.Err() != nil:
		_ = jm.Nak()
	case IsPermanent(err) || m.Delivered >= uint64(r.cfg.MaxDeliver):
		perm := IsPermanent(err)
		m.Log.Error().Err(err).Bool("permanent", perm).Uint64("delivered", m.Delivered).Msg("message failed")
		if ferr := em.report(ctx, Failure{SliceID: m.SliceID, ReplayID: m.ReplayID, Model: m.Model, Err: err}, m.Subject, perm); ferr != nil {
			// Could not report it: keep the message rather than lose it.
			m.Log.Error().Err(ferr).Msg("reporting failure; will retry")
			_ = jm.NakWithDelay(r.backoff(m.Delivered))
			return
		}
		_ = jm.TermWithReason(truncate(err.Error(), 200))
		if r.Hooks.Failed != nil {
			r.Hooks.Failed(r.cfg.Name, perm)
		}
	default:
		d := r.backoff(m.Delivered)
		m.Log.Warn().Err(err).Uint64("delivered", m.Delivered).Dur("retry_in_ms", d).Msg("message failed; retrying")
		_ = jm.NakWithDelay(d)
		if r.Hooks.Retried != nil {
			r.Hooks.Retried(r.cfg.Name)
		}
	}
}

func (r *Runner) backoff(delivered uint64) time.Duration {
	i := int(delivered) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(r.cfg.Backoff) {
		i = len(r.cfg.Backoff) - 1
	}
	return r.cfg.Backoff[i]
}

// safeProcess turns a panic in the processor into a permanent error, so
// one poisonous input cannot stop the stage.
func (r *Runner) safeProcess(ctx context.Context, m *Msg, e Emitter) (err error) {
	defer func() {
		if p := recover(); p != nil {
			m.Log.Error().Interface("panic", p).Bytes("stack", debug.Stack()).Msg("processor panicked")
			err = Permanentf("stage %s: panic: %v", r.cfg.Name, p)
		}
	}()
	return r.proc.Process(ctx, m, e)
}

type emitter struct{ r *Runner }

func (e *emitter) Emit(ctx context.Context, o Out) error {
	return Publish(ctx, e.r.js, e.r.cfg.Name, o, e.r.Hooks.Published)
}

func (e *emitter) Fail(ctx context.Context, f Failure) error {
	l := withIDs(e.r.log.With(), f.SliceID, f.Model, f.ReplayID).Logger()
	l.Error().Err(f.Err).Msg("input rejected")
	return e.report(ctx, f, "", true)
}

func (e *emitter) report(ctx context.Context, f Failure, subject string, permanent bool) error {
	return PublishError(ctx, e.r.js, e.r.cfg.Name, f, subject, permanent)
}

// Publish sends o durably, waiting for the stream's acknowledgement, with
// the pipeline headers and the dedupe id. A message bound for a work
// stream that no consumer would take is not sent: the stream would drop
// it while acknowledging it. Publish returns an error wrapping
// bus.ErrNoConsumer instead (bus.CheckInterest), which the runner retries
// like any other.
func Publish(ctx context.Context, js jetstream.JetStream, stageName string, o Out, hook func(stage, subject string)) error {
	if err := bus.CheckInterest(ctx, js, o.Subject); err != nil {
		return fmt.Errorf("publishing to %s: %w", o.Subject, err)
	}
	msg := nats.NewMsg(o.Subject)
	msg.Data = o.Data
	if o.SliceID != "" {
		msg.Header.Set(bus.HdrSlice, o.SliceID)
	}
	if o.ReplayID != "" {
		msg.Header.Set(bus.HdrReplay, o.ReplayID)
	}
	if o.Model != "" {
		msg.Header.Set(bus.HdrModel, o.Model)
	}
	id := o.MsgID
	if id == "" {
		id = bus.MsgID(o.ReplayID, o.SliceID, stageName, o.Model)
	}
	ref, err := offload(ctx, js, id, msg)
	if err != nil {
		return fmt.Errorf("publishing to %s: %w", o.Subject, err)
	}
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id))
	dropDuplicate(ctx, js, ref, ack)
	if err != nil {
		return fmt.Errorf("publishing to %s: %w", o.Subject, err)
	}
	if hook != nil {
		hook(stageName, o.Subject)
	}
	return nil
}

// PublishError reports a failure on lung.errors.<stage>.<replay>.
func PublishError(ctx context.Context, js jetstream.JetStream, stageName string, f Failure, subject string, permanent bool) error {
	ev := &lungsegv1.ErrorEvent{
		Stage:     stageName,
		ReplayId:  f.ReplayID,
		Id:        f.SliceID,
		Model:     f.Model,
		Error:     f.Err.Error(),
		Permanent: permanent,
		UnixNano:  time.Now().UnixNano(),
		Subject:   subject,
	}
	b, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	return Publish(ctx, js, stageName, Out{
		Subject:  bus.ErrorsSubject(stageName, f.ReplayID),
		Data:     b,
		SliceID:  f.SliceID,
		ReplayID: f.ReplayID,
		Model:    f.Model,
		MsgID:    bus.MsgID(f.ReplayID, f.SliceID, stageName+"-error", f.Model),
	}, nil)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// withIDs adds the slice, model and replay ids that are set (an empty
// "model=" says nothing and reads like a bug).
func withIDs(c zerolog.Context, slice, model, replay string) zerolog.Context {
	for _, kv := range [][2]string{{"slice", slice}, {"model", model}, {"replay", replay}} {
		if kv[1] != "" {
			c = c.Str(kv[0], kv[1])
		}
	}
	return c
}
