// Package pipeline wires the stages to their streams and runs the
// ones a process is asked to run: all of them in `lungseg run`, one in
// `lungseg <stage>`.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/internal/webhook"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/ortlib"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/preprocess"
	"github.com/lungseg/lungseg/score"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/lungseg/lungseg/segment"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/lungseg/lungseg/segment/refine"
	"github.com/lungseg/lungseg/segment/verify"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Stage names.
const (
	Ingest     = "ingest"
	Preprocess = "preprocess"
	Segment    = "segment"
	Refine     = refine.StageName
	Score      = "score"
	Findings   = "findings"
)

// AllStages lists the stages in pipeline order.
var AllStages = []string{Ingest, Preprocess, Segment, Refine, Score, Findings}

// Config says which stages to run and how.
type Config struct {
	Registry *model.Registry
	// Stages to run; empty means all.
	Stages []string
	// Models served by segment workers; empty means every registry model
	// ("all": whole-slice models and runnable cascades). A selection
	// "m+crop" makes segment serve the detector m and refine load m's crop
	// model.
	Models []string
	// Defaults are the models for slices and jobs that name none; empty
	// means "all" (every model, crop models alone included, and every
	// runnable cascade).
	Defaults []string
	// Workers per stage (per model for segment, per detector for
	// refine); default 1.
	Workers map[string]int
	// Infer configures the ONNX Runtime sessions.
	Infer infer.Options
	// TTA turns on flip test-time augmentation for every model.
	TTA bool
	// NoLungField makes preprocess send no lung field (nothing outside
	// the lungs is removed).
	NoLungField bool
	// TrainCopies > 0 makes preprocess stream augmented training copies
	// on lung.train.<model>.
	TrainCopies int
	TrainSeed   uint64
	// Formats are the input readers of ingest.
	Formats []ingest.Format
	// Hooks observe every runner (metrics).
	Hooks stage.Hooks
	// Batch groups concurrent segment requests into one model call
	// (MaxBatch > 1 turns it on).
	Batch segment.BatchOptions
	// Findings configures the findings stage (components, series
	// grouping, Lung-RADS estimate, alerts).
	Findings findings.Config
	// Webhooks deliver alerts by HTTP POST, each from its own durable
	// consumer; they run with the findings stage.
	Webhooks []webhook.Config
	// SkipStreamSetup opens the pixel bucket instead of creating it, for
	// users without the right to (the operator creates it).
	SkipStreamSetup bool
	// AckWait is the redelivery timeout of every stage consumer (0: the
	// runner's default).
	AckWait time.Duration
	// Streams are the stream options (for the pixel bucket's TTL and
	// replicas).
	Streams bus.StreamOptions
	// MaxBacklog bounds the bytes of slices waiting in RAW, READY and
	// MASKS: ingest reads no further while they hold more (0:
	// bus.DefaultMaxBacklog; -1: no bound).
	MaxBacklog int64
	// InputRoots, when set, are the only folders ingest jobs may read
	// under (nil: any path; see ingest.Roots).
	InputRoots *ingest.Roots
}

