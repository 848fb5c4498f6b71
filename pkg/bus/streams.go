package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamOptions tune the pipeline's streams.
type StreamOptions struct {
	// Replicas of each stream (1 for a single server, 3 on a cluster).
	Replicas int
	// MaxAge bounds how long messages are kept (limits retention) so that
	// a replay can be inspected afterwards.
	MaxAge time.Duration
	// Duplicates is the publish dedupe window for Nats-Msg-Id.
	Duplicates time.Duration
	// MaxBytes bounds each stream's size; -1 is unlimited.
	MaxBytes int64
}

// DefaultStreamOptions are used for fields left zero.
var DefaultStreamOptions = StreamOptions{
	Replicas:   1,
	MaxAge:     24 * time.Hour,
	Duplicates: 10 * time.Minute,
	MaxBytes:   -1,
}

// Stream names.
const (
	StreamIngest   = "INGEST"
	StreamRaw      = "RAW"
	StreamReady    = "READY"
	StreamMasks    = "MASKS"
	StreamScores   = "SCORES"
	StreamErrors   = "ERRORS"
	StreamEvents   = "EVENTS"
	StreamTrain    = "TRAIN"
	StreamFindings = "FINDINGS"
	StreamAlerts   = "ALERTS"
)

// Streams returns the pipeline's stream configurations: one per stage
// boundary, file storage, limits retention.
func Streams(o StreamOptions) []jetstream.StreamConfig {
	d := DefaultStreamOptions
	if o.Replicas == 0 {
		o.Replicas = d.Replicas
	}
	if o.MaxAge == 0 {
		o.MaxAge = d.MaxAge
	}
	if o.Duplicates == 0 {
		o.Duplicates = d.Duplicates
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = d.MaxBytes
	}
	mk := func(name, desc string, subjects ...string) jetstream.StreamConfig {
		age := o.MaxAge
		if name == StreamAlerts {
			age = max(age, AlertsMinAge)
		}
		return jetstream.StreamConfig{
			Name:        name,
			Description: desc,
			Subjects:    subjects,
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Replicas:    o.Replicas,
			MaxAge:      age,
			MaxBytes:    o.MaxBytes,
			Duplicates:  o.Duplicates,
			MaxMsgSize:  MaxPayload,
			Discard:     jetstream.DiscardOld,
		}
	}
	return []jetstream.StreamConfig{
		mk(StreamIngest, "ingest jobs: files and folders to read", SubjIngestJobs),
		mk(StreamRaw, "CT slices in HU from ingest", SubjRaw),
		mk(StreamReady, "model-ready inputs from preprocess, one subject per model", PrefixReady+">"),
		mk(StreamMasks, "probability maps from segment, one subject per model", PrefixMasks+">"),
		mk(StreamScores, "per-slice scores from score", PrefixScores+">"),
		mk(StreamErrors, "failures of every stage", PrefixErrors+">"),
		mk(StreamEvents, "pipeline events (ingest jobs done)", "lung.events.>"),
		mk(StreamTrain, "augmented training copies from preprocess", PrefixTrain+">"),
		mk(StreamFindings, "nodule findings per category and per-slice components", PrefixFindings+">"),
		mk(StreamAlerts, "alerts: findings at or above the alert category", PrefixAlerts+">"),
	}
}

// EnsureStreams creates or updates the pipeline's streams.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	for _, cfg := range Streams(o) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("bus: creating stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// AlertsMinAge is the least time alerts are kept, so that a webhook
// receiver may be down over a weekend without losing one.
const AlertsMinAge = 7 * 24 * time.Hour

// PixelsBucket is the JetStream Object Store bucket for slices whose
// pixels do not fit in one message (over about 700×700 int16 pixels); the
// Slice message then carries an ObjectRef instead of the pixels.
const PixelsBucket = "lung-pixels"

// PixelStore creates or opens the pixel bucket, with the streams' max age
// as its TTL.
func PixelStore(ctx context.Context, js jetstream.JetStream, o StreamOptions) (jetstream.ObjectStore, error) {
	if o.MaxAge == 0 {
		o.MaxAge = DefaultStreamOptions.MaxAge
	}
	if o.Replicas == 0 {
		o.Replicas = DefaultStreamOptions.Replicas
	}
	st, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      PixelsBucket,
		Description: "pixels of slices too large for one message",
		TTL:         o.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: creating object store %s: %w", PixelsBucket, err)
	}
	return st, nil
}

// StudiesBucket is the key-value bucket of each received study's patient
// and study attributes (key: StudyInstanceUID), which results sent back
// as DICOM must repeat. It identifies patients: it never reaches logs.
const StudiesBucket = "lung-studies"

// StudyStore creates or opens the studies bucket (kept twice the streams'
// max age, so a late SEG still finds its study).
func StudyStore(ctx context.Context, js jetstream.JetStream, o StreamOptions) (jetstream.KeyValue, error) {
	if o.MaxAge == 0 {
		o.MaxAge = DefaultStreamOptions.MaxAge
	}
	if o.Replicas == 0 {
		o.Replicas = DefaultStreamOptions.Replicas
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: StudiesBucket, Description: "patient and study attributes of received studies",
		TTL: 2 * o.MaxAge, Storage: jetstream.FileStorage, Replicas: o.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: creating key-value bucket %s: %w", StudiesBucket, err)
	}
	return kv, nil
}
