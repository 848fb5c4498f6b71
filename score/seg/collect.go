package seg

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
)

// Results of the collector.
const (
	// StageName is the collector's stage name (consumer, error subjects).
	StageName = "seg"
	// Bucket is the JetStream object store bucket holding the SEG files
	// (a SEG of a 300-slice series is ~10 MB, over the message limit).
	Bucket = "lung-seg"
	// PrefixResults + <model>.<replay> is where the collector announces
	// each SEG: the payload is an ObjectRef (bucket, key, sha256, size),
	// the headers name the model, replay, study, series and SEG instance.
	// It is under lung.events., so the EVENTS stream keeps it.
	PrefixResults = "lung.events.seg."
	// Header names of the result events. HdrObject says what the event
	// announces (ObjectSEG or ObjectSR); both name the SEG instance, an
	// SR event also its own instance and its number of nodules.
	HdrStudy       = "Lung-Study"
	HdrSeries      = "Lung-Series"
	HdrSEGInstance = "Lung-Seg-Instance"
	HdrFrames      = "Lung-Frames"
	HdrObject      = "Lung-Object"
	HdrSRInstance  = "Lung-SR-Instance"
	HdrNodules     = "Lung-Nodules"
	// Values of HdrObject.
	ObjectSEG = "SEG"
	ObjectSR  = "SR"
)

// ResultsSubject is where the SEG and the SR of one model's series are
// announced (the SEG first).
func ResultsSubject(model, replay string) string {
	if replay == "" {
		replay = bus.LiveReplay
	}
	return PrefixResults + model + "." + replay
}

// Storer sends a finished SEG or SR (a Part 10 file) on, e.g. to a PACS
// with STOW-RS (dicomweb.Client.Store fits with a small adapter).
type Storer func(ctx context.Context, study string, instance []byte) error

// Collector is a stage processor on lung.scores.>: it gathers the Score
// messages of DICOM slices (those with study, series and instance UIDs)
// per replay, model and series, and once a series has been quiet for
// Quiet, writes its SEG and then its measurement report (a TID 1500
// Enhanced SR, see SRDataset: one measurement group per nodule, the
// nodules grouped by score/findings from the same predicted masks), puts
// each in the object store, announces each on ResultsSubject and, with
// Store set, sends each on. Scores of other sources are acked and
// ignored.
//
// The pending series are held in memory: a process that stops before a
// series is quiet loses it (its scores are acked); rerunning the series
// makes the same SEG (same UIDs), so a resend replaces it.
type Collector struct {
	JS    jetstream.JetStream
	Quiet time.Duration
	Store Storer
	Log   zerolog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Studies, when set, holds the patient and study attributes of each
	// source study (dicomwrite.StudyAttrs as JSON, key: StudyInstanceUID),
	// copied into the SEG so that a PACS files it with its source.
	Studies jetstream.KeyValue
	// Findings is the findings stage's configuration (zero: its
	// defaults): with the same minimum size, default spacing and
	// thickness, the SR's nodules and measurements are the findings'.
	Findings findings.Config
	// Dir, when set, also receives each SEG and SR as a file, at its
	// object key under Dir (<replay>/<model>/<series>.dcm and .sr.dcm);
	// with JS nil, the collector only writes files (replay --seg-out).
	Dir string

	mu      sync.Mutex
	pending map[string]*pendingSeries
	os      jetstream.ObjectStore
}

type pendingSeries struct {
	scores map[string]*lungsegv1.Score // by instance/frame
	last   time.Time
}

func (c *Collector) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// RunnerConfig is the stage.Config of the collector's consumer.
func RunnerConfig() stage.Config {
	return stage.Config{Name: StageName, Stream: bus.StreamScores, FilterSubjects: []string{bus.PrefixScores + ">"}}
}

// Process implements stage.Processor.
func (c *Collector) Process(ctx context.Context, m *stage.Msg, e stage.Emitter) error {
	var s lungsegv1.Score
	if err := proto.Unmarshal(m.Data, &s); err != nil {
		return stage.Permanentf("seg: decoding score: %w", err)
	}
	c.Add(&s)
	return nil
}

// Add records one score (a repeat of the same slice replaces it).
func (c *Collector) Add(s *lungsegv1.Score) {
	meta := s.GetMeta()
	if meta.GetStudyUid() == "" || meta.GetSeriesUid() == "" || meta.GetInstanceUid() == "" || s.Model == "" {
		return
	}
	key := meta.ReplayId + "\x00" + s.Model + "\x00" + meta.SeriesUid
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending == nil {
		c.pending = map[string]*pendingSeries{}
	}
	p := c.pending[key]
	if p == nil {
		p = &pendingSeries{scores: map[string]*lungsegv1.Score{}}
		c.pending[key] = p
	}
	p.scores[meta.InstanceUid+"/"+strconv.Itoa(int(meta.Frame))] = s
	p.last = c.now()
}

