package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/lungseg/lungseg/pkg/httpsec"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/lungseg/lungseg/internal/web"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/metrics"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
)

// webOptions configure the viewer and operational endpoints of a
// process.
type webOptions struct {
	// Addr is the listen address; "" serves nothing (metrics are still
	// collected for the hooks).
	Addr string
	// Token, when set, is required by every endpoint but /healthz.
	Token string
	// TLSCert and TLSKey, when set, serve HTTPS.
	TLSCert, TLSKey string
	// Models are the models whose segment workers /healthz checks
	// (selection names; TTA variants map to their base model).
	Models []string
	// PollEvery is the consumer-info polling interval (default 2s).
	PollEvery time.Duration
	// Backfill shows slices published up to this long before start.
	Backfill time.Duration
}

// webHandle is a started viewer.
type webHandle struct {
	// Metrics are the collectors; pass Metrics.Hooks() as
	// pipeline.Config.Hooks.
	Metrics *metrics.Metrics
	// Registry holds Metrics plus the Go and process collectors.
	Registry *prometheus.Registry
	// Addr is the bound address ("" when not serving).
	Addr string
	done chan error
}

// Wait blocks until the HTTP server has stopped (after ctx ends) and
// returns its error.
func (h *webHandle) Wait() error {
	if h.done == nil {
		return nil
	}
	return <-h.done
}

// startWeb registers the metrics, starts the observers (model outputs and
// scores, consumer polling) and, when o.Addr is set, the viewer's
// consumers and HTTP server, all stopping when ctx ends. It returns once
// the server listens.
func startWeb(ctx context.Context, js jetstream.JetStream, o webOptions, log zerolog.Logger) (*webHandle, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg)
	if err != nil {
		return nil, err
	}
	h := &webHandle{Metrics: m, Registry: reg}
	if err := m.Watch(ctx, js.Conn(), log); err != nil {
		return nil, fmt.Errorf("watching model outputs: %w", err)
	}
	go m.RunPoller(ctx, js, o.PollEvery, log)
	if o.Addr == "" {
		return h, nil
	}
	checks := map[string]web.Check{"nats": web.NATSCheck(js.Conn(), js)}
	for _, name := range baseModelNames(o.Models) {
		checks["model:"+name] = web.ConsumerCheck(js, bus.StreamReady, "segment-"+name)
	}
	srv, err := web.New(js, web.Options{Addr: o.Addr, Token: o.Token, TLSCertFile: o.TLSCert, TLSKeyFile: o.TLSKey, Gatherer: reg, Checks: checks, Backfill: o.Backfill, Log: log})
	if err != nil {
		return nil, err
	}
	if err := srv.Start(ctx); err != nil {
		return nil, err
	}
	ready := make(chan string, 1)
	h.done = make(chan error, 1)
	go func() { h.done <- srv.Serve(ctx, func(addr string) { ready <- addr }) }()
	select {
	case h.Addr = <-ready:
		return h, nil
	case err := <-h.done:
		return nil, err
	}
}

// baseModelNames maps selections to the registry models that serve them,
// sorted, without duplicates ("all" and empty names are skipped: resolve
// them against the registry first).
func baseModelNames(sel []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range sel {
		b, _ := model.SplitVariant(s)
		if b == "" || b == "all" || seen[b] {
			continue
		}
		seen[b] = true
		out = append(out, b)
	}
	sort.Strings(out)
	return out
}

// serveMetrics serves only /metrics and /healthz (no viewer) for a
// single-stage process, until ctx ends; it returns the bound address.
func serveMetrics(ctx context.Context, js jetstream.JetStream, addr string, sec httpsec.Options, reg *prometheus.Registry, models []string, log zerolog.Logger) (net.Addr, error) {
	checks := map[string]web.Check{"nats": web.NATSCheck(js.Conn(), js)}
	for _, name := range baseModelNames(models) {
		checks["model:"+name] = web.ConsumerCheck(js, bus.StreamReady, "segment-"+name)
	}
	srv, err := web.New(js, web.Options{Addr: addr, Checks: checks, Log: log})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		h := srv.RunChecks(r.Context())
		w.Header().Set("Content-Type", "application/json")
		if h.Status != "ok" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(h)
	})
	ln, err := sec.Listen(addr)
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: sec.Require(mux, "/healthz"), ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); _ = hs.Close() }()
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics server stopped")
		}
	}()
	log.Info().Str("addr", ln.Addr().String()).Msg("serving /metrics and /healthz")
	return ln.Addr(), nil
}
