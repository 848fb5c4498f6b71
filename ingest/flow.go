package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
)

// Backlog holds ingest back while the stages downstream have too much
// still to do: Wait returns when the pipeline can take another slice (or
// ctx ends), and Sent is told the bytes of each slice published, which
// count until the backlog next measures. pkg/bus.Backlog measures the
// work streams; nil reads ahead without bound. It must be safe for
// concurrent use.
type Backlog interface {
	Wait(ctx context.Context) error
	Sent(n int)
}

// jobProgress is how far a job has been read, kept in the progress bucket
// under the job's key after every item: a job redelivered after a crash
// skips the items already published instead of publishing them again,
// which the stream's dedupe window (Duplicates, 10 minutes) would not
// catch for a job longer than the window.
type jobProgress struct {
	// Items is the number of items of the walk (slices and rejected
	// inputs) fully handled, in walk order.
	Items    int64 `json:"items"`
	Slices   int64 `json:"slices"`
	Rejected int64 `json:"rejected"`
	Done     bool  `json:"done,omitempty"`
}

// flow is one job's read-ahead bound and progress record. Not safe for
// concurrent use (one per Process call).
type flow struct {
	kv      jetstream.KeyValue
	backlog Backlog
	key     string
	from    int64 // items published before this delivery
	item    int64 // items entered so far in this delivery
}

// jobKey names a job in the progress bucket: its replay, index and path.
func jobKey(job *lungsegv1.IngestJob) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%s", job.ReplayId, job.JobIndex, job.Path)))
	return "job." + hex.EncodeToString(sum[:20])
}

// startJob loads the job's progress (restoring the counts of done) and
// returns its flow.
func (s *Stage) startJob(ctx context.Context, job *lungsegv1.IngestJob, done *lungsegv1.IngestDone) (*flow, error) {
	f := &flow{kv: s.Progress, backlog: s.Backlog, key: jobKey(job)}
	if f.kv == nil {
		return f, nil
	}
	e, err := f.kv.Get(ctx, f.key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ingest: reading the progress of %s: %w", job.Path, err)
	}
	var p jobProgress
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		return f, nil // unreadable: read again, the dedupe window catches what it can
	}
	f.from, done.Slices, done.Rejected = p.Items, p.Slices, p.Rejected
	return f, nil
}

// next is called as each item of the walk begins: it records that the
// items before it are handled, reports whether this one was published by
// an earlier delivery (skip it), and otherwise waits for room downstream.
func (f *flow) next(ctx context.Context, done *lungsegv1.IngestDone) (skip bool, err error) {
	f.item++
	if f.item <= f.from {
		return true, nil
	}
	if f.item > 1 {
		if err := f.save(ctx, jobProgress{Items: f.item - 1, Slices: done.Slices, Rejected: done.Rejected}); err != nil {
			return false, err
		}
	}
	if f.backlog != nil {
		if err := f.backlog.Wait(ctx); err != nil {
			return false, err
		}
	}
	return false, nil
}

// finish records the whole job as handled.
func (f *flow) finish(ctx context.Context, done *lungsegv1.IngestDone) error {
	return f.save(ctx, jobProgress{Items: max(f.item, f.from), Slices: done.Slices, Rejected: done.Rejected, Done: true})
}

func (f *flow) save(ctx context.Context, p jobProgress) error {
	if f.kv == nil {
		return nil
	}
	b, _ := json.Marshal(p)
	if _, err := f.kv.Put(ctx, f.key, b); err != nil {
		return fmt.Errorf("ingest: recording progress: %w", err)
	}
	return nil
}
