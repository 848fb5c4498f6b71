package segment

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Batching errors.
var (
	ErrBatchOptions  = errors.New("segment: bad batching options")
	ErrBatcherClosed = errors.New("segment: batcher closed")
)

// BatchOptions configure a Batcher.
type BatchOptions struct {
	// MaxBatch is the most images in one call of the wrapped model
	// (at least 1). A single request of more images runs alone.
	MaxBatch int
	// MaxWait is how long the first request of a batch waits for others
	// to join it. 0 takes only the requests already queued.
	MaxWait time.Duration
	// Pixels is H×W of one image; every request must have n×Pixels values.
	Pixels int
}

// BatchStats count what a Batcher has run.
type BatchStats struct {
	// Requests and Images are the calls of Run and the images they held.
	Requests, Images int64
	// Batches is the calls of the wrapped model.
	Batches int64
}

// MeanBatch is Images / Batches (0 before the first batch).
func (s BatchStats) MeanBatch() float64 {
	if s.Batches == 0 {
		return 0
	}
	return float64(s.Images) / float64(s.Batches)
}

// Batcher is a Model that groups concurrent Run calls into one call of
// the Model it wraps: the first waiting request opens a batch, requests
// arriving within MaxWait join it until it holds MaxBatch images, then
// the concatenated inputs run as one batch and each caller gets its own
// slice of the output. It only pays off with several concurrent callers,
// such as a segment stage with Workers ≥ MaxBatch. Safe for concurrent use.
type Batcher struct {
	m    Model
	opts BatchOptions
	reqs chan *batchReq
	quit chan struct{}
	done chan struct{}
	once sync.Once

	requests, images, batches atomic.Int64
}

type batchReq struct {
	in    []float32
	n     int
	out   []float32
	err   error
	ready chan struct{}
}

// NewBatcher starts a Batcher around m; Close stops it (it does not close m).
func NewBatcher(m Model, o BatchOptions) (*Batcher, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: nil model", ErrBatchOptions)
	}
	if o.MaxBatch < 1 || o.MaxWait < 0 || o.Pixels < 1 {
		return nil, fmt.Errorf("%w: max batch %d, max wait %v, pixels %d", ErrBatchOptions, o.MaxBatch, o.MaxWait, o.Pixels)
	}
	b := &Batcher{m: m, opts: o, reqs: make(chan *batchReq), quit: make(chan struct{}), done: make(chan struct{})}
	go b.loop()
	return b, nil
}

// Provider reports the wrapped model's provider.
func (b *Batcher) Provider() string { return b.m.Provider() }

// Stats returns the counts so far.
func (b *Batcher) Stats() BatchStats {
	return BatchStats{Requests: b.requests.Load(), Images: b.images.Load(), Batches: b.batches.Load()}
}

// Run queues n images and waits for their probabilities.
func (b *Batcher) Run(input []float32, n int) ([]float32, error) {
	if n < 1 || len(input) != n*b.opts.Pixels {
		return nil, fmt.Errorf("segment: batcher: %d values for %d images of %d pixels", len(input), n, b.opts.Pixels)
	}
	r := &batchReq{in: input, n: n, ready: make(chan struct{})}
	select {
	case b.reqs <- r:
	case <-b.quit:
		return nil, ErrBatcherClosed
	}
	<-r.ready
	return r.out, r.err
}

// Close stops the batcher after the batch in flight; later Runs return
// ErrBatcherClosed. Closing twice is a no-op.
func (b *Batcher) Close() error {
	b.once.Do(func() { close(b.quit) })
	<-b.done
	return nil
}

func (b *Batcher) loop() {
	defer close(b.done)
	var carry *batchReq
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-b.reqs:
			case <-b.quit:
				return
			}
		}
		batch := []*batchReq{first}
		total := first.n
		if total < b.opts.MaxBatch {
			timer.Reset(b.opts.MaxWait)
		collect:
			for total < b.opts.MaxBatch {
				select {
				case r := <-b.reqs:
					if total+r.n > b.opts.MaxBatch {
						carry = r
						break collect
					}
					batch = append(batch, r)
					total += r.n
				case <-timer.C:
					break collect
				}
			}
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		b.run(batch, total)
	}
}

// run calls the model once for the batch. When a batch of several
// requests fails, each request is retried alone so that one bad input
// (NaN pixels, say) fails only its own caller.
func (b *Batcher) run(batch []*batchReq, total int) {
	b.requests.Add(int64(len(batch)))
	b.images.Add(int64(total))
	if len(batch) == 1 {
		r := batch[0]
		b.batches.Add(1)
		r.out, r.err = b.m.Run(r.in, r.n)
		close(r.ready)
		return
	}
	px := b.opts.Pixels
	in := make([]float32, 0, total*px)
	for _, r := range batch {
		in = append(in, r.in...)
	}
	b.batches.Add(1)
	out, err := b.m.Run(in, total)
	if err == nil && len(out) != total*px {
		err = fmt.Errorf("segment: batcher: model returned %d values for %d images", len(out), total)
	}
	if err != nil {
		for _, r := range batch {
			b.batches.Add(1)
			r.out, r.err = b.m.Run(r.in, r.n)
			close(r.ready)
		}
		return
	}
	off := 0
	for _, r := range batch {
		r.out = out[off : off+r.n*px : off+r.n*px]
		off += r.n * px
		close(r.ready)
	}
}
