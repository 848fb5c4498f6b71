package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/preprocess"
	"github.com/lungseg/lungseg/score"
	"github.com/lungseg/lungseg/segment"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Pipeline compares the whole pipeline with a bare loop on one model.
type Pipeline struct {
	Model   string `json:"model"`
	Threads int    `json:"threads"`
	Slices  int    `json:"slices"`
	// PipelineSlicesPerS is the median over rounds of slices over the
	// wall time of a replay of a DICOM series (publish to last score) on
	// an embedded JetStream with every stage in this process, one worker
	// each.
	PipelineSlicesPerS float64 `json:"pipeline_slices_per_s"`
	// PipelineSpread, BareSpread and RatioSpread are the min, median and
	// max over rounds (RatioSpread pairs each round's two sides).
	PipelineSpread Spread `json:"pipeline_spread"`
	BareSpread     Spread `json:"bare_spread"`
	RatioSpread    Spread `json:"ratio_spread"`
	// BareSlicesPerS is the median over rounds of the same slices, held
	// decoded in memory, through preprocess.Input, Session.Run (batch 1),
	// imgx.ResizeBilinear and score.Compare in one loop.
	BareSlicesPerS float64 `json:"bare_slices_per_s"`
	// Ratio is PipelineSlicesPerS / BareSlicesPerS (target ≥ 0.9).
	Ratio float64 `json:"ratio"`
	// InferenceShare is the bare loop's time in Session.Run over its total.
	InferenceShare float64 `json:"bare_inference_share"`
}

// Batching compares the pipeline with and without segment.Batcher.
type Batching struct {
	Model     string  `json:"model"`
	Threads   int     `json:"threads"`
	Slices    int     `json:"slices"`
	MaxBatch  int     `json:"max_batch"`
	MaxWaitMs float64 `json:"max_wait_ms"`
	// Workers of the batched segment stage (the unbatched one has 1).
	Workers int `json:"workers"`
	// UnbatchedSlicesPerS and BatchedSlicesPerS are medians over rounds;
	// the spreads give min, median and max, GainSpread over paired rounds.
	UnbatchedSpread     Spread  `json:"unbatched_spread"`
	BatchedSpread       Spread  `json:"batched_spread"`
	GainSpread          Spread  `json:"gain_spread"`
	UnbatchedSlicesPerS float64 `json:"unbatched_slices_per_s"`
	BatchedSlicesPerS   float64 `json:"batched_slices_per_s"`
	// Gain is BatchedSlicesPerS / UnbatchedSlicesPerS.
	Gain float64 `json:"gain"`
	// MeanBatch is the images per model call the batcher achieved.
	MeanBatch float64 `json:"mean_batch"`
}

// phantomSet is a DICOM series written for the pipeline and decode
// sections, with its slices kept in memory for the bare loop.
type phantomSet struct {
	dir, masks string
	slices     []phantom.Slice
	files      []string
}

