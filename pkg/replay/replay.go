// Package replay publishes inputs through the pipeline as one replay,
// waits until every slice is scored by every chosen model (or reported as
// failed), and builds the report: per-model aggregates, per-slice scores
// and errors.
package replay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/lungseg/lungseg/pkg/progress"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// Options configure a replay.
type Options struct {
	// Inputs are files or folders, as paths the ingest workers can read.
	Inputs []string
	// Models to run ("all" or names); empty means the pipeline's default.
	Models []string
	// MasksDir holds ground-truth PNGs for DICOM inputs.
	MasksDir string
	// Timeout bounds the wait for results (0: none).
	Timeout time.Duration
	// Progress receives the count of settled slice×model results (the
	// total once every input is read) and errors; nil for none. A
	// *progress.Reporter draws a bar on a terminal and plain lines
	// elsewhere, throttling its output itself.
	Progress Progress
	// ProgressEvery is how often Progress is updated while no result
	// arrives (default 1s), so that rate and ETA stay current.
	ProgressEvery time.Duration
	// OnScore is called for each new score (for --masks-out).
	OnScore func(*lungsegv1.Score) error
}

// Progress receives a replay's progress.
type Progress interface {
	Update(progress.Status)
	Finish(progress.Status)
}

// SliceResult is one slice's score by one model.
type SliceResult struct {
	ID        string  `json:"id"`
	Model     string  `json:"model"`
	Label     string  `json:"label,omitempty"`
	HasTruth  bool    `json:"has_truth"`
	Dice      float64 `json:"dice"`
	IoU       float64 `json:"iou"`
	RMSE      float64 `json:"rmse"`
	BothEmpty bool    `json:"both_empty,omitempty"`
	Truth     int64   `json:"truth_pixels"`
	Predicted int64   `json:"predicted_pixels"`
	// TruthDiameterMm is the longest diameter of the truth's largest
	// connected component (0 without truth pixels), which puts the slice
	// in its score.SizeBins.
	TruthDiameterMm float64 `json:"truth_diameter_mm,omitempty"`
	InferenceUs     int64   `json:"inference_us"`
	// Warnings are the slice's SliceMeta.warnings: what ingest accepted
	// but changed (a label1 that was not a str, HU clamped to int16).
	Warnings []string `json:"warnings,omitempty"`
}

// ErrorResult is one failure reported during the replay.
type ErrorResult struct {
	ID    string `json:"id"`
	Stage string `json:"stage"`
	Model string `json:"model,omitempty"`
	Error string `json:"error"`
}

// Report is the outcome of a replay. Models holds each model's
// score.ModelSummary: the headline mean_dice over slices with truth
// pixels, by_size, empty_clean and empty_fp, and the pooled figures.
type Report struct {
	ReplayID string                        `json:"replay_id"`
	Inputs   []string                      `json:"inputs"`
	Started  time.Time                     `json:"started"`
	Seconds  float64                       `json:"seconds"`
	Ingested int64                         `json:"ingested_slices"`
	Rejected int64                         `json:"rejected_inputs"`
	Unscored int                           `json:"slices_without_truth"`
	Models   map[string]score.ModelSummary `json:"models"`
	Slices   []SliceResult                 `json:"slices"`
	Errors   []ErrorResult                 `json:"errors"`
}

// NewID returns a fresh replay id.
func NewID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

type pair struct{ slice, model string }

type event struct {
	score *lungsegv1.Score
	err   *lungsegv1.ErrorEvent
	done  *lungsegv1.IngestDone
}

