// Package metrics holds the pipeline's Prometheus collectors: per-stage
// message counters and processing latency (fed by stage.Hooks), model
// inference latency per model and execution provider (fed by the
// ModelOutput messages segment and refine publish), per-model score histograms, and
// the pending counts of every durable consumer (polled from JetStream).
//
// Everything is registered on a registry the caller passes in, so tests
// and processes can hold several without clashing.
package metrics

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// Namespace prefixes every metric name.
const Namespace = "lungseg"

// ErrNoRegistry is returned by New without a registerer.
var ErrNoRegistry = errors.New("metrics: no registerer")

// Metrics is the set of collectors. Its methods are safe for concurrent
// use.
type Metrics struct {
	Received     *prometheus.CounterVec   // stage
	Acked        *prometheus.CounterVec   // stage
	Redelivered  *prometheus.CounterVec   // stage
	Failed       *prometheus.CounterVec   // stage, permanent
	Published    *prometheus.CounterVec   // stage
	Processing   *prometheus.HistogramVec // stage
	Inference    *prometheus.HistogramVec // model, provider
	Dice         *prometheus.HistogramVec // model
	Pending      *prometheus.GaugeVec     // stream, consumer
	AckPending   *prometheus.GaugeVec     // stream, consumer
	Redelivering *prometheus.GaugeVec     // stream, consumer
	Waiting      *prometheus.GaugeVec     // stream, consumer
	PollErrors   prometheus.Counter

	mu   sync.Mutex
	seen map[[2]string]bool // consumer series currently exported
}

