package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamOptions tune the pipeline's streams.
type StreamOptions struct {
	// Replicas of each stream (1 for a single server, 3 on a cluster).
	Replicas int
	// MaxAge bounds how long messages are kept, so that the results of a
	// replay (scores, findings, errors) can be inspected afterwards.
	MaxAge time.Duration
	// Duplicates is the publish dedupe window for Nats-Msg-Id.
	Duplicates time.Duration
	// MaxBytes, when not zero, is every stream's byte limit in place of
	// its default in DefaultMaxBytes (-1: unlimited, not for production).
	MaxBytes int64
}

// DefaultStreamOptions are used for fields left zero.
var DefaultStreamOptions = StreamOptions{
	Replicas:   1,
	MaxAge:     24 * time.Hour,
	Duplicates: 10 * time.Minute,
}

// DefaultMaxBytes is each stream's byte limit. RAW, READY and MASKS carry
// the pixels (about 0.5 MB a slice, 0.25 MB a model input or map) but only
// while a consumer still has to acknowledge them (interest retention), so
// they hold the backlog, which ingest keeps near its bound
// (DefaultMaxBacklog); their limit is a ceiling far above it,
// reached only when consumers stop, and a full stream refuses new messages
// (the publisher retries) rather than dropping pending ones. The other
// streams keep what was delivered, for inspection, until MaxAge or their
// limit, dropping the oldest first.
var DefaultMaxBytes = map[string]int64{
	StreamIngest:   64 << 20,
	StreamRaw:      2 << 30,
	StreamReady:    2 << 30,
	StreamMasks:    2 << 30,
	StreamScores:   1 << 30,
	StreamErrors:   256 << 20,
	StreamEvents:   64 << 20,
	StreamTrain:    1 << 30,
	StreamFindings: 256 << 20,
	StreamAlerts:   256 << 20,
	// Pixels of slices too large for one message, kept for the streams'
	// MaxAge (a full bucket refuses new slices).
	"OBJ_" + PixelsBucket:        4 << 30,
	"KV_" + StudiesBucket:        64 << 20,
	"KV_" + IngestProgressBucket: 64 << 20,
}

// defaultOtherBytes limits a stream missing from DefaultMaxBytes (the
// dead-letter streams, the pixel bucket).
const defaultOtherBytes = 1 << 30

// StreamBytes returns the byte limit of stream name under o.
func StreamBytes(o StreamOptions, name string) int64 {
	if o.MaxBytes != 0 {
		return o.MaxBytes
	}
	if b, ok := DefaultMaxBytes[name]; ok {
		return b
	}
	return defaultOtherBytes
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

// WorkStreams are the streams that carry the pixels from stage to stage.
// They use interest retention: a message is removed once every consumer of
// the stream has acknowledged it (or when it is past MaxAge), so their disk
// use follows the backlog, not the day's traffic. A message published while
// no consumer is there is dropped at once: the stage consumers must exist
// before slices are sent (`lungseg run` and every stage process create
// theirs before consuming, `lungseg streams apply` creates them for a
// cluster, and ingest waits for them before it publishes), and a publisher
// checks that one takes the subject before each publish (Interest).
var WorkStreams = []string{StreamRaw, StreamReady, StreamMasks}

// Streams returns the pipeline's stream configurations: one per stage
// boundary, file storage, a byte limit on each. RAW, READY and MASKS use
// interest retention and refuse new messages when full (DiscardNew), so
// nothing a consumer still has to process is dropped; the others use
// limits retention with MaxAge and drop their oldest messages when full
// (DiscardOld), so a replay's results stay inspectable.
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
	mk := func(name, desc string, subjects ...string) jetstream.StreamConfig {
		age := o.MaxAge
		if name == StreamAlerts {
			age = max(age, AlertsMinAge)
		}
		c := jetstream.StreamConfig{
			Name:        name,
			Description: desc,
			Subjects:    subjects,
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Replicas:    o.Replicas,
			MaxAge:      age,
			MaxBytes:    StreamBytes(o, name),
			Duplicates:  o.Duplicates,
			MaxMsgSize:  MaxPayload,
			Discard:     jetstream.DiscardOld,
		}
		if slices.Contains(WorkStreams, name) {
			c.Retention, c.Discard = jetstream.InterestPolicy, jetstream.DiscardNew
		}
		return c
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

// EnsureWait bounds how long EnsureStreams retries while JetStream is not
// ready yet: a cluster that has just started is still electing its meta
// leader, and its API requests time out or find no responder meanwhile.
const EnsureWait = time.Minute

// EnsureStreams creates or updates the pipeline's streams, retrying a
// request that failed because JetStream was not ready (Transient) for up
// to EnsureWait, or until ctx ends.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	for _, cfg := range Streams(o) {
		err := RetryTransient(ctx, EnsureWait, func(ctx context.Context) error {
			_, err := js.CreateOrUpdateStream(ctx, cfg)
			return err
		})
		if err != nil {
			return fmt.Errorf("bus: creating stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// jsClusterNotAvailable is the JetStream API error "JetStream system
// temporarily unavailable" (nats-server's JSClusterNotAvailErr).
const jsClusterNotAvailable jetstream.ErrorCode = 10008

// Transient reports whether a JetStream API request failed because the
// system was not ready (no responder, a request timeout, the cluster
// temporarily unavailable) rather than because of what it asked.
func Transient(err error) bool {
	var api *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, context.DeadlineExceeded):
		return true
	case errors.As(err, &api):
		return api.ErrorCode == jsClusterNotAvailable
	}
	return false
}

// RetryTransient runs op until it succeeds, fails with an error that is
// not Transient, ctx ends, or wait has passed (then the last error is
// returned), backing off from 100 ms to 2 s between tries.
func RetryTransient(ctx context.Context, wait time.Duration, op func(context.Context) error) error {
	deadline := time.Now().Add(wait)
	delay := 100 * time.Millisecond
	for {
		err := op(ctx)
		if err == nil || !Transient(err) || ctx.Err() != nil || time.Now().Add(delay).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// AlertsMinAge is the least time alerts are kept, so that a webhook
// receiver may be down over a weekend without losing one.
const AlertsMinAge = 7 * 24 * time.Hour

// PixelsBucket is the JetStream Object Store bucket for slices whose
// pixels do not fit in one message (over about 700×700 int16 pixels); the
// Slice message then carries an ObjectRef instead of the pixels. Any other
// message body over the payload limit is stored there too, whole, and
// sent as a reference (pkg/objref).
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
		MaxBytes:    StreamBytes(o, "OBJ_"+PixelsBucket),
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
	return keyValue(ctx, js, o, StudiesBucket, "patient and study attributes of received studies", 2)
}

// keyValue creates or opens a file-backed bucket whose entries live ages
// times the streams' max age, within the bucket's byte limit.
func keyValue(ctx context.Context, js jetstream.JetStream, o StreamOptions, bucket, desc string, ages int) (jetstream.KeyValue, error) {
	if o.MaxAge == 0 {
		o.MaxAge = DefaultStreamOptions.MaxAge
	}
	if o.Replicas == 0 {
		o.Replicas = DefaultStreamOptions.Replicas
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: bucket, Description: desc, TTL: time.Duration(ages) * o.MaxAge,
		MaxBytes: StreamBytes(o, "KV_"+bucket), Storage: jetstream.FileStorage, Replicas: o.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("bus: creating key-value bucket %s: %w", bucket, err)
	}
	return kv, nil
}