// Pending returns the number of series waiting.
func (c *Collector) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// Run flushes quiet series every tick until ctx ends.
func (c *Collector) Run(ctx context.Context) error {
	tick := c.Quiet / 4
	if tick < 50*time.Millisecond {
		tick = 50 * time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if _, err := c.Flush(ctx, false); err != nil {
				c.Log.Error().Err(err).Msg("writing SEG")
			}
		}
	}
}

// Flush writes the SEG of every series quiet for Quiet (all of them with
// force) and returns how many it wrote. A series that fails is reported
// on the errors subject and dropped.
func (c *Collector) Flush(ctx context.Context, force bool) (int, error) {
	now := c.now()
	var ready []*pendingSeries
	c.mu.Lock()
	for k, p := range c.pending {
		if force || now.Sub(p.last) >= c.Quiet {
			ready = append(ready, p)
			delete(c.pending, k)
		}
	}
	c.mu.Unlock()
	n := 0
	var firstErr error
	for _, p := range ready {
		scores := make([]*lungsegv1.Score, 0, len(p.scores))
		for _, s := range p.scores {
			scores = append(scores, s)
		}
		if err := c.write(ctx, scores); err != nil {
			meta := scores[0].Meta
			c.Log.Error().Err(err).Str("series", meta.SeriesUid).Str("model", scores[0].Model).Msg("SEG failed")
			if c.JS != nil {
				stage.PublishError(ctx, c.JS, StageName, stage.Failure{SliceID: meta.SeriesUid, ReplayID: meta.ReplayId,
					Model: scores[0].Model, Err: err}, bus.ScoresSubject(scores[0].Model, meta.ReplayId), false)
			}
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		n++
	}
	return n, firstErr
}

func (c *Collector) write(ctx context.Context, scores []*lungsegv1.Score) error {
	s, alg, frames, err := FromScores(scores)
	if err != nil {
		return err
	}
	if c.Studies != nil && s.StudyUID != "" {
		e, err := c.Studies.Get(ctx, s.StudyUID)
		switch {
		case err == nil:
			var a dicomwrite.StudyAttrs
			if err := json.Unmarshal(e.Value(), &a); err != nil {
				return fmt.Errorf("seg: study attributes of %s: %w", s.StudyUID, err)
			}
			s.PatientName, s.PatientID, s.PatientBirthDate, s.PatientSex = a.PatientName, a.PatientID, a.PatientBirthDate, a.PatientSex
			s.StudyDate, s.StudyTime, s.StudyID, s.AccessionNumber = a.StudyDate, a.StudyTime, a.StudyID, a.AccessionNumber
			s.ReferringPhysicianName = a.ReferringPhysicianName
		case errors.Is(err, jetstream.ErrKeyNotFound):
			c.Log.Warn().Str("series", s.SeriesUID).Msg("no study attributes known: the SEG's patient module stays empty")
		default:
			return fmt.Errorf("seg: reading study attributes: %w", err)
		}
	}
	o := Options{Time: c.now()}
	ds, err := Bytes(s, alg, frames, o)
	if err != nil {
		return err
	}
	segRef := SEGRef{SeriesUID: DefaultSeriesUID(s, alg), InstanceUID: DefaultInstanceUID(s, alg), Segment: 1}
	// The nodules, as the findings stage groups them: frames[i] is the
	// mask of scores[i].
	ins := make([]findings.SliceInput, len(scores))
	for i, sc := range scores {
		ins[i] = findings.SliceInput{Meta: sc.Meta, Model: sc.Model, ModelVersion: sc.ModelVersion, Pred: frames[i].Mask}
	}
	fs, err := c.Findings.Series(ins, findings.CompletedQuiet)
	if err != nil {
		return fmt.Errorf("seg: nodules of series %s: %w", s.SeriesUID, err)
	}
	nodules := NodulesOf(fs, int(scores[0].Meta.Cols))
	sr, err := SRBytes(s, alg, frames, segRef, nodules, o)
	if err != nil {
		return err
	}
	meta := scores[0].Meta
	srUID := DefaultSRInstanceUID(s, alg)
	if c.JS != nil {
		ev := event{replay: meta.ReplayId, model: alg.Name, s: s, object: ObjectSEG, segUID: segRef.InstanceUID,
			frames: len(frames), key: ObjectKey(meta.ReplayId, alg.Name, s.SeriesUID)}
		if err := c.publish(ctx, ev, ds); err != nil {
			return err
		}
		ev.object, ev.srUID, ev.nodules, ev.key = ObjectSR, srUID, len(nodules), SRObjectKey(meta.ReplayId, alg.Name, s.SeriesUID)
		if err := c.publish(ctx, ev, sr); err != nil {
			return err
		}
	}
	if c.Dir != "" {
		for key, data := range map[string][]byte{ObjectKey(meta.ReplayId, alg.Name, s.SeriesUID): ds, SRObjectKey(meta.ReplayId, alg.Name, s.SeriesUID): sr} {
			if err := writeFile(c.Dir, key, data); err != nil {
				return err
			}
		}
	}
	if c.Store != nil {
		if err := c.Store(ctx, s.StudyUID, ds); err != nil {
			return fmt.Errorf("seg: sending the SEG of series %s: %w", s.SeriesUID, err)
		}
		if err := c.Store(ctx, s.StudyUID, sr); err != nil {
			return fmt.Errorf("seg: sending the SR of series %s: %w", s.SeriesUID, err)
		}
	}
	c.Log.Info().Str("series", s.SeriesUID).Str("model", alg.Name).Int("frames", len(frames)).Int("bytes", len(ds)).
		Int("nodules", len(nodules)).Int("sr_bytes", len(sr)).Msg("SEG and SR written")
	return nil
}

// ObjectKey is the object store key of a SEG.
func ObjectKey(replay, model, series string) string {
	if replay == "" {
		replay = bus.LiveReplay
	}
	return replay + "/" + model + "/" + series + ".dcm"
}

// SRObjectKey is the object store key of the SR beside its SEG.
func SRObjectKey(replay, model, series string) string {
	return strings.TrimSuffix(ObjectKey(replay, model, series), ".dcm") + ".sr.dcm"
}

// writeFile writes data at key under dir; the key's parts are UIDs,
// model and replay names, none of which may leave dir.
func writeFile(dir, key string, data []byte) error {
	rel := filepath.Clean(filepath.FromSlash(key))
	if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("seg: %q would be written outside %s", key, dir)
	}
	p := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("seg: %w", err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		return fmt.Errorf("seg: %w", err)
	}
	return nil
}