// Run starts the configured stages and blocks until ctx ends or a stage
// fails to start. Model sessions are opened before any consumer starts.
func Run(ctx context.Context, js jetstream.JetStream, cfg Config, log zerolog.Logger) error {
	if cfg.Registry == nil {
		return errors.New("pipeline: no model registry")
	}
	stages := cfg.Stages
	if len(stages) == 0 {
		stages = AllStages
	}
	defaults := cfg.Defaults
	if len(defaults) == 0 {
		// Every model (crop models alone included) and every runnable
		// cascade.
		var err error
		if defaults, err = cfg.Registry.Resolve([]string{"all"}); err != nil {
			return err
		}
	}
	workers := func(name string) int {
		if n := cfg.Workers[name]; n > 0 {
			return n
		}
		if name == Segment {
			// Two workers let one model's inference overlap the publish
			// and ack of the previous slice (measured: up to 1.4× the
			// throughput of one worker on 2 cores).
			return 2
		}
		return 1
	}
	var runners []*stage.Runner
	addN := func(c stage.Config, p stage.Processor, n int) error {
		c.Workers = n
		if c.AckWait == 0 {
			c.AckWait = cfg.AckWait
		}
		r, err := stage.New(js, c, p, log)
		if err != nil {
			return err
		}
		r.Hooks = cfg.Hooks
		runners = append(runners, r)
		return nil
	}
	add := func(c stage.Config, p stage.Processor) error { return addN(c, p, workers(c.Name)) }
	var objects jetstream.ObjectStore
	var err error
	if !cfg.SkipStreamSetup {
		objects, err = bus.PixelStore(ctx, js, cfg.Streams)
	} else {
		objects, err = js.ObjectStore(ctx, bus.PixelsBucket)
	}
	if err != nil {
		return err
	}
	var closers []func() error
	var starters []func(context.Context) error
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	for _, st := range stages {
		var err error
		switch st {
		case Ingest:
			var progress jetstream.KeyValue
			if !cfg.SkipStreamSetup {
				progress, err = bus.ProgressStore(ctx, js, cfg.Streams)
			} else if progress, err = js.KeyValue(ctx, bus.IngestProgressBucket); errors.Is(err, jetstream.ErrBucketNotFound) {
				log.Warn().Str("bucket", bus.IngestProgressBucket).Msg("no ingest progress bucket: a job redelivered after a crash is read again from its start, deduped only within the streams' Duplicates window")
				progress, err = nil, nil
			}
			if err != nil {
				return err
			}
			ist := &ingest.Stage{Formats: cfg.Formats, Models: cfg.Registry, Defaults: defaults, Objects: objects, Roots: cfg.InputRoots,
				Progress: progress}
			if cfg.MaxBacklog >= 0 {
				ist.Backlog = &bus.Backlog{JS: js, MaxBytes: cfg.MaxBacklog}
			}
			err = add(stage.Config{Name: Ingest, Stream: bus.StreamIngest, Durable: Ingest}, ist)
		case Preprocess:
			err = add(stage.Config{Name: Preprocess, Stream: bus.StreamRaw},
				&preprocess.Stage{Cards: cfg.Registry, Defaults: defaults, TTA: cfg.TTA,
					TrainCopies: cfg.TrainCopies, TrainSeed: cfg.TrainSeed, Objects: objects, NoLungField: cfg.NoLungField})
		case Segment:
			selected, err := selection(cfg)
			if err != nil {
				return err
			}
			models := baseModels(selected)
			if err := ortlib.Init(ctx, log); err != nil {
				return fmt.Errorf("pipeline: loading ONNX Runtime: %w", err)
			}
			for _, name := range models {
				card, _ := cfg.Registry.Get(name)
				sess, err := infer.Open(card, cfg.Infer, log)
				if err != nil {
					return fmt.Errorf("pipeline: opening model %s: %w", name, err)
				}
				var m segment.Model = sess
				sc := stage.Config{Name: Segment, Durable: "segment-" + name, Stream: bus.StreamReady,
					FilterSubjects: []string{bus.ReadySubject(name)}}
				if cfg.Batch.MaxBatch > 1 {
					bo := cfg.Batch
					bo.Pixels = card.Input.Height * card.Input.Width
					b, err := segment.NewBatcher(sess, bo)
					if err != nil {
						return err
					}
					closers = append(closers, b.Close)
					m = b
				}
				closers = append(closers, sess.Close)
				log.Info().Str("model", name).Str("provider", sess.Provider()).Int("max_batch", cfg.Batch.MaxBatch).Msg("model loaded")
				st := &segment.Stage{Card: card, Model: m, Objects: objects}
				if st.Verifier, err = openVerifier(card, cfg.Infer, &closers); err != nil {
					return err
				}
				if err := addN(sc, st, max(workers(Segment), cfg.Batch.MaxBatch)); err != nil {
					return err
				}
			}
		case Refine:
			selected, err := selection(cfg)
			if err != nil {
				return err
			}
			detectors := Detectors(cfg.Registry, selected)
			if len(detectors) == 0 {
				log.Info().Strs("models", selected).Msg("refine: no +crop cascade selected, nothing to refine")
			} else {
				if err := ortlib.Init(ctx, log); err != nil {
					return fmt.Errorf("pipeline: loading ONNX Runtime: %w", err)
				}
			}
			for _, name := range detectors {
				crop, _ := cfg.Registry.Crop(name)
				// One batched Run of the crop model per slice, so no
				// Batcher.
				cs, err := infer.Open(crop, cfg.Infer, log)
				if err != nil {
					return fmt.Errorf("pipeline: opening crop model %s of %s: %w", crop.Name, name, err)
				}
				closers = append(closers, cs.Close)
				log.Info().Str("model", crop.Name).Str("detector", name).Str("provider", cs.Provider()).Msg("crop model loaded")
				rc := stage.Config{Name: Refine, Durable: refine.Durable(name), Stream: bus.StreamMasks,
					FilterSubjects: []string{bus.MasksSubject(name)}}
				rs := &refine.Stage{Detector: name, Crop: crop, CropModel: cs, Objects: objects}
				if rs.Verifier, err = openVerifier(crop, cfg.Infer, &closers); err != nil {
					return err
				}
				if err := add(rc, rs); err != nil {
					return err
				}
			}
		case Score:
			err = add(stage.Config{Name: Score, Stream: bus.StreamMasks}, score.Stage{})
		case Findings:
			cache := findings.NewHUCache(0)
			if err = add(stage.Config{Name: findings.HUStageName, Stream: bus.StreamRaw}, cache); err != nil {
				return err
			}
			cache.Follow(js, bus.StreamRaw, findings.HUStageName, 0)
			fst, ferr := findings.New(ctx, js, cfg.Findings, cache, log)
			if ferr != nil {
				return ferr
			}
			starters = append(starters, fst.Start)
			if err = add(stage.Config{Name: findings.StageName, Stream: bus.StreamScores,
				FilterSubjects: []string{bus.PrefixScores + ">"}}, fst); err != nil {
				return err
			}
			for _, wc := range cfg.Webhooks {
				sink, werr := webhook.New(wc)
				if werr != nil {
					return werr
				}
				if err = add(sink.StageConfig(), sink); err != nil {
					return err
				}
			}
		default:
			err = fmt.Errorf("pipeline: unknown stage %q (want one of %v)", st, AllStages)
		}
		if err != nil {
			return err
		}
	}
	// Create every consumer before consuming, so a replay that publishes
	// right after start-up finds them all.
	for _, r := range runners {
		if _, err := r.Consumer(ctx); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while starting
			}
			return err
		}
	}
	for _, start := range starters {
		if err := start(ctx); err != nil {
			return err
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, len(runners))
	for _, r := range runners {
		wg.Add(1)
		go func(r *stage.Runner) {
			defer wg.Done()
			if err := r.Run(ctx); err != nil {
				errc <- err
			}
		}(r)
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// Detectors returns the detectors whose cascade "<detector>+crop" a
// resolved selection holds and the registry can run: those the refine
// stage serves, one durable consumer each.
func Detectors(reg *model.Registry, selected []string) []string {
	var out []string
	for _, n := range selected {
		if !model.IsCascade(n) {
			continue
		}
		base, _ := model.SplitVariant(n)
		if _, ok := reg.Crop(base); ok && !slices.Contains(out, base) {
			out = append(out, base)
		}
	}
	return out
}

// baseModels maps selection names ("m", "m+tta", "m+crop") to the registry models
// that serve them, without duplicates.
func baseModels(names []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, n := range names {
		b, _ := model.SplitVariant(n)
		if !seen[b] {
			seen[b] = true
			out = append(out, b)
		}
	}
	return out
}

// selection resolves the models segment and refine serve (all when none
// are configured).
func selection(cfg Config) ([]string, error) {
	selected := cfg.Models
	if len(selected) == 0 {
		selected = []string{"all"}
	}
	return cfg.Registry.Resolve(selected)
}

// openVerifier opens card's verifier (segment/verify) when the card has
// one, adding its Close to closers; nil, nil without one (a nil
// *infer.Classifier is never returned as a non-nil interface).
func openVerifier(card *model.Card, o infer.Options, closers *[]func() error) (verify.Classifier, error) {
	if card.Verifier == nil {
		return nil, nil
	}
	cl, err := infer.OpenClassifier(card, o)
	if err != nil {
		return nil, fmt.Errorf("pipeline: opening the verifier of %s: %w", card.Name, err)
	}
	*closers = append(*closers, cl.Close)
	return cl, nil
}
