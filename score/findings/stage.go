package findings

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// HUSource gives the HU image of a slice when it has it (nil otherwise).
// It may wait for the image, within ctx.
type HUSource interface {
	HU(ctx context.Context, meta *lungsegv1.SliceMeta) *imgx.HU
}

// Stage is the findings stage processor. It reads Score messages
// (lung.scores.>, from SCORES) or ModelOutput messages (lung.masks.>, from
// MASKS; these also give the mean probability) and:
//
//   - publishes the slice's components as SliceFindings;
//   - for a slice without a series UID (pickles, PNG pairs), publishes its
//     nodule findings at once (one per component);
//   - for a slice of a series, stores the slice in the state bucket and
//     restarts the series' quiet timer; when no slice of the series has
//     arrived for the quiet period, groups the stored slices into nodules,
//     publishes one Finding per nodule and an Alert for each at or above
//     the alert category, and removes the series from the bucket;
//   - on a flush request of a replay (FlushSubject, core NATS: the replay
//     has every score it waits for), completes every open series of that
//     replay at once and then publishes FindingsFlushed on FlushedSubject.
//
// A slice's SliceFindings is published only after the slice is stored
// in its series (or its single-slice findings are published), so a reader
// that has a slice's SliceFindings knows a flush will include it.
//
// The series state is durable: it is in a JetStream key-value bucket and
// the last-seen time of a series is the newest store time of its slices,
// so after a restart Start reschedules every series left in the bucket.
// Publishing uses stable ids, so two processes completing the same series
// publish each finding once (within the streams' dedupe window). A slice
// that arrives after its series was completed starts a new group.
//
// Safe for concurrent use.
type Stage struct {
	cfg Config
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	hu  HUSource
	log zerolog.Logger
	now func() time.Time

	mu     sync.Mutex
	timers map[string]*seriesTimer
	// completing serialises completions, so a flush and a timer do not
	// complete one series at once.
	completing sync.Mutex
	runCtx     context.Context
	wg         sync.WaitGroup
}

// New returns the stage, opening its state bucket or creating it if it
// does not exist. hu may be nil (mean HU is then unknown).
func New(ctx context.Context, js jetstream.JetStream, cfg Config, hu HUSource, log zerolog.Logger) (*Stage, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// Open first: a stage user may read and write the bucket but not
	// create streams; create it only where it does not exist yet.
	kv, err := js.KeyValue(ctx, cfg.StateBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      cfg.StateBucket,
			Description: "findings: slices of series not yet complete",
			History:     1,
			Storage:     jetstream.FileStorage,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("findings: creating bucket %s: %w", cfg.StateBucket, err)
	}
	return &Stage{cfg: cfg, js: js, kv: kv, hu: hu, log: log.With().Str("stage", StageName).Logger(),
		now: time.Now, timers: map[string]*seriesTimer{}}, nil
}

// Config returns the stage's configuration, defaults applied.
func (s *Stage) Config() Config { return s.cfg }

