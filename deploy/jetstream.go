// Package deploy holds the pipeline's JetStream definitions as code (the
// streams and the durable consumers of every stage) and the generator of
// the files under deploy/ that are derived from them: the stream and
// consumer JSON definitions (deploy/jetstream/) and the nats-server
// authorization block (deploy/nats/auth.conf). Run `go run ./deploy/gen`
// after changing them; the tests fail while the files are out of date.
package deploy

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/lungseg/lungseg/internal/dlq"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/segment/refine"
	"github.com/nats-io/nats.go/jetstream"
)

// Replicas of every stream in the cluster deployment.
const Replicas = 3

// Stage consumer settings: these are the stage runner's defaults
// (pkg/stage Config.setDefaults); TestConsumersMatchRunner checks them
// against the consumer a real runner creates.
const (
	AckWait       = 30 * time.Second
	MaxDeliver    = 5
	MaxAckPending = 256
)

// Streams returns every stream of a deployment: the pipeline's and the
// dead-letter ones.
func Streams(o bus.StreamOptions) []jetstream.StreamConfig {
	return append(bus.Streams(o), dlq.Streams(o)...)
}

// Consumer is one durable consumer definition.
type Consumer struct {
	Stream string                   `json:"stream"`
	Config jetstream.ConsumerConfig `json:"config"`
}

func stageConsumer(stream, name, durable string, filters ...string) Consumer {
	return Consumer{Stream: stream, Config: jetstream.ConsumerConfig{
		Durable:        durable,
		Description:    "lungseg stage " + name,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        AckWait,
		MaxDeliver:     stage.ServerMaxDeliver(MaxDeliver),
		MaxAckPending:  MaxAckPending,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		FilterSubjects: filters,
	}}
}

// Consumers returns the durable consumers of every stage, one segment
// consumer per model, one refine consumer per cascade ("<detector>+crop":
// refine-<detector> on lung.masks.<detector>), and the dead-letter
// capturer's.
func Consumers(models, cascades []string) []Consumer {
	ms := append([]string(nil), models...)
	sort.Strings(ms)
	out := []Consumer{
		stageConsumer(bus.StreamIngest, "ingest", "ingest"),
		stageConsumer(bus.StreamRaw, "preprocess", "preprocess"),
	}
	for _, m := range ms {
		out = append(out, stageConsumer(bus.StreamReady, "segment", "segment-"+m, bus.ReadySubject(m)))
	}
	var dets []string
	for _, c := range cascades {
		if d, ok := strings.CutSuffix(c, model.CropSuffix); ok && !slices.Contains(dets, d) {
			dets = append(dets, d)
		}
	}
	sort.Strings(dets)
	for _, d := range dets {
		out = append(out, stageConsumer(bus.StreamMasks, refine.StageName, refine.Durable(d), bus.MasksSubject(d)))
	}
	out = append(out, stageConsumer(bus.StreamMasks, "score", "score"),
		Consumer{Stream: dlq.StreamAdvisories, Config: dlq.ConsumerConfig()})
	return out
}

// MarshalStream renders a stream definition as JSON in the form the nats
// CLI reads (`nats stream add --config FILE`).
func MarshalStream(c jetstream.StreamConfig) ([]byte, error) {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("deploy: stream %s: %w", c.Name, err)
	}
	return append(b, '\n'), nil
}

// MarshalConsumer renders a consumer definition as JSON (`nats consumer
// add STREAM --config FILE` reads the config member).
func MarshalConsumer(c Consumer) ([]byte, error) {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("deploy: consumer %s: %w", c.Config.Durable, err)
	}
	return append(b, '\n'), nil
}
