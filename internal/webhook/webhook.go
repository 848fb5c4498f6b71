// Package webhook delivers alerts to an HTTP endpoint: each Alert message
// is POSTed as JSON to a configured URL. Delivery is driven by the sink's
// own durable JetStream consumer (through stage.Runner), so an alert is
// acknowledged only after the receiver answered 2xx; failures are retried
// with growing delays, without a delivery limit by default, so no alert is
// lost while the receiver is down (as long as the stream keeps it).
// Delivery is at least once: receivers drop duplicates by the
// Idempotency-Key header (the alert id).
package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Errors.
var (
	ErrBadConfig = errors.New("webhook: bad configuration")
	ErrRejected  = errors.New("webhook: receiver rejected the alert")
	ErrStatus    = errors.New("webhook: receiver failed")
)

// Defaults. Stream and subjects are those of score/findings' alerts.
const (
	DefaultStream  = "ALERTS"
	DefaultSubject = "lung.alerts.>"
	DefaultTimeout = 10 * time.Second
)

// DefaultBackoff are the delays before each retry; the last repeats.
var DefaultBackoff = []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second,
	30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute}

// Unlimited is the MaxDeliver that retries until the receiver accepts.
const Unlimited = math.MaxInt32

// Config configures one webhook sink.
type Config struct {
	// Name identifies the sink: its durable consumer is "webhook-<Name>".
	Name string
	// URL receives the POSTs (http or https).
	URL string
	// Stream and FilterSubjects select the alerts (default ALERTS,
	// lung.alerts.>; lung.alerts.LR4B.> would send only LR4B).
	Stream         string
	FilterSubjects []string
	// Timeout bounds one attempt (default 10s).
	Timeout time.Duration
	// Backoff are the delays before retries (default DefaultBackoff).
	Backoff []time.Duration
	// MaxDeliver bounds attempts; 0 means Unlimited. An alert given up
	// on is reported on lung.errors.webhook-<name>.<replay>.
	MaxDeliver int
	// Headers are added to every request (for example an
	// Authorization token).
	Headers map[string]string
	// Workers deliver concurrently (default 1).
	Workers int
}

func (c Config) withDefaults() Config {
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if len(c.FilterSubjects) == 0 {
		c.FilterSubjects = []string{DefaultSubject}
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if len(c.Backoff) == 0 {
		c.Backoff = DefaultBackoff
	}
	if c.MaxDeliver <= 0 {
		c.MaxDeliver = Unlimited
	}
	return c
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if err := bus.CheckToken("webhook name", c.Name); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: URL %q: want http(s)://host/...", ErrBadConfig, c.URL)
	}
	return nil
}

// Sink posts alerts; it is the stage.Processor of the webhook's runner.
// Safe for concurrent use.
type Sink struct {
	cfg    Config
	client *http.Client
}

// New returns a sink.
func New(cfg Config) (*Sink, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Sink{cfg: cfg, client: &http.Client{Timeout: cfg.Timeout}}, nil
}

// StageConfig is the runner configuration of the sink: its own durable
// consumer, the backoff, and the delivery limit.
func (s *Sink) StageConfig() stage.Config {
	name := "webhook-" + s.cfg.Name
	return stage.Config{Name: name, Durable: name, Stream: s.cfg.Stream, FilterSubjects: s.cfg.FilterSubjects,
		Workers: s.cfg.Workers, MaxDeliver: s.cfg.MaxDeliver, Backoff: s.cfg.Backoff,
		AckWait: s.cfg.Timeout + 30*time.Second}
}

// Run delivers alerts until ctx ends.
func Run(ctx context.Context, js jetstream.JetStream, cfg Config, log zerolog.Logger) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	r, err := stage.New(js, s.StageConfig(), s, log)
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// JSON encodes an alert as the webhook body: protobuf JSON with the
// .proto field names.
func JSON(a *lungsegv1.Alert) ([]byte, error) {
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(a)
}

// Process implements stage.Processor: one POST per delivery. 2xx acks;
// 4xx other than 408 and 429 is permanent (the receiver will never take
// it); anything else, including no answer, is retried.
func (s *Sink) Process(ctx context.Context, m *stage.Msg, _ stage.Emitter) error {
	var a lungsegv1.Alert
	if err := proto.Unmarshal(m.Data, &a); err != nil {
		return stage.Permanentf("webhook: decoding alert: %w", err)
	}
	body, err := JSON(&a)
	if err != nil {
		return stage.Permanentf("webhook: encoding alert %s: %w", a.Id, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return stage.Permanent(err)
	}
	for k, v := range s.cfg.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", a.Id)
	req.Header.Set("Lungseg-Subject", m.Subject)
	req.Header.Set("Lungseg-Attempt", strconv.FormatUint(m.Delivered, 10))
	resp, err := s.client.Do(req)
	if err != nil {
		m.Log.Warn().Err(err).Str("alert", a.Id).Uint64("attempt", m.Delivered).Msg("webhook: no answer")
		return fmt.Errorf("webhook: posting alert %s: %w", a.Id, err)
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		m.Log.Info().Str("alert", a.Id).Uint64("attempt", m.Delivered).Msg("webhook: delivered")
		return nil
	case code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests:
		return stage.Permanent(fmt.Errorf("%w: alert %s: %s: %s", ErrRejected, a.Id, resp.Status, bytes.TrimSpace(snippet)))
	default:
		m.Log.Warn().Str("alert", a.Id).Int("status", code).Uint64("attempt", m.Delivered).Msg("webhook: receiver failed")
		return fmt.Errorf("%w: alert %s: %s", ErrStatus, a.Id, resp.Status)
	}
}