// Start arms the series timers until ctx ends: every series already in
// the bucket (left by an earlier process) is scheduled. Call it before
// the runner delivers messages; Wait returns when the timers have stopped.
func (s *Stage) Start(ctx context.Context) error {
	s.mu.Lock()
	s.runCtx = ctx
	s.mu.Unlock()
	pending, err := s.pendingSeries(ctx)
	if err != nil {
		return err
	}
	for _, k := range pending {
		s.touch(k, 0)
	}
	var sub *nats.Subscription
	if nc := s.js.Conn(); nc != nil {
		if sub, err = nc.QueueSubscribe(FlushSubject("*"), StageName, s.onFlush); err != nil {
			return fmt.Errorf("findings: subscribing to flush requests: %w", err)
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-ctx.Done()
		if sub != nil {
			_ = sub.Unsubscribe()
		}
		s.mu.Lock()
		for k, t := range s.timers {
			t.t.Stop()
			delete(s.timers, k)
		}
		s.mu.Unlock()
	}()
	return nil
}

// Wait blocks until Start's context has ended and no completion runs.
func (s *Stage) Wait() { s.wg.Wait() }

// onFlush handles a flush request (its subject names the replay) in a
// goroutine of its own, so the connection's other messages are not held.
func (s *Stage) onFlush(m *nats.Msg) {
	replay := strings.TrimPrefix(m.Subject, bus.PrefixFindingsFlush)
	s.mu.Lock()
	ctx := s.runCtx
	if ctx == nil || ctx.Err() != nil {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		series, n, err := s.FlushReplay(ctx, replay)
		if err != nil {
			s.log.Error().Err(err).Str("replay", replay).Msg("flushing the series of a replay")
			return
		}
		s.log.Info().Str("replay", replay).Int("series", series).Int("findings", n).Msg("replay flushed")
	}()
}

// FlushReplay completes every open series of one replay now, quiet or
// not (completed_by "replay-flush"), then publishes FindingsFlushed on
// FlushedSubject(replay). It returns the series completed and the
// findings they gave. Safe to call again: a replay without open series
// gets only the FindingsFlushed message.
func (s *Stage) FlushReplay(ctx context.Context, replay string) (series, findings int, err error) {
	keys, err := s.pendingSeries(ctx)
	if err != nil {
		return 0, 0, err
	}
	prefix := replayToken(replay)
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		c, _, err := s.completeCount(ctx, k, true, CompletedFlush)
		findings += c
		if err != nil {
			return series, findings, err
		}
		series++
		s.mu.Lock()
		if st, ok := s.timers[k]; ok {
			st.t.Stop()
			st.seq++ // a fire under way leaves the timer alone
			delete(s.timers, k)
		}
		s.mu.Unlock()
	}
	done := &lungsegv1.FindingsFlushed{ReplayId: replay, Series: int32(series), Findings: int32(findings),
		UnixNano: s.now().UnixNano()}
	b, err := proto.Marshal(done)
	if err != nil {
		return series, findings, err
	}
	// Every flush gets its own message: a replay that asks again (its
	// first request came before this stage listened) must see one.
	if err := stage.Publish(ctx, s.js, StageName, stage.Out{Subject: FlushedSubject(replay), Data: b, ReplayID: replay,
		MsgID: fmt.Sprintf("flushed|%s|%d", replay, done.UnixNano)}, nil); err != nil {
		return series, findings, fmt.Errorf("findings: publishing the flush of %s: %w", replay, err)
	}
	return series, findings, nil
}

// pendingSeries lists the series keys in the bucket.
func (s *Stage) pendingSeries(ctx context.Context) ([]string, error) {
	kl, err := s.kv.ListKeys(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("findings: listing bucket: %w", err)
	}
	defer func() { _ = kl.Stop() }()
	seen := map[string]bool{}
	var out []string
	for k := range kl.Keys() {
		parts := strings.Split(k, ".")
		if len(parts) == 3 && parts[0] == "s" && !seen[parts[1]] {
			seen[parts[1]] = true
			out = append(out, parts[1])
		}
	}
	return out, nil
}

