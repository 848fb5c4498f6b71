package bus

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultMaxBacklog is the default bound on the bytes waiting in the work
// streams (RAW, READY and MASKS) before ingest stops reading: about 80
// slices of 512×512 with their input for one model, several seconds of
// segment's work, so segment never waits for ingest. An embedded server's
// memory follows what its streams hold (the file store caches the blocks
// being written and read): `lungseg bench --sections memory` measured the
// peak RSS of `lungseg run` rising with the bound (internal/bench/README.md).
const DefaultMaxBacklog = 64 << 20

// Backlog bounds how far ingest reads ahead of the stages downstream. With
// interest retention (WorkStreams), the bytes a work stream holds are the
// bytes some consumer has still to acknowledge: Wait returns while their
// sum is under MaxBytes and every work stream has a consumer (a slice
// published to a stream with none would be dropped), and otherwise polls
// until it is so. Safe for concurrent use; the stream states are read at
// most once per Poll, and between two readings what the caller reports
// with Sent counts as pending, so a fast publisher cannot send a Poll's
// worth of slices past the bound.
type Backlog struct {
	JS jetstream.JetStream
	// MaxBytes bounds the bytes pending in the work streams (default
	// DefaultMaxBacklog).
	MaxBytes int64
	// Streams are the streams measured (default WorkStreams).
	Streams []string
	// Poll is the least time between two readings (default 100 ms).
	Poll time.Duration
	// Waited, when set, is called with the time one Wait was held back.
	Waited func(d time.Duration)

	mu       sync.Mutex
	checked  time.Time
	consumed bool         // every measured stream had a consumer at the last reading
	last     int64        // bytes pending at the last reading
	sent     atomic.Int64 // bytes reported by Sent since the last reading
}

// Sent tells the backlog that n more bytes were just published to a
// measured stream: they count as pending until the next reading.
func (b *Backlog) Sent(n int) { b.sent.Add(int64(n)) }

// Pending returns the bytes held in the measured streams and whether each
// has a consumer.
func (b *Backlog) Pending(ctx context.Context) (int64, bool, error) {
	streams := b.Streams
	if len(streams) == 0 {
		streams = WorkStreams
	}
	var total int64
	consumers := true
	for _, name := range streams {
		st, err := b.JS.Stream(ctx, name)
		if err != nil {
			return 0, false, fmt.Errorf("bus: backlog of %s: %w", name, err)
		}
		s := st.CachedInfo().State
		total += int64(s.Bytes)
		if s.Consumers == 0 {
			consumers = false
		}
	}
	return total, consumers, nil
}

// Wait returns when the pipeline has room for another slice, or with
// ctx's error.
func (b *Backlog) Wait(ctx context.Context) error {
	limit := b.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxBacklog
	}
	poll := b.Poll
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var start time.Time
	for {
		fresh := time.Since(b.checked) < poll // the zero time is never fresh
		if fresh && b.consumed && b.last+b.sent.Load() < limit {
			break
		}
		if !fresh {
			pending, consumers, err := b.Pending(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return err
			}
			b.checked, b.last, b.consumed = time.Now(), pending, consumers
			b.sent.Store(0)
			if consumers && pending < limit {
				break
			}
		}
		if start.IsZero() {
			start = time.Now()
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	if !start.IsZero() && b.Waited != nil {
		b.Waited(time.Since(start))
	}
	return nil
}

// IngestProgressBucket is the key-value bucket where ingest records how
// far each job has been read, so that a job redelivered after a crash
// resumes there (ingest.Stage.Progress).
const IngestProgressBucket = "lungseg-ingest"

// ProgressStore creates or opens the ingest progress bucket (entries kept
// the streams' max age).
func ProgressStore(ctx context.Context, js jetstream.JetStream, o StreamOptions) (jetstream.KeyValue, error) {
	return keyValue(ctx, js, o, IngestProgressBucket, "how far each ingest job has been read", 1)
}