// event is what one result announcement says.
type event struct {
	replay, model   string
	s               Series
	object, key     string
	segUID, srUID   string
	frames, nodules int
}

func (c *Collector) publish(ctx context.Context, ev event, data []byte) error {
	c.mu.Lock()
	if c.os == nil {
		os, err := c.JS.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: Bucket, Description: "DICOM SEG and SR results", Storage: jetstream.FileStorage})
		if err != nil {
			c.mu.Unlock()
			return fmt.Errorf("seg: opening object store %s: %w", Bucket, err)
		}
		c.os = os
	}
	store := c.os
	c.mu.Unlock()
	desc := "DICOM SEG of series " + ev.s.SeriesUID + " by " + ev.model
	if ev.object == ObjectSR {
		desc = "DICOM SR (TID 1500) of series " + ev.s.SeriesUID + " by " + ev.model
	}
	if _, err := store.Put(ctx, jetstream.ObjectMeta{Name: ev.key, Description: desc}, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("seg: storing %s: %w", ev.key, err)
	}
	sum := sha256.Sum256(data)
	ref, err := proto.Marshal(&lungsegv1.ObjectRef{Bucket: Bucket, Key: ev.key, Sha256: hex.EncodeToString(sum[:]), Size: int64(len(data))})
	if err != nil {
		return err
	}
	msg := nats.NewMsg(ResultsSubject(ev.model, ev.replay))
	msg.Data = ref
	msg.Header.Set(bus.HdrModel, ev.model)
	msg.Header.Set(bus.HdrReplay, ev.replay)
	msg.Header.Set(HdrStudy, ev.s.StudyUID)
	msg.Header.Set(HdrSeries, ev.s.SeriesUID)
	msg.Header.Set(HdrObject, ev.object)
	msg.Header.Set(HdrSEGInstance, ev.segUID)
	msg.Header.Set(HdrFrames, strconv.Itoa(ev.frames))
	if ev.object == ObjectSR {
		msg.Header.Set(HdrSRInstance, ev.srUID)
		msg.Header.Set(HdrNodules, strconv.Itoa(ev.nodules))
	}
	if _, err := c.JS.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("seg: announcing %s: %w", ev.key, err)
	}
	return nil
}