// Process implements stage.Processor.
func (s *Stage) Process(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
	in, err := Decode(m.Subject, m.Data)
	if err != nil {
		return stage.Permanent(err)
	}
	if s.hu != nil {
		in.HU = s.hu.HU(ctx, in.Meta)
	}
	sf, err := s.cfg.Analyze(in)
	if err != nil {
		return stage.Permanent(err)
	}
	meta := in.Meta
	b, err := proto.Marshal(sf)
	if err != nil {
		return err
	}
	// The slice's components go out last: once a replay has them, the
	// slice is in its series (or its findings are out).
	emitSlice := func() error {
		return e.Emit(ctx, stage.Out{Subject: SliceSubject(in.Model, meta.ReplayId), Data: b,
			SliceID: meta.Id, ReplayID: meta.ReplayId, Model: in.Model})
	}
	ss := &lungsegv1.SeriesSlice{Meta: meta, Model: in.Model, ModelVersion: in.ModelVersion, Components: sf.Components}
	if len(sf.Components) > 0 {
		ss.PredBits = in.Pred.PackBits()
	}
	if meta.SeriesUid == "" {
		fs, err := s.cfg.Group([]*lungsegv1.SeriesSlice{ss}, CompletedSingle)
		if err != nil {
			return stage.Permanent(err)
		}
		if err := s.publish(ctx, fs, e.Emit); err != nil {
			return err
		}
		return emitSlice()
	}
	key := SeriesKey(meta.ReplayId, in.Model, meta.StudyUid, meta.SeriesUid)
	v, err := proto.Marshal(ss)
	if err != nil {
		return err
	}
	// A 4096² slice's predicted mask is 2 MiB: over the limit it waits
	// in the pixel bucket, and the key holds a reference.
	kvKey := "s." + key + "." + hash(meta.Id)
	if v, _, err = objref.Offload(ctx, s.js, StageName+"|"+kvKey, v); err != nil {
		return fmt.Errorf("findings: storing slice %s: %w", meta.Id, err)
	}
	if _, err := s.kv.Put(ctx, kvKey, v); err != nil {
		return fmt.Errorf("findings: storing slice %s: %w", meta.Id, err)
	}
	s.touch(key, s.cfg.QuietPeriod)
	return emitSlice()
}

// Decode reads a Score (subjects under lung.scores.) or a ModelOutput
// (lung.masks.) into a SliceInput. A ModelOutput's probability map is
// resized to the slice (and refined, for a cascade) and thresholded by
// score.Prediction, as the score stage does, so both give the same mask; both give the probabilities of the predicted pixels
// (a Score through pred_prob, when present).
func Decode(subject string, data []byte) (SliceInput, error) {
	switch {
	case strings.HasPrefix(subject, bus.PrefixScores):
		var sc lungsegv1.Score
		if err := proto.Unmarshal(data, &sc); err != nil {
			return SliceInput{}, fmt.Errorf("%w: decoding score: %w", ErrBadMessage, err)
		}
		if sc.Meta == nil {
			return SliceInput{}, ErrNoMeta
		}
		pred, err := imgx.UnpackMask(int(sc.Meta.Rows), int(sc.Meta.Cols), sc.PredBits)
		if err != nil {
			return SliceInput{}, fmt.Errorf("decoding predicted mask of %s: %w", sc.Meta.Id, err)
		}
		in := SliceInput{Meta: sc.Meta, Model: sc.Model, ModelVersion: sc.ModelVersion, Pred: pred}
		// pred_prob holds the probability of each predicted pixel; the
		// others are below the threshold and not needed for the means.
		if n := pred.Count(); n > 0 && len(sc.PredProb) == 4*n {
			inside, _ := imgx.DecodeFloat32(n, sc.PredProb)
			in.Prob = make([]float32, len(pred.Pix))
			k := 0
			for i, v := range pred.Pix {
				if v != 0 {
					in.Prob[i] = inside[k]
					k++
				}
			}
		}
		return in, nil
	case strings.HasPrefix(subject, bus.PrefixMasks):
		var o lungsegv1.ModelOutput
		if err := proto.Unmarshal(data, &o); err != nil {
			return SliceInput{}, fmt.Errorf("%w: decoding model output: %w", ErrBadMessage, err)
		}
		if o.Meta == nil {
			return SliceInput{}, ErrNoMeta
		}
		full, pred, err := score.Prediction(&o)
		if err != nil {
			return SliceInput{}, fmt.Errorf("model output of %s: %w", o.Meta.Id, err)
		}
		return SliceInput{Meta: o.Meta, Model: o.Model, ModelVersion: o.ModelVersion, Pred: pred, Prob: full}, nil
	}
	return SliceInput{}, fmt.Errorf("%w: subject %s is neither a score nor a model output", ErrBadMessage, subject)
}

