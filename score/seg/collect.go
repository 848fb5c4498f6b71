package seg

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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
	// Header names of the result events.
	HdrStudy       = "Lung-Study"
	HdrSeries      = "Lung-Series"
	HdrSEGInstance = "Lung-Seg-Instance"
	HdrFrames      = "Lung-Frames"
)

// ResultsSubject is where the SEG of one model's series is announced.
func ResultsSubject(model, replay string) string {
	if replay == "" {
		replay = bus.LiveReplay
	}
	return PrefixResults + model + "." + replay
}

// Storer sends a finished SEG on, e.g. to a PACS with STOW-RS
// (dicomweb.Client.Store fits with a small adapter).
type Storer func(ctx context.Context, study string, seg []byte) error

// Collector is a stage processor on lung.scores.>: it gathers the Score
// messages of DICOM slices (those with study, series and instance UIDs)
// per replay, model and series, and once a series has been quiet for
// Quiet, writes its SEG, puts it in the object store, announces it on
// ResultsSubject and, with Store set, sends it on. Scores of other
// sources are acked and ignored.
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
	meta := scores[0].Meta
	segUID := DefaultInstanceUID(s, alg)
	if c.JS != nil {
		if err := c.publish(ctx, meta.ReplayId, alg.Name, s, segUID, len(frames), ds); err != nil {
			return err
		}
	}
	if c.Store != nil {
		if err := c.Store(ctx, s.StudyUID, ds); err != nil {
			return fmt.Errorf("seg: sending the SEG of series %s: %w", s.SeriesUID, err)
		}
	}
	c.Log.Info().Str("series", s.SeriesUID).Str("model", alg.Name).Int("frames", len(frames)).Int("bytes", len(ds)).Msg("SEG written")
	return nil
}

// ObjectKey is the object store key of a SEG.
func ObjectKey(replay, model, series string) string {
	if replay == "" {
		replay = bus.LiveReplay
	}
	return replay + "/" + model + "/" + series + ".dcm"
}

func (c *Collector) publish(ctx context.Context, replay, model string, s Series, segUID string, frames int, data []byte) error {
	c.mu.Lock()
	if c.os == nil {
		os, err := c.JS.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: Bucket, Description: "DICOM SEG results", Storage: jetstream.FileStorage})
		if err != nil {
			c.mu.Unlock()
			return fmt.Errorf("seg: opening object store %s: %w", Bucket, err)
		}
		c.os = os
	}
	store := c.os
	c.mu.Unlock()
	key := ObjectKey(replay, model, s.SeriesUID)
	if _, err := store.Put(ctx, jetstream.ObjectMeta{Name: key, Description: "DICOM SEG of series " + s.SeriesUID + " by " + model}, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("seg: storing %s: %w", key, err)
	}
	sum := sha256.Sum256(data)
	ref, err := proto.Marshal(&lungsegv1.ObjectRef{Bucket: Bucket, Key: key, Sha256: hex.EncodeToString(sum[:]), Size: int64(len(data))})
	if err != nil {
		return err
	}
	msg := nats.NewMsg(ResultsSubject(model, replay))
	msg.Data = ref
	msg.Header.Set(bus.HdrModel, model)
	msg.Header.Set(bus.HdrReplay, replay)
	msg.Header.Set(HdrStudy, s.StudyUID)
	msg.Header.Set(HdrSeries, s.SeriesUID)
	msg.Header.Set(HdrSEGInstance, segUID)
	msg.Header.Set(HdrFrames, strconv.Itoa(frames))
	if _, err := c.JS.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("seg: announcing %s: %w", key, err)
	}
	return nil
}
