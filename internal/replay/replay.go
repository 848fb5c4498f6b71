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
	"github.com/lungseg/lungseg/score/findings"
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
	// SeriesPerInput makes every slice of one input that has no series
	// UID of its own (pickle rows, PNG pairs) one series, so that the
	// findings stage groups nodules across the input's slices
	// (IngestJob.series_per_input).
	SeriesPerInput bool
	// FindingsWait bounds the wait for findings once every slice is
	// scored: for each analysed slice's SliceFindings, then for the
	// findings stage's answer to the flush request, each as long as
	// nothing new arrives for this long (default 30 s; negative: do not
	// wait for findings, nor ask for a flush).
	FindingsWait time.Duration
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
	// Series is the slice's series UID (for a pickle without a series
	// column, set only by SeriesPerInput).
	Series string `json:"series,omitempty"`
	// Category is the findings stage's size-based estimate of the slice
	// (its largest component; "none" without one); empty when the
	// findings stage did not report the slice.
	Category string `json:"category,omitempty"`
	// Findings are the slice's predicted components, as the findings
	// stage measured them.
	Findings []SliceFinding `json:"findings,omitempty"`
}

// SliceFinding is one 8-connected component of a slice's predicted mask.
type SliceFinding struct {
	// Component numbers the components of the slice (1-based, raster
	// order of their first pixel); a Nodule's components name it.
	Component  int32   `json:"component"`
	AreaPx     int64   `json:"area_px"`
	AreaMm2    float64 `json:"area_mm2"`
	DiameterMm float64 `json:"diameter_mm"`
	// SpacingAssumed: the pixel spacing, hence every mm figure, is the
	// configured default, not read from the input.
	SpacingAssumed bool    `json:"spacing_assumed,omitempty"`
	CentroidRow    float64 `json:"centroid_row"`
	CentroidCol    float64 `json:"centroid_col"`
	// MeanHU and MeanProb are absent when unknown.
	MeanHU   *float64 `json:"mean_hu,omitempty"`
	MeanProb *float64 `json:"mean_prob,omitempty"`
	Category string   `json:"category"`
}

// Nodule is one finding of the findings stage: the components of one
// model that overlap on adjacent slices of one series.
type Nodule struct {
	ID     string `json:"id"`
	Model  string `json:"model"`
	Series string `json:"series,omitempty"`
	// FirstSlice and LastSlice are the first and last slice ids in slice
	// order, Slices their count; positions are along the patient axis
	// (row or file numbers for pickles and PNG pairs).
	FirstSlice     string   `json:"first_slice"`
	LastSlice      string   `json:"last_slice"`
	Slices         int32    `json:"slices"`
	SliceIDs       []string `json:"slice_ids"`
	FirstPosition  float64  `json:"first_position"`
	LastPosition   float64  `json:"last_position"`
	DiameterMm     float64  `json:"diameter_mm"`
	SpacingAssumed bool     `json:"spacing_assumed,omitempty"`
	VolumeMm3      float64  `json:"volume_mm3"`
	// ThicknessAssumed: the volume uses the configured slice thickness.
	ThicknessAssumed bool     `json:"thickness_assumed,omitempty"`
	CentroidRow      float64  `json:"centroid_row"`
	CentroidCol      float64  `json:"centroid_col"`
	MeanHU           *float64 `json:"mean_hu,omitempty"`
	MeanProb         *float64 `json:"mean_prob,omitempty"`
	// Category is the size-based Lung-RADS estimate; Label the slices'
	// dataset label (label1) when known.
	Category    string `json:"category"`
	Label       string `json:"label,omitempty"`
	CompletedBy string `json:"completed_by"`
}

// CategoryTable is one model's confusion table of the size-based
// Lung-RADS estimate of each labelled slice (the category of its largest
// predicted component, or "none") against its label (label1):
// Counts[i][j] slices have Labels[i] and estimate Estimates[j].
type CategoryTable struct {
	Labels    []string `json:"labels"`
	Estimates []string `json:"estimates"`
	Counts    [][]int  `json:"counts"`
	// Agree counts the slices whose estimate is their label, of Total.
	Agree int `json:"agree"`
	Total int `json:"total"`
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
	// Nodules are the findings of the replay, per model and series,
	// sorted by model, series and first position.
	Nodules []Nodule `json:"nodules"`
	// FindingsComplete is true when the findings stage answered the
	// replay's flush: every finding of the replay is in Nodules.
	// FindingsNote says why not otherwise.
	FindingsComplete bool   `json:"findings_complete"`
	FindingsNote     string `json:"findings_note,omitempty"`
	// Categories holds each model's size-category confusion table
	// (filled by the caller that computes it, e.g. lungseg replay).
	Categories map[string]CategoryTable `json:"categories,omitempty"`
	Errors     []ErrorResult            `json:"errors"`
}

// NewID returns a fresh replay id.
func NewID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

type pair struct{ slice, model string }