// publish sends findings and their alerts with stable dedupe ids.
func (s *Stage) publish(ctx context.Context, fs []*lungsegv1.Finding, emit func(context.Context, stage.Out) error) error {
	for _, f := range fs {
		f.UnixNano = s.now().UnixNano()
		b, err := proto.Marshal(f)
		if err != nil {
			return err
		}
		slice := ""
		if len(f.SliceIds) > 0 {
			slice = f.SliceIds[0]
		}
		if err := emit(ctx, stage.Out{Subject: FindingSubject(f.Category, f.Model, f.ReplayId), Data: b,
			SliceID: slice, ReplayID: f.ReplayId, Model: f.Model, MsgID: f.Id}); err != nil {
			return err
		}
		if !AtLeast(f.Category, s.cfg.AlertAt) {
			continue
		}
		a := NewAlert(f, s.cfg.AlertAt, s.now())
		if b, err = proto.Marshal(a); err != nil {
			return err
		}
		if err := emit(ctx, stage.Out{Subject: AlertSubject(f.Category, f.Model, f.ReplayId), Data: b,
			SliceID: slice, ReplayID: f.ReplayId, Model: f.Model, MsgID: a.Id}); err != nil {
			return err
		}
	}
	return nil
}

// NewAlert makes the alert of a finding.
func NewAlert(f *lungsegv1.Finding, threshold string, now time.Time) *lungsegv1.Alert {
	return &lungsegv1.Alert{Id: "a-" + strings.TrimPrefix(f.Id, "f-"), Finding: f, Threshold: threshold,
		Summary: Summary(f), UnixNano: now.UnixNano()}
}

// Summary describes a finding in one line for a person.
func Summary(f *lungsegv1.Finding) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (size-based estimate) nodule %.1f mm", f.Category, f.DiameterMm)
	if f.SpacingAssumed {
		b.WriteString(" (pixel spacing assumed)")
	}
	if f.Slices > 1 {
		fmt.Fprintf(&b, ", %.0f mm³ over %d slices at %.1f..%.1f", f.VolumeMm3, f.Slices, f.FirstPosition, f.LastPosition)
	} else if len(f.SliceIds) == 1 {
		fmt.Fprintf(&b, " on slice %s", f.SliceIds[0])
	}
	fmt.Fprintf(&b, ", centre (%.0f, %.0f)", f.CentroidRow, f.CentroidCol)
	if f.HuKnown {
		fmt.Fprintf(&b, ", mean %.0f HU", f.MeanHu)
	}
	if f.ProbKnown {
		fmt.Fprintf(&b, ", mean p %.2f", f.MeanProb)
	}
	fmt.Fprintf(&b, "; model %s", f.Model)
	if f.SeriesUid != "" {
		fmt.Fprintf(&b, ", series %s", f.SeriesUid)
	}
	return b.String()
}

// SeriesKey is the bucket key token of one series of one model in one
// replay: replayToken(replay) followed by a hash of the rest, so that a
// flush finds the series of its replay by the key alone.
func SeriesKey(replay, model, study, series string) string {
	return replayToken(replay) + hash(strings.Join([]string{orLive(replay), model, study, series}, "\x00"))
}

// replayToken starts the series keys of one replay.
func replayToken(replay string) string { return hash(orLive(replay))[:8] }

func hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:12])
}

// seriesTimer is the completion timer of one series; seq counts touches
// so that a completion does not forget a timer re-armed meanwhile.
type seriesTimer struct {
	t   *time.Timer
	seq uint64
}

// touch (re)arms the completion timer of a series.
func (s *Stage) touch(key string, after time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runCtx == nil || s.runCtx.Err() != nil {
		// Not started (or stopping): the series stays in the bucket and
		// the next Start schedules it.
		return
	}
	if st, ok := s.timers[key]; ok {
		st.seq++
		st.t.Reset(after)
		return
	}
	s.timers[key] = &seriesTimer{t: time.AfterFunc(after, func() { s.fire(key) })}
}