func (r *runner) phantoms(name string, seed int64, n int) (*phantomSet, error) {
	dir := filepath.Join(r.tmp, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &phantomSet{dir: dir, masks: filepath.Join(dir, phantom.MasksDir),
		slices: phantom.Generate(seed, n, phantom.Options{Series: true})}
	if err := phantom.WriteDICOM(dir, s.slices); err != nil {
		return nil, err
	}
	for i := range s.slices {
		s.files = append(s.files, filepath.Join(dir, s.slices[i].Name()+".dcm"))
	}
	return s, nil
}

// mainSet returns the run's N-slice series and a 2-slice warm-up series.
func (r *runner) mainSet() (*phantomSet, *phantomSet, error) {
	if r.series != nil {
		return r.series, r.warm, nil
	}
	main, err := r.phantoms("series", 21, r.o.N)
	if err != nil {
		return nil, nil, err
	}
	warm, err := r.phantoms("warmup", 22, 2)
	if err != nil {
		return nil, nil, err
	}
	r.series, r.warm = main, warm
	return main, warm, nil
}

// harness is a running pipeline on its own embedded server.
type harness struct {
	srv     *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	stop    context.CancelFunc
	rctx    context.Context
	rcancel context.CancelCauseFunc
	errc    chan error
	closers []func() error
	batcher *segment.Batcher
}

// batchCfg asks startPipeline to run segment itself, with a Batcher.
type batchCfg struct {
	opts    segment.BatchOptions
	workers int
}

// startPipeline runs every stage for card on a fresh embedded server:
// all through pipeline.Run, or, with bc, ingest, preprocess and score
// through pipeline.Run and segment on a Batcher with bc.workers workers.
func (r *runner) startPipeline(ctx context.Context, reg *model.Registry, card *model.Card, threads int, bc *batchCfg) (*harness, error) {
	store, err := os.MkdirTemp(r.tmp, "js-")
	if err != nil {
		return nil, err
	}
	h := &harness{errc: make(chan error, 2)}
	ok := false
	defer func() {
		if !ok {
			h.Close()
		}
	}()
	if h.srv, err = bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: store}); err != nil {
		return nil, err
	}
	if h.nc, err = bus.ConnectEmbedded(h.srv, "lungseg-bench"); err != nil {
		return nil, err
	}
	if h.js, err = bus.JetStream(h.nc); err != nil {
		return nil, err
	}
	if err := bus.EnsureStreams(ctx, h.js, bus.StreamOptions{}); err != nil {
		return nil, err
	}
	io := r.o.infer(threads)
	pc := pipeline.Config{Registry: reg, Models: []string{card.Name}, Defaults: []string{card.Name},
		Infer: io, Formats: formats.All()}
	log := *r.o.Log
	var sr *stage.Runner
	if bc != nil {
		pc.Stages = []string{pipeline.Ingest, pipeline.Preprocess, pipeline.Score}
		sess, err := infer.Open(card, io, log)
		if err != nil {
			return nil, err
		}
		h.closers = append(h.closers, sess.Close)
		bo := bc.opts
		bo.Pixels = card.Input.Height * card.Input.Width
		if h.batcher, err = segment.NewBatcher(sess, bo); err != nil {
			return nil, err
		}
		h.closers = append(h.closers, h.batcher.Close)
		sr, err = stage.New(h.js, stage.Config{Name: pipeline.Segment, Durable: "segment-" + card.Name,
			Stream: bus.StreamReady, FilterSubjects: []string{bus.ReadySubject(card.Name)}, Workers: bc.workers},
			&segment.Stage{Card: card, Model: h.batcher}, log)
		if err != nil {
			return nil, err
		}
		if _, err := sr.Consumer(ctx); err != nil {
			return nil, err
		}
	}
	// A stage that stops early cancels the replay in flight.
	pctx, stop := context.WithCancel(ctx)
	h.rctx, h.rcancel = context.WithCancelCause(ctx)
	h.stop = stop
	watch := func(run func(context.Context) error) {
		err := run(pctx)
		if err != nil && pctx.Err() == nil {
			h.rcancel(fmt.Errorf("bench: pipeline stopped: %w", err))
		}
		h.errc <- err
	}
	if sr != nil {
		go watch(sr.Run)
	} else {
		h.errc <- nil
	}
	go watch(func(c context.Context) error { return pipeline.Run(c, h.js, pc, log) })
	ok = true
	return h, nil
}

// Close stops the stages and the server.
func (h *harness) Close() {
	if h.stop != nil {
		h.stop()
		for i := 0; i < 2; i++ {
			<-h.errc
		}
	}
	for i := len(h.closers) - 1; i >= 0; i-- {
		_ = h.closers[i]()
	}
	if h.nc != nil {
		h.nc.Close()
	}
	if h.srv != nil {
		h.srv.Shutdown()
		h.srv.WaitForShutdown()
	}
}

// replay runs one replay of set and returns its wall time.
func (h *harness) replay(ctx context.Context, r *runner, set *phantomSet) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopOnFail := context.AfterFunc(h.rctx, cancel)
	defer stopOnFail()
	rep, err := replay.Run(ctx, h.js, replay.Options{Inputs: []string{set.dir}, MasksDir: set.masks,
		Timeout: 30 * time.Minute}, *r.o.Log)
	d := time.Since(start)
	if err != nil {
		if c := context.Cause(h.rctx); c != nil {
			err = c
		}
		return 0, fmt.Errorf("bench: replay: %w", err)
	}
	if len(rep.Errors) > 0 {
		return 0, fmt.Errorf("bench: replay: %d errors, first: %s %s: %s", len(rep.Errors),
			rep.Errors[0].Stage, rep.Errors[0].ID, rep.Errors[0].Error)
	}
	if len(rep.Slices) != len(set.slices) {
		return 0, fmt.Errorf("bench: replay scored %d slices of %d", len(rep.Slices), len(set.slices))
	}
	return d, nil
}

// bareLoop runs the pipeline's per-slice work without the bus and returns
// the total time and the part of it in Session.Run.
func bareLoop(sess *infer.Session, card *model.Card, slices []phantom.Slice) (total, inference time.Duration, err error) {
	h, w := card.Input.Height, card.Input.Width
	start := time.Now()
	for i := range slices {
		s := &slices[i]
		x := preprocess.Input(s.HU, card)
		t := time.Now()
		prob, err := sess.Run(x, 1)
		if err != nil {
			return 0, 0, err
		}
		inference += time.Since(t)
		full := imgx.ResizeBilinear(prob, h, w, s.HU.Rows, s.HU.Cols)
		m, pred := score.Compare(full, card.Threshold, s.Mask)
		if pred == nil || m.Truth != s.Mask.Count() {
			return 0, 0, errors.New("bench: bare loop: compare returned no prediction")
		}
		_ = pred.PackBits()
	}
	return time.Since(start), inference, nil
}