type event struct {
	score   *lungsegv1.Score
	err     *lungsegv1.ErrorEvent
	done    *lungsegv1.IngestDone
	slice   *lungsegv1.SliceFindings
	finding *lungsegv1.Finding
	flushed *lungsegv1.FindingsFlushed
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
	subs := []struct {
		stream string
		filter []string
	}{
		{bus.StreamScores, []string{bus.PrefixScores + "*." + rid}},
		{bus.StreamErrors, []string{bus.PrefixErrors + "*." + rid}},
		{bus.StreamEvents, []string{bus.IngestedSubject(rid)}},
	}
	waitFindings := o.FindingsWait >= 0
	if waitFindings {
		// Slice findings and nodules (lung.findings.<cat>.<model>.<replay>)
		// and the flush's answer, in stream order.
		subs = append(subs, struct {
			stream string
			filter []string
		}{bus.StreamFindings, []string{findings.PrefixFindings + "*.*." + rid, findings.FlushedSubject(rid)}})
	}
	for _, s := range subs {
		// bus.Follow: an ordered consumer that a watchdog replaces when it
		// falls silent (a cluster node killed under it).
		f, err := bus.Follow(subCtx, js, s.stream, jetstream.OrderedConsumerConfig{FilterSubjects: s.filter}, func(m jetstream.Msg) {
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
			case strings.HasPrefix(m.Subject(), findings.PrefixFindings):
				var data []byte
				if data, perr = objref.Resolve(ctx, js, m.Data()); perr != nil {
					break
				}
				switch {
				case m.Subject() == findings.FlushedSubject(rid):
					ev.flushed = &lungsegv1.FindingsFlushed{}
					perr = proto.Unmarshal(data, ev.flushed)
				case strings.HasPrefix(m.Subject(), findings.PrefixFindings+findings.SliceToken+"."):
					ev.slice = &lungsegv1.SliceFindings{}
					perr = proto.Unmarshal(data, ev.slice)
				default:
					ev.finding = &lungsegv1.Finding{}
					perr = proto.Unmarshal(data, ev.finding)
				}
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
		}, bus.FollowOptions{MaxBytes: 16 << 20, Log: log})
		if err != nil {
			return nil, fmt.Errorf("replay: subscribing to %s: %w", s.filter, err)
		}
		defer f.Stop()
	}

	prefixes := IDPrefixes(o.Inputs)
	for i, in := range o.Inputs {
		job := &lungsegv1.IngestJob{ReplayId: rid, Path: in, MasksDir: o.MasksDir, Models: o.Models, JobIndex: int32(i), IdPrefix: prefixes[i],
			SeriesPerInput: o.SeriesPerInput}
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
		// What the findings stage said: per slice and model, its
		// components; its nodules by id; slices it failed; the flush.
		sliceFs  = map[pair]*lungsegv1.SliceFindings{}
		nodules  = map[string]*lungsegv1.Finding{}
		fsFailed = map[pair]bool{}
		await    = map[pair]bool{} // scored, not yet reported by the findings stage
		flushed  bool
	)
	// findingsEvent records what the findings stage sent; it reports
	// whether the event was one.
	findingsEvent := func(ev event) bool {
		switch {
		case ev.slice != nil && ev.slice.Meta != nil:
			k := pair{ev.slice.Meta.Id, ev.slice.Model}
			sliceFs[k] = ev.slice
			delete(await, k)
		case ev.finding != nil:
			nodules[ev.finding.Id] = ev.finding
		case ev.flushed != nil:
			flushed = true
		case ev.err != nil && ev.err.Stage == findings.StageName:
			k := pair{ev.err.Id, ev.err.Model}
			fsFailed[k] = true
			delete(await, k)
			return false // also an error of the report
		default:
			return false
		}
		return true
	}
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
			if findingsEvent(ev) {
				continue
			}
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
				if sliceFs[k] == nil && !fsFailed[k] {
					await[k] = true
				}
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
	if waitFindings {
		if err := awaitFindings(ctx, js, rid, o.FindingsWait, events, await, &flushed, findingsEvent, rep, log); err != nil {
			return rep, err
		}
	}
	addFindings(rep, sliceFs, nodules)
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

// defaultFindingsWait is Options.FindingsWait's default.
const defaultFindingsWait = 30 * time.Second

// flushEvery is how often the flush request is sent again until the
// findings stage answers (the first may come before it listens).
const flushEvery = 2 * time.Second

// awaitFindings waits, once every slice is scored, until the findings
// stage has reported every scored slice (or failed it), then asks it to
// complete the replay's series (findings.FlushSubject) and waits for its
// answer, which comes after the findings in the FINDINGS stream. Each
// wait ends after wait without anything new; the report then says what
// is missing (FindingsNote). Only ctx ending is an error.
func awaitFindings(ctx context.Context, js jetstream.JetStream, rid string, wait time.Duration, events <-chan event,
	await map[pair]bool, flushed *bool, record func(event) bool, rep *Report, log zerolog.Logger) error {
	if wait == 0 {
		wait = defaultFindingsWait
	}
	scored := len(rep.Slices)
	missing := func() int { return len(await) }
	if _, err := js.Consumer(ctx, bus.StreamScores, findings.StageName); errors.Is(err, jetstream.ErrConsumerNotFound) {
		// No findings stage was ever set up on this pipeline.
		rep.FindingsNote = "no findings stage: SCORES has no " + findings.StageName + " consumer"
		log.Info().Str("replay", rid).Msg(rep.FindingsNote)
		return nil
	}
	handle := func(ev event) bool {
		if record(ev) {
			return true
		}
		if e := ev.err; e != nil {
			rep.Errors = append(rep.Errors, ErrorResult{ID: e.Id, Stage: e.Stage, Model: e.Model, Error: e.Error})
			return e.Stage == findings.StageName
		}
		return false
	}
	idle := time.NewTimer(wait)
	defer idle.Stop()
	for missing() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("replay %s: waiting for findings (%d scored slices not yet analysed): %w", rid, missing(), ctx.Err())
		case <-idle.C:
			rep.FindingsNote = fmt.Sprintf("the findings stage did not report %d of %d scored slices within %s of the last one: is it running?", missing(), scored, wait)
			log.Warn().Str("replay", rid).Msg(rep.FindingsNote)
			return nil
		case ev := <-events:
			if handle(ev) {
				idle.Reset(wait)
			}
		}
	}
	// Every scored slice is in its series (or out as a single-slice
	// finding): ask for the series now rather than after the quiet
	// period, and wait for the answer.
	nc := js.Conn()
	flush := func() {
		if err := nc.Publish(findings.FlushSubject(rid), nil); err != nil {
			log.Warn().Err(err).Str("replay", rid).Msg("asking the findings stage to complete the series")
		}
	}
	flush()
	again := time.NewTicker(flushEvery)
	defer again.Stop()
	idle.Reset(wait)
	for !*flushed {
		select {
		case <-ctx.Done():
			return fmt.Errorf("replay %s: waiting for the findings of its series: %w", rid, ctx.Err())
		case <-idle.C:
			rep.FindingsNote = fmt.Sprintf("the findings stage did not answer the flush request within %s: series findings may come after this report (after its quiet period)", wait)
			log.Warn().Str("replay", rid).Msg(rep.FindingsNote)
			return nil
		case <-again.C:
			flush()
		case ev := <-events:
			if handle(ev) {
				idle.Reset(wait)
			}
		}
	}
	rep.FindingsComplete = true
	return nil
}

