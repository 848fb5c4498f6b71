package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// FollowOptions tune Follow; the zero value is usable.
type FollowOptions struct {
	// MaxBytes bounds one pull's bytes (jetstream.PullMaxBytes; default
	// 8 MiB).
	MaxBytes int
	// Check is how often the watchdog looks (default 5 s).
	Check time.Duration
	// Stall is how long the consumer may stay silent while the stream
	// holds newer matching messages before it is replaced (default 15 s).
	Stall time.Duration
	Log   zerolog.Logger
}

// Follower reads a stream in order; see Follow.
type Follower struct {
	js     jetstream.JetStream
	stream string
	cfg    jetstream.OrderedConsumerConfig
	handle func(jetstream.Msg)
	opts   FollowOptions

	handleMu sync.Mutex // one message handled at a time, in order
	mu       sync.Mutex
	cc       jetstream.ConsumeContext
	lastSeq  uint64    // stream sequence of the last message handled
	lastAt   time.Time // when a message was last handled (or the consumer made)
	restarts int
	stopped  bool
	done     chan struct{}
}

// Follow reads the messages of stream that match cfg.FilterSubjects, in
// stream order and each once, with a jetstream ordered consumer, and
// keeps reading when that consumer falls silent. nats.go's ordered
// consumer recreates itself after missed heartbeats, but a CI run saw
// one stay silent for minutes after the cluster node under it was killed
// (kill -9) while the stream went on growing. A watchdog therefore
// compares, every Check, the last stream sequence handled with the
// stream's last message matching the filters; when the consumer has been
// silent for Stall behind newer messages, it is replaced by a fresh one
// that starts after the last sequence handled. Handle is called from one
// goroutine at a time. Follow returns once the first consumer exists;
// the follower ends with ctx or Stop.
func Follow(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.OrderedConsumerConfig,
	handle func(jetstream.Msg), opts FollowOptions) (*Follower, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 8 << 20
	}
	if opts.Check <= 0 {
		opts.Check = 5 * time.Second
	}
	if opts.Stall <= 0 {
		opts.Stall = 15 * time.Second
	}
	f := &Follower{js: js, stream: stream, cfg: cfg, handle: handle, opts: opts, done: make(chan struct{})}
	if cfg.DeliverPolicy == jetstream.DeliverNewPolicy {
		// "New" is "after the stream's last message now": as a sequence,
		// a replacement consumer can start after what was handled.
		st, err := js.Stream(ctx, stream)
		if err != nil {
			return nil, fmt.Errorf("bus: following %s: %w", stream, err)
		}
		f.lastSeq = st.CachedInfo().State.LastSeq
		f.cfg.DeliverPolicy, f.cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, f.lastSeq+1
	}
	if err := f.start(ctx); err != nil {
		return nil, err
	}
	go f.watch(ctx)
	return f, nil
}

// start makes a consumer after the last sequence handled (the caller's
// configuration when nothing was handled yet).
func (f *Follower) start(ctx context.Context) error {
	f.mu.Lock()
	cfg, last := f.cfg, f.lastSeq
	f.mu.Unlock()
	if last > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = jetstream.DeliverByStartSequencePolicy, last+1, nil
	}
	c, err := f.js.OrderedConsumer(ctx, f.stream, cfg)
	if err != nil {
		return fmt.Errorf("bus: following %s %v: %w", f.stream, cfg.FilterSubjects, err)
	}
	cc, err := c.Consume(f.onMsg, jetstream.PullMaxBytes(f.opts.MaxBytes))
	if err != nil {
		return fmt.Errorf("bus: following %s %v: %w", f.stream, cfg.FilterSubjects, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		cc.Stop()
		return nil
	}
	if f.cc != nil {
		f.cc.Stop()
	}
	f.cc, f.lastAt = cc, time.Now()
	return nil
}

func (f *Follower) onMsg(m jetstream.Msg) {
	md, err := m.Metadata()
	f.handleMu.Lock()
	defer f.handleMu.Unlock()
	if err == nil {
		f.mu.Lock()
		seen := md.Sequence.Stream <= f.lastSeq || f.stopped
		if !seen {
			f.lastSeq, f.lastAt = md.Sequence.Stream, time.Now()
		}
		f.mu.Unlock()
		if seen {
			return // a replaced consumer's late delivery, or after Stop
		}
	}
	f.handle(m)
}

func (f *Follower) watch(ctx context.Context) {
	t := time.NewTicker(f.opts.Check)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			f.Stop()
			return
		case <-f.done:
			return
		case <-t.C:
		}
		f.mu.Lock()
		last, quiet := f.lastSeq, time.Since(f.lastAt)
		f.mu.Unlock()
		if quiet < f.opts.Stall {
			continue
		}
		newest, err := f.newest(ctx)
		if err != nil || newest <= last {
			continue
		}
		f.opts.Log.Warn().Str("stream", f.stream).Strs("filter", f.cfg.FilterSubjects).Uint64("handled", last).
			Uint64("newest", newest).Dur("silent", quiet).Msg("consumer silent behind its stream; replacing it")
		if err := f.start(ctx); err != nil {
			f.opts.Log.Warn().Err(err).Msg("replacing the consumer failed; trying again")
			continue
		}
		f.mu.Lock()
		f.restarts++
		f.mu.Unlock()
	}
}

// newest returns the stream sequence of the newest message that matches
// the filters and that the configuration asks for (0 when none).
func (f *Follower) newest(ctx context.Context) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := f.js.Stream(ctx, f.stream)
	if err != nil {
		return 0, err
	}
	filters := f.cfg.FilterSubjects
	if len(filters) == 0 {
		filters = []string{">"}
	}
	var newest uint64
	for _, subj := range filters {
		m, err := st.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if f.cfg.OptStartTime != nil && m.Time.Before(*f.cfg.OptStartTime) {
			continue
		}
		newest = max(newest, m.Sequence)
	}
	return newest, nil
}

// Restarts reports how often the watchdog replaced the consumer.
func (f *Follower) Restarts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restarts
}

// Stop ends the follower: no message is handed to handle after it
// returns (one being handled may still finish).
func (f *Follower) Stop() {
	f.mu.Lock()
	if f.stopped {
		f.mu.Unlock()
		return
	}
	f.stopped = true
	close(f.done)
	cc := f.cc
	f.mu.Unlock()
	if cc != nil {
		cc.Stop()
	}
}