// Run performs one replay and returns its report. Errors of single slices
// are in the report; Run fails only when the replay cannot complete.
func Run(ctx context.Context, js jetstream.JetStream, o Options, log zerolog.Logger) (*Report, error) {
	if len(o.Inputs) == 0 {
		return nil, errors.New("replay: no inputs")
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	rid := NewID()
	rep := &Report{ReplayID: rid, Inputs: o.Inputs, Started: time.Now().UTC(), Models: map[string]score.ModelSummary{}}
	log = log.With().Str("replay", rid).Logger()

	events := make(chan event, 256)
	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()
	subs := []struct{ stream, filter string }{
		{bus.StreamScores, bus.PrefixScores + "*." + rid},
		{bus.StreamErrors, bus.PrefixErrors + "*." + rid},
		{bus.StreamEvents, bus.IngestedSubject(rid)},
	}
	for _, s := range subs {
		c, err := js.OrderedConsumer(ctx, s.stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{s.filter}})
		if err != nil {
			return nil, fmt.Errorf("replay: subscribing to %s: %w", s.filter, err)
		}
		cc, err := c.Consume(func(m jetstream.Msg) {
			var ev event
			var perr error
			switch {
			case strings.HasPrefix(m.Subject(), bus.PrefixScores):
				// A score of a large slice comes by object reference.
				ev.score = &lungsegv1.Score{}
				var data []byte
				if data, perr = objref.Resolve(ctx, js, m.Data()); perr == nil {
					perr = proto.Unmarshal(data, ev.score)
				}
			case strings.HasPrefix(m.Subject(), bus.PrefixErrors):
				ev.err = &lungsegv1.ErrorEvent{}
				perr = proto.Unmarshal(m.Data(), ev.err)
			default:
				ev.done = &lungsegv1.IngestDone{}
				perr = proto.Unmarshal(m.Data(), ev.done)
			}
			if perr != nil {
				log.Error().Err(perr).Str("subject", m.Subject()).Msg("undecodable result")
				h := m.Headers()
				if ev.score == nil || h.Get(bus.HdrSlice) == "" || h.Get(bus.HdrModel) == "" {
					return
				}
				// A score that cannot be read (its object gone) still
				// settles its slice, as failed, so the replay ends.
				ev = event{err: &lungsegv1.ErrorEvent{Stage: "replay", ReplayId: rid, Id: h.Get(bus.HdrSlice),
					Model: h.Get(bus.HdrModel), Error: "reading score: " + perr.Error(), Subject: m.Subject()}}
			}
			select {
			case events <- ev:
			case <-subCtx.Done():
			}
		}, jetstream.PullMaxBytes(16<<20))
		if err != nil {
			return nil, fmt.Errorf("replay: consuming %s: %w", s.filter, err)
		}
		defer cc.Stop()
	}

	prefixes := IDPrefixes(o.Inputs)
	for i, in := range o.Inputs {
		job := &lungsegv1.IngestJob{ReplayId: rid, Path: in, MasksDir: o.MasksDir, Models: o.Models, JobIndex: int32(i), IdPrefix: prefixes[i]}
		b, err := proto.Marshal(job)
		if err != nil {
			return nil, err
		}
		if err := stage.Publish(ctx, js, "replay", stage.Out{Subject: bus.SubjIngestJobs, Data: b, ReplayID: rid,
			SliceID: fmt.Sprintf("job-%d", i)}, nil); err != nil {
			return nil, fmt.Errorf("replay: publishing job for %s: %w", in, err)
		}
	}
	log.Info().Int("inputs", len(o.Inputs)).Strs("models", o.Models).Msg("replay started")

	var (
		agg      = score.NewAggregator()
		jobs     = map[int32]*lungsegv1.IngestDone{}
		settled  = map[pair]bool{}
		models   []string
		pendAll  []*lungsegv1.ErrorEvent // slice-wide failures before models are known
		expected int64
	)
	settleAll := func(ev *lungsegv1.ErrorEvent) {
		for _, m := range models {
			settled[pair{ev.Id, m}] = true
		}
	}
	every := o.ProgressEvery
	if every <= 0 {
		every = time.Second
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	showProgress := func(final bool) {
		if o.Progress == nil {
			return
		}
		st := progress.Status{Done: int64(len(settled)), Total: -1, Errors: len(rep.Errors)}
		if len(jobs) == len(o.Inputs) {
			st.Total = expected
		}
		if final {
			o.Progress.Finish(st)
		} else {
			o.Progress.Update(st)
		}
	}
	for {
		if len(jobs) == len(o.Inputs) && int64(len(settled)) >= expected {
			break
		}
		showProgress(false) // the Progress throttles its output
		select {
		case <-ctx.Done():
			showProgress(true)
			return rep, fmt.Errorf("replay %s: waiting for results (%d of %d settled, %d/%d inputs read): %w", rid, len(settled), expected, len(jobs), len(o.Inputs), ctx.Err())
		case <-tick.C:
			showProgress(false)
		case ev := <-events:
			switch {
			case ev.done != nil:
				if _, dup := jobs[ev.done.JobIndex]; dup {
					continue
				}
				jobs[ev.done.JobIndex] = ev.done
				rep.Ingested += ev.done.Slices
				rep.Rejected += ev.done.Rejected
				if models == nil {
					models = ev.done.Models
					for _, p := range pendAll {
						settleAll(p)
					}
					pendAll = nil
				}
				expected += ev.done.Slices * int64(len(ev.done.Models))
			case ev.err != nil:
				e := ev.err
				rep.Errors = append(rep.Errors, ErrorResult{ID: e.Id, Stage: e.Stage, Model: e.Model, Error: e.Error})
				switch {
				case e.Stage == "ingest" && e.Subject == bus.SubjIngestJobs:
					// The whole job failed (its input could not be read
					// or the bus failed every retry): no IngestDone will
					// come, so the job counts as read, with the slices it
					// had published unknown and not awaited.
					var idx int32
					if _, err := fmt.Sscanf(e.Id, "job-%d", &idx); err == nil && idx >= 0 && int(idx) < len(o.Inputs) {
						if _, dup := jobs[idx]; !dup {
							jobs[idx] = &lungsegv1.IngestDone{ReplayId: rid, Path: o.Inputs[idx], JobIndex: idx, Rejected: 1}
							rep.Rejected++
						}
					}
				case e.Stage == "ingest":
					// Rejected before becoming a slice: counted by IngestDone.
				case e.Model != "":
					settled[pair{e.Id, e.Model}] = true
				case models == nil:
					pendAll = append(pendAll, e)
				default:
					settleAll(e)
				}
			case ev.score != nil:
				s := ev.score
				k := pair{s.Meta.Id, s.Model}
				if settled[k] {
					continue
				}
				settled[k] = true
				r := SliceResult{ID: s.Meta.Id, Model: s.Model, Label: s.Meta.Label, HasTruth: s.HasTruth,
					Dice: s.Dice, IoU: s.Iou, RMSE: s.Rmse, BothEmpty: s.BothEmpty, Truth: s.TruthPixels,
					Predicted: s.PredictedPixels, TruthDiameterMm: s.TruthDiameterMm, InferenceUs: s.InferenceUs,
					Warnings: s.Meta.GetWarnings()}
				rep.Slices = append(rep.Slices, r)
				if s.HasTruth {
					agg.Add(s.Model, s.Meta.Label, score.FromScore(s))
				} else {
					rep.Unscored++
				}
				if o.OnScore != nil {
					if err := o.OnScore(s); err != nil {
						return rep, err
					}
				}
			}
		}
	}
	showProgress(true)
	rep.Seconds = time.Since(rep.Started).Seconds()
	rep.Models = agg.Summary()
	sort.Slice(rep.Slices, func(i, j int) bool {
		if rep.Slices[i].Model != rep.Slices[j].Model {
			return rep.Slices[i].Model < rep.Slices[j].Model
		}
		return rep.Slices[i].ID < rep.Slices[j].ID
	})
	sort.Slice(rep.Errors, func(i, j int) bool { return rep.Errors[i].ID < rep.Errors[j].ID })
	log.Info().Int64("slices", rep.Ingested).Int("errors", len(rep.Errors)).Float64("seconds", rep.Seconds).Msg("replay done")
	return rep, nil
}

// IDPrefixes keeps slice ids as the spec says (row number or relative
// path) for a single input, and prefixes them with the input's base name
// when several inputs could collide.
func IDPrefixes(inputs []string) []string {
	out := make([]string, len(inputs))
	if len(inputs) == 1 {
		return out
	}
	seen := map[string]int{}
	for i, in := range inputs {
		base := strings.TrimSuffix(filepath.Base(filepath.Clean(in)), filepath.Ext(in))
		seen[base]++
		if seen[base] > 1 {
			base = fmt.Sprintf("%s~%d", base, seen[base])
		}
		out[i] = base + "/"
	}
	return out
}