// fire runs when a series' timer expires.
func (s *Stage) fire(key string) {
	s.mu.Lock()
	ctx := s.runCtx
	st, ok := s.timers[key]
	if ctx == nil || ctx.Err() != nil || !ok {
		s.mu.Unlock()
		return
	}
	seq := st.seq
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	_, again, err := s.completeCount(ctx, key, false, CompletedQuiet)
	if err != nil {
		s.log.Error().Err(err).Str("series_key", key).Msg("completing series; will retry")
		again = 5 * time.Second
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil || st.seq != seq {
		return // stopping, or a new slice re-armed the timer
	}
	if again > 0 {
		st.t.Reset(again)
		return
	}
	delete(s.timers, key)
}

// FlushAll completes every series in the bucket now, quiet or not (for
// shutdown of a batch job and for tests). It returns the findings
// published.
func (s *Stage) FlushAll(ctx context.Context) (int, error) {
	keys, err := s.pendingSeries(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		c, _, err := s.completeCount(ctx, k, true, CompletedQuiet)
		n += c
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// completeCount publishes the nodules of a series if it has been quiet
// (or force), then removes it from the bucket. It returns the number of
// findings and, when the series is not yet quiet, how long to wait. by is
// the findings' completed_by.
func (s *Stage) completeCount(ctx context.Context, key string, force bool, by string) (int, time.Duration, error) {
	s.completing.Lock()
	defer s.completing.Unlock()
	w, err := s.kv.WatchFiltered(ctx, []string{"s." + key + ".>"}, jetstream.IgnoreDeletes())
	if err != nil {
		return 0, 0, fmt.Errorf("findings: reading series %s: %w", key, err)
	}
	var entries []jetstream.KeyValueEntry
	for e := range w.Updates() {
		if e == nil {
			break
		}
		entries = append(entries, e)
	}
	_ = w.Stop()
	if len(entries) == 0 {
		return 0, 0, nil
	}
	var last time.Time
	slices := make([]*lungsegv1.SeriesSlice, 0, len(entries))
	for _, e := range entries {
		if e.Created().After(last) {
			last = e.Created()
		}
		var ss lungsegv1.SeriesSlice
		v, err := objref.Resolve(ctx, s.js, e.Value())
		if err != nil && !objref.IsPermanent(err) {
			return 0, 0, fmt.Errorf("findings: reading %s: %w", e.Key(), err)
		}
		if err == nil {
			err = proto.Unmarshal(v, &ss)
		}
		if err != nil {
			s.log.Error().Err(err).Str("key", e.Key()).Msg("dropping undecodable series slice")
			continue
		}
		slices = append(slices, &ss)
	}
	if wait := s.cfg.QuietPeriod - s.now().Sub(last); !force && wait > 0 {
		return 0, wait, nil
	}
	n := 0
	if len(slices) > 0 {
		fs, err := s.cfg.Group(slices, by)
		if err != nil {
			// Bad state cannot get better: report and drop it.
			s.log.Error().Err(err).Str("series_key", key).Msg("grouping series; dropping it")
			m := slices[0].Meta
			_ = stage.PublishError(ctx, s.js, StageName, stage.Failure{SliceID: m.GetId(), ReplayID: m.GetReplayId(),
				Model: slices[0].Model, Err: err}, "", true)
		} else {
			emit := func(ctx context.Context, o stage.Out) error { return stage.Publish(ctx, s.js, StageName, o, nil) }
			if err := s.publish(ctx, fs, emit); err != nil {
				return 0, 0, err
			}
			n = len(fs)
			m := slices[0].Meta
			s.log.Info().Str("series", m.SeriesUid).Str("model", slices[0].Model).Str("replay", m.ReplayId).
				Int("slices", len(slices)).Int("nodules", n).Msg("series complete")
		}
	}
	for _, e := range entries {
		// Only the revision read: a slice stored again meanwhile stays.
		if err := s.kv.Purge(ctx, e.Key(), jetstream.LastRevision(e.Revision())); err != nil &&
			!errors.Is(err, jetstream.ErrKeyExists) {
			return n, 0, fmt.Errorf("findings: removing %s: %w", e.Key(), err)
		}
		// The entry was the only reference to its object (a large
		// slice's predicted mask): it goes with it.
		if ref, err := objref.Parse(e.Value()); err == nil {
			_ = objref.Delete(ctx, s.js, ref)
		}
	}
	return n, 0, nil
}