// LatencyBuckets are the processing and inference histogram buckets in
// seconds, from 0.5 ms to 30 s.
var LatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// New creates the collectors and registers them on reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	if reg == nil {
		return nil, ErrNoRegistry
	}
	cv := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	}
	gv := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help}, []string{"stream", "consumer"})
	}
	m := &Metrics{
		Received:    cv("stage_messages_received_total", "Messages delivered to a stage worker.", "stage"),
		Acked:       cv("stage_messages_acked_total", "Messages a stage processed and acknowledged.", "stage"),
		Redelivered: cv("stage_messages_redelivered_total", "Messages a stage failed and handed back for redelivery after a backoff.", "stage"),
		Failed:      cv("stage_messages_failed_total", "Messages a stage gave up on (terminated and reported on lung.errors).", "stage", "permanent"),
		Published:   cv("stage_messages_published_total", "Messages a stage published (acknowledged by the stream).", "stage"),
		Processing: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "stage_processing_seconds",
			Help: "Time from delivery to acknowledgement of a message a stage processed.", Buckets: LatencyBuckets}, []string{"stage"}),
		Inference: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "model_inference_seconds",
			Help: "Model inference time per slice, as segment measured it (refine, for a cascade model+crop: its crop windows, merge included).", Buckets: LatencyBuckets}, []string{"model", "provider"}),
		Dice: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "score_dice",
			Help: "Per-slice Dice of slices with ground truth.", Buckets: prometheus.LinearBuckets(0.1, 0.1, 10)}, []string{"model"}),
		Pending:      gv("consumer_pending_messages", "Messages matching a durable consumer not yet delivered."),
		AckPending:   gv("consumer_ack_pending_messages", "Messages delivered to a durable consumer and not yet acknowledged."),
		Redelivering: gv("consumer_redelivered_messages", "Messages of a durable consumer redelivered and not yet acknowledged."),
		Waiting:      gv("consumer_waiting_pulls", "Outstanding pull requests of a durable consumer (0: no worker is listening)."),
		PollErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "consumer_poll_errors_total",
			Help: "Failed polls of consumer info."}),
		seen: map[[2]string]bool{},
	}
	for _, c := range []prometheus.Collector{m.Received, m.Acked, m.Redelivered, m.Failed, m.Published, m.Processing,
		m.Inference, m.Dice, m.Pending, m.AckPending, m.Redelivering, m.Waiting, m.PollErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Hooks returns stage hooks that count every runner's messages; pass them
// as pipeline.Config.Hooks.
func (m *Metrics) Hooks() stage.Hooks {
	return stage.Hooks{
		Received: func(s string) { m.Received.WithLabelValues(s).Inc() },
		Acked: func(s string, d time.Duration) {
			m.Acked.WithLabelValues(s).Inc()
			m.Processing.WithLabelValues(s).Observe(d.Seconds())
		},
		Failed:    func(s string, perm bool) { m.Failed.WithLabelValues(s, strconv.FormatBool(perm)).Inc() },
		Retried:   func(s string) { m.Redelivered.WithLabelValues(s).Inc() },
		Published: func(s, _ string) { m.Published.WithLabelValues(s).Inc() },
	}
}

// ObserveOutput records one model output's inference time.
func (m *Metrics) ObserveOutput(o *lungsegv1.ModelOutput) {
	p := o.GetProvider()
	if p == "" {
		p = "unknown"
	}
	m.Inference.WithLabelValues(o.GetModel(), p).Observe(float64(o.GetInferenceUs()) / 1e6)
}

// ObserveScore records one score's Dice when the slice has ground truth.
func (m *Metrics) ObserveScore(s *lungsegv1.Score) {
	if s.GetHasTruth() {
		m.Dice.WithLabelValues(s.GetModel()).Observe(s.GetDice())
	}
}

// Watch subscribes (core NATS, no consumer state on the server) to the
// model outputs and scores the pipeline publishes and observes them until
// ctx ends. Every JetStream publish is also a core NATS message, so this
// sees the outputs of segment workers in any process.
func (m *Metrics) Watch(ctx context.Context, nc *nats.Conn, log zerolog.Logger) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	handle := func(msg *nats.Msg) {
		// Outputs and scores of large slices come by object reference.
		data, err := objref.Resolve(ctx, js, msg.Data)
		if err != nil {
			log.Debug().Err(err).Str("subject", msg.Subject).Msg("metrics: unresolvable message")
			return
		}
		msg.Data = data
		switch {
		case strings.HasPrefix(msg.Subject, bus.PrefixMasks):
			var o lungsegv1.ModelOutput
			if err := proto.Unmarshal(msg.Data, &o); err != nil {
				log.Debug().Err(err).Str("subject", msg.Subject).Msg("metrics: undecodable model output")
				return
			}
			m.ObserveOutput(&o)
		case strings.HasPrefix(msg.Subject, bus.PrefixScores):
			var s lungsegv1.Score
			if err := proto.Unmarshal(msg.Data, &s); err != nil {
				log.Debug().Err(err).Str("subject", msg.Subject).Msg("metrics: undecodable score")
				return
			}
			m.ObserveScore(&s)
		}
	}
	var subs []*nats.Subscription
	for _, subj := range []string{bus.PrefixMasks + ">", bus.PrefixScores + ">"} {
		s, err := nc.Subscribe(subj, handle)
		if err != nil {
			for _, s := range subs {
				_ = s.Unsubscribe()
			}
			return err
		}
		// Model outputs are up to 1 MiB each; allow a burst.
		_ = s.SetPendingLimits(64<<10, 256<<20)
		subs = append(subs, s)
	}
	go func() {
		<-ctx.Done()
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	return nil
}

// PollConsumers sets the consumer gauges from the durable consumers of
// the given streams (every pipeline stream when none is named). Ephemeral
// consumers (viewers, replays) are left out. Series of consumers that
// disappeared are removed.
func (m *Metrics) PollConsumers(ctx context.Context, js jetstream.JetStream, streams ...string) error {
	if len(streams) == 0 {
		for _, c := range bus.Streams(bus.StreamOptions{}) {
			streams = append(streams, c.Name)
		}
	}
	now := map[[2]string]bool{}
	var errs []error
	for _, name := range streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l := s.ListConsumers(ctx)
		for ci := range l.Info() {
			if ci.Config.Durable == "" {
				continue
			}
			k := [2]string{name, ci.Name}
			now[k] = true
			m.Pending.WithLabelValues(k[0], k[1]).Set(float64(ci.NumPending))
			m.AckPending.WithLabelValues(k[0], k[1]).Set(float64(ci.NumAckPending))
			m.Redelivering.WithLabelValues(k[0], k[1]).Set(float64(ci.NumRedelivered))
			m.Waiting.WithLabelValues(k[0], k[1]).Set(float64(ci.NumWaiting))
		}
		if err := l.Err(); err != nil {
			errs = append(errs, err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(errs) == 0 {
		for k := range m.seen {
			if !now[k] {
				for _, g := range []*prometheus.GaugeVec{m.Pending, m.AckPending, m.Redelivering, m.Waiting} {
					g.DeleteLabelValues(k[0], k[1])
				}
			}
		}
		m.seen = now
	} else {
		for k := range now {
			m.seen[k] = true
		}
		m.PollErrors.Inc()
	}
	return errors.Join(errs...)
}

// RunPoller calls PollConsumers every interval (default 2s) until ctx
// ends.
func (m *Metrics) RunPoller(ctx context.Context, js jetstream.JetStream, every time.Duration, log zerolog.Logger) {
	if every <= 0 {
		every = 2 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, every)
		if err := m.PollConsumers(pctx, js); err != nil && ctx.Err() == nil {
			log.Debug().Err(err).Msg("metrics: polling consumers")
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