// addFindings puts the findings stage's slice components and nodules in
// the report.
func addFindings(rep *Report, sliceFs map[pair]*lungsegv1.SliceFindings, nodules map[string]*lungsegv1.Finding) {
	known := func(v float64, ok bool) *float64 {
		if !ok {
			return nil
		}
		return &v
	}
	for i := range rep.Slices {
		r := &rep.Slices[i]
		sf := sliceFs[pair{r.ID, r.Model}]
		if sf == nil {
			continue
		}
		r.Series = sf.GetMeta().GetSeriesUid()
		r.Category = sf.Category
		if r.Category == "" {
			r.Category = "none"
		}
		for _, c := range sf.Components {
			r.Findings = append(r.Findings, SliceFinding{Component: c.Index, AreaPx: c.AreaPx, AreaMm2: c.AreaMm2,
				DiameterMm: c.DiameterMm, SpacingAssumed: sf.GetMeta().GetSpacingAssumed(), CentroidRow: c.CentroidRow,
				CentroidCol: c.CentroidCol, MeanHU: known(c.MeanHu, c.HuKnown), MeanProb: known(c.MeanProb, c.ProbKnown),
				Category: c.Category})
		}
	}
	rep.Nodules = make([]Nodule, 0, len(nodules))
	for _, f := range nodules {
		n := Nodule{ID: f.Id, Model: f.Model, Series: f.SeriesUid, Slices: f.Slices, SliceIDs: f.SliceIds,
			FirstPosition: f.FirstPosition, LastPosition: f.LastPosition, DiameterMm: f.DiameterMm,
			SpacingAssumed: f.SpacingAssumed, VolumeMm3: f.VolumeMm3, ThicknessAssumed: f.ThicknessAssumed,
			CentroidRow: f.CentroidRow, CentroidCol: f.CentroidCol, MeanHU: known(f.MeanHu, f.HuKnown),
			MeanProb: known(f.MeanProb, f.ProbKnown), Category: f.Category, Label: f.TruthLabel, CompletedBy: f.CompletedBy}
		if len(f.SliceIds) > 0 {
			n.FirstSlice, n.LastSlice = f.SliceIds[0], f.SliceIds[len(f.SliceIds)-1]
		}
		rep.Nodules = append(rep.Nodules, n)
	}
	sort.Slice(rep.Nodules, func(i, j int) bool {
		a, b := rep.Nodules[i], rep.Nodules[j]
		if a.Model != b.Model {
			return a.Model < b.Model
		}
		if a.Series != b.Series {
			return a.Series < b.Series
		}
		if a.FirstPosition != b.FirstPosition {
			return a.FirstPosition < b.FirstPosition
		}
		return a.ID < b.ID
	})
}