func (r *runner) pipelines(ctx context.Context, reg *model.Registry, cards []*model.Card) error {
	set, warm, err := r.mainSet()
	if err != nil {
		return err
	}
	n := float64(len(set.slices))
	for _, card := range cards {
		for _, t := range r.o.Threads {
			h, err := r.startPipeline(ctx, reg, card, t, nil)
			if err != nil {
				return err
			}
			sess, err := infer.Open(card, r.o.infer(t), *r.o.Log)
			if err != nil {
				h.Close()
				return err
			}
			err = func() error {
				if _, err := h.replay(ctx, r, warm); err != nil {
					return err
				}
				if _, _, err := bareLoop(sess, card, warm.slices); err != nil {
					return err
				}
				var pipe, bare, share []float64
				for round := 0; round < r.o.Rounds; round++ {
					d, err := h.replay(ctx, r, set)
					if err != nil {
						return err
					}
					pipe = append(pipe, n/d.Seconds())
					tot, inf, err := bareLoop(sess, card, set.slices)
					if err != nil {
						return err
					}
					bare = append(bare, n/tot.Seconds())
					share = append(share, inf.Seconds()/tot.Seconds())
				}
				p := Pipeline{Model: card.Name, Threads: t, Slices: len(set.slices),
					PipelineSlicesPerS: median(pipe), BareSlicesPerS: median(bare), InferenceShare: median(share),
					PipelineSpread: spreadOf(pipe), BareSpread: spreadOf(bare), RatioSpread: spreadOf(ratios(pipe, bare))}
				p.Ratio = ratio(p.PipelineSlicesPerS, p.BareSlicesPerS)
				r.rep.Pipeline = append(r.rep.Pipeline, p)
				r.progress("pipeline %s threads %d: %.2f slices/s, bare loop %.2f slices/s, ratio %.2f",
					card.Name, t, p.PipelineSlicesPerS, p.BareSlicesPerS, p.Ratio)
				return nil
			}()
			sess.Close()
			h.Close()
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *runner) batching(ctx context.Context, reg *model.Registry, cards []*model.Card) error {
	set, warm, err := r.mainSet()
	if err != nil {
		return err
	}
	n := float64(len(set.slices))
	t := r.o.Threads[0]
	for _, card := range cards {
		plain, err := r.startPipeline(ctx, reg, card, t, nil)
		if err != nil {
			return err
		}
		bc := &batchCfg{opts: segment.BatchOptions{MaxBatch: r.o.BatchMax, MaxWait: r.o.BatchWait}, workers: r.o.BatchWorkers}
		batched, err := r.startPipeline(ctx, reg, card, t, bc)
		if err != nil {
			plain.Close()
			return err
		}
		err = func() error {
			for _, h := range []*harness{plain, batched} {
				if _, err := h.replay(ctx, r, warm); err != nil {
					return err
				}
			}
			before := batched.batcher.Stats()
			var un, ba []float64
			for round := 0; round < r.o.Rounds; round++ {
				order := []*harness{plain, batched}
				if round%2 == 1 {
					order = []*harness{batched, plain}
				}
				for _, h := range order {
					d, err := h.replay(ctx, r, set)
					if err != nil {
						return err
					}
					if h == plain {
						un = append(un, n/d.Seconds())
					} else {
						ba = append(ba, n/d.Seconds())
					}
				}
			}
			after := batched.batcher.Stats()
			b := Batching{Model: card.Name, Threads: t, Slices: len(set.slices), MaxBatch: bc.opts.MaxBatch,
				MaxWaitMs: float64(bc.opts.MaxWait) / float64(time.Millisecond), Workers: bc.workers,
				UnbatchedSlicesPerS: median(un), BatchedSlicesPerS: median(ba),
				UnbatchedSpread: spreadOf(un), BatchedSpread: spreadOf(ba), GainSpread: spreadOf(ratios(ba, un))}
			b.Gain = ratio(b.BatchedSlicesPerS, b.UnbatchedSlicesPerS)
			if db := after.Batches - before.Batches; db > 0 {
				b.MeanBatch = float64(after.Images-before.Images) / float64(db)
			}
			r.rep.Batching = append(r.rep.Batching, b)
			r.progress("batching %s threads %d: unbatched %.2f slices/s, batched (max %d, wait %v) %.2f slices/s, gain %.2f, mean batch %.2f",
				card.Name, t, b.UnbatchedSlicesPerS, b.MaxBatch, r.o.BatchWait, b.BatchedSlicesPerS, b.Gain, b.MeanBatch)
			return nil
		}()
		batched.Close()
		plain.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
