// Package web serves the pipeline's viewer and its operational endpoints
// over HTTP:
//
//   - / : a page embedded in the binary (no external resources) showing the
//     slices as they pass, each as the CT in a lung window with the ground
//     truth outline and each model's predicted outline in its own colour,
//     per-model running Dice/IoU/RMSE, and the findings and alerts. A slice
//     opens large with the HU value under the cursor.
//   - /events : server-sent events feeding the page (a snapshot, then
//     "slice", "stats" and "alert" events).
//   - /api/slice.png?key=K&size=N&layers=truth,MODEL : the rendered slice.
//   - /api/hu?key=K : the slice's HU as little-endian int16 (X-Rows, X-Cols).
//   - /api/state : the snapshot as JSON.
//   - /metrics : Prometheus metrics from the given gatherer.
//   - /healthz : runs the given checks; 503 when one fails.
//
// The server reads the pipeline through JetStream ordered consumers (no
// durable state on the server): raw slices for the CT and ground truth,
// scores for each model's predicted mask and metrics, and error events. It
// keeps the most recent slices in a small LRU cache.
package web

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"image/png"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/httpsec"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/lungseg/lungseg/pkg/overlay"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

//go:embed static
var staticFiles embed.FS

// DefaultAddr is where the viewer listens unless told otherwise: loopback
// only.
const DefaultAddr = "127.0.0.1:8080"

// Check is one health check; it returns nil when healthy.
type Check func(ctx context.Context) error

// Options configure a Server. Zero fields take the defaults given.
type Options struct {
	// Addr is the listen address (default DefaultAddr).
	Addr string
	// TLSCertFile and TLSKeyFile, when set, serve HTTPS.
	TLSCertFile, TLSKeyFile string
	// Token, when set, is required on every endpoint except /healthz, as
	// ?token=, an "Authorization: Bearer" header or the cookie the page
	// sets after a ?token= visit.
	Token string
	// Gatherer serves /metrics (nil: no /metrics).
	Gatherer prometheus.Gatherer
	// Checks run on /healthz, by name.
	Checks map[string]Check
	// CheckTimeout bounds each check (default 3s).
	CheckTimeout time.Duration
	// CacheSlices is how many recent slices are kept for rendering
	// (default 64).
	CacheSlices int
	// PageSlices is how many slices a new page is sent (default 24).
	PageSlices int
	// Alerts kept for new pages (default 200).
	Alerts int
	// Backfill > 0 starts the consumers that far in the past instead of
	// at new messages.
	Backfill time.Duration
	// Log receives the server's messages.
	Log zerolog.Logger
}

// Server is the viewer. Create it with New, start its consumers with
// Start, and serve Handler (or call Serve).
type Server struct {
	js  jetstream.JetStream
	o   Options
	hub *hub
	log zerolog.Logger

	mu   sync.Mutex
	cons []*bus.Follower
}

// New returns a Server reading from js.
func New(js jetstream.JetStream, o Options) (*Server, error) {
	if js == nil {
		return nil, errors.New("web: no JetStream")
	}
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.CheckTimeout <= 0 {
		o.CheckTimeout = 3 * time.Second
	}
	if o.CacheSlices <= 0 {
		o.CacheSlices = 64
	}
	if o.PageSlices <= 0 {
		o.PageSlices = 24
	}
	if o.PageSlices > o.CacheSlices {
		o.PageSlices = o.CacheSlices
	}
	if o.Alerts <= 0 {
		o.Alerts = 200
	}
	return &Server{js: js, o: o, hub: newHub(o.CacheSlices, o.Alerts), log: o.Log.With().Str("component", "web").Logger()}, nil
}

// findingFilters selects the nodule findings of every category, leaving
// out the per-slice components (lung.findings.slice.>): filters separated
// by spaces.
func findingFilters() string {
	var f []string
	for _, c := range []string{findings.LR2, findings.LR3, findings.LR4A, findings.LR4B} {
		f = append(f, bus.PrefixFindings+c+".>")
	}
	return strings.Join(f, " ")
}

// Start subscribes to raw slices, scores and errors with ordered
// consumers; they stop when ctx ends or Stop is called.
func (s *Server) Start(ctx context.Context) error {
	cfg := func(filter string) jetstream.OrderedConsumerConfig {
		c := jetstream.OrderedConsumerConfig{FilterSubjects: strings.Split(filter, " "), DeliverPolicy: jetstream.DeliverNewPolicy}
		if s.o.Backfill > 0 {
			t := time.Now().Add(-s.o.Backfill)
			c.DeliverPolicy, c.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
		}
		return c
	}
	subs := []struct {
		stream, filter string
		handle         func(data []byte) error
	}{
		{bus.StreamRaw, bus.SubjRaw, func(b []byte) error {
			var m lungsegv1.Slice
			if err := proto.Unmarshal(b, &m); err != nil {
				return err
			}
			return s.hub.addSlice(&m)
		}},
		{bus.StreamScores, bus.PrefixScores + ">", func(b []byte) error {
			var m lungsegv1.Score
			if err := proto.Unmarshal(b, &m); err != nil {
				return err
			}
			return s.hub.addScore(&m)
		}},
		// Nodule findings of the findings stage (not the per-slice
		// components) and its alerts.
		{bus.StreamFindings, findingFilters(), func(b []byte) error {
			var m lungsegv1.Finding
			if err := proto.Unmarshal(b, &m); err != nil {
				return err
			}
			s.hub.addFinding(&m)
			return nil
		}},
		{bus.StreamAlerts, bus.PrefixAlerts + ">", func(b []byte) error {
			var m lungsegv1.Alert
			if err := proto.Unmarshal(b, &m); err != nil {
				return err
			}
			s.hub.addNoduleAlert(&m)
			return nil
		}},
		{bus.StreamErrors, bus.PrefixErrors + ">", func(b []byte) error {
			var m lungsegv1.ErrorEvent
			if err := proto.Unmarshal(b, &m); err != nil {
				return err
			}
			s.hub.addError(&m)
			return nil
		}},
	}
	for _, sub := range subs {
		handle := sub.handle
		// bus.Follow: an ordered consumer that a watchdog replaces when it
		// falls silent (a cluster node killed under it).
		cc, err := bus.Follow(ctx, s.js, sub.stream, cfg(sub.filter), func(m jetstream.Msg) {
			// Messages of large slices come by object reference.
			data, err := objref.Resolve(ctx, s.js, m.Data())
			if err == nil {
				err = handle(data)
			}
			if err != nil {
				s.log.Warn().Err(err).Str("subject", m.Subject()).Msg("skipping message")
			}
		}, bus.FollowOptions{MaxBytes: 8 << 20, Log: s.log})
		if err != nil {
			s.Stop()
			return fmt.Errorf("web: subscribing to %s: %w", sub.filter, err)
		}
		s.mu.Lock()
		s.cons = append(s.cons, cc)
		s.mu.Unlock()
	}
	go func() { <-ctx.Done(); s.Stop() }()
	return nil
}

// Stop ends the consumers.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.cons {
		c.Stop()
	}
	s.cons = nil
}

// Handler returns the HTTP handler of every endpoint.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFiles, "static")
	files := http.FileServer(http.FS(static))
	mux.Handle("GET /", s.auth(func(w http.ResponseWriter, r *http.Request) {
		if t := r.URL.Query().Get("token"); t != "" && s.o.Token != "" {
			http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: t, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
		}
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		files.ServeHTTP(w, r)
	}))
	mux.Handle("GET /events", s.auth(s.events))
	mux.Handle("GET /api/state", s.auth(func(w http.ResponseWriter, r *http.Request) {
		s.hub.mu.Lock()
		snap := s.hub.snapshotLocked(s.o.CacheSlices)
		s.hub.mu.Unlock()
		writeJSON(w, http.StatusOK, snap)
	}))
	mux.Handle("GET /api/slice.png", s.auth(s.slicePNG))
	mux.Handle("GET /api/hu", s.auth(s.sliceHU))
	if s.o.Gatherer != nil {
		mux.Handle("GET /metrics", s.auth(promhttp.HandlerFor(s.o.Gatherer, promhttp.HandlerOpts{}).ServeHTTP))
	}
	mux.HandleFunc("GET /healthz", s.healthz)
	return mux
}

const tokenCookie = "lungseg_token"

// auth wraps h with the token check when a token is configured.
func (s *Server) auth(h http.HandlerFunc) http.Handler {
	if s.o.Token == "" {
		return h
	}
	want := []byte(s.o.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.URL.Query().Get("token")
		if got == "" {
			if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
				got = strings.TrimPrefix(a, "Bearer ")
			}
		}
		if got == "" {
			if c, err := r.Cookie(tokenCookie); err == nil {
				got = c.Value
			}
		}
		if subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lungseg"`)
			http.Error(w, "token required", http.StatusUnauthorized)
			return
		}
		h(w, r)
	})
}

// events streams server-sent events: "snapshot" first, then "slice",
// "stats" and "alert" as they happen, with a comment every 15s to keep
// proxies from closing the stream.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	c, snap := s.hub.subscribe(512, s.o.PageSlices)
	defer s.hub.unsubscribe(c)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	b, _ := json.Marshal(snap)
	if err := writeEvent(w, event{"snapshot", b}); err != nil {
		return
	}
	fl.Flush()
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		case ev, ok := <-c:
			if !ok {
				return // dropped as too slow: the page reconnects
			}
			if err := writeEvent(w, ev); err != nil {
				return
			}
			// Send what else is queued before flushing.
			for n := len(c); n > 0; n-- {
				if ev, ok = <-c; !ok {
					break
				}
				if err := writeEvent(w, ev); err != nil {
					return
				}
			}
			fl.Flush()
		}
	}
}

func writeEvent(w http.ResponseWriter, ev event) error {
	_, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev.name, ev.data)
	return err
}

// slicePNG renders a cached slice: size (32-1024, default the slice's own
// size) is the longer side, layers limits the outlines drawn ("truth" and
// model names), thick sets the model outline thickness (1-4, default 2
// below 384 px, else 1).
func (s *Server) slicePNG(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	size := 0
	if v := q.Get("size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 32 || n > 1024 {
			http.Error(w, "size must be 32 to 1024", http.StatusBadRequest)
			return
		}
		size = n
	}
	px, err := s.hub.pixels(q.Get("key"), parseLayers(q.Get("layers")))
	if !s.pixelErr(w, err) {
		return
	}
	outR, outC := overlay.OutSize(px.hu.Rows, px.hu.Cols, size)
	thick := 1
	if max(outR, outC) < 384 {
		thick = 2
	}
	if v := q.Get("thick"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 4 {
			http.Error(w, "thick must be 1 to 4", http.StatusBadRequest)
			return
		}
		thick = n
	}
	var layers []overlay.Layer
	for _, l := range px.preds {
		l.Thickness = thick
		layers = append(layers, l)
	}
	// The truth is one pixel thinner than the predictions, so that a
	// prediction that follows it shows outside it; where they coincide
	// they alternate in dashes.
	if px.truth != nil {
		layers = append(layers, overlay.Layer{Mask: px.truth, Color: overlay.TruthColor, Thickness: max(1, thick-1)})
	}
	img, err := overlay.Render(px.hu, overlay.LungWindow, size, layers)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Cache-Control", "private, max-age=3600")
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	_ = enc.Encode(w, img)
}

// sliceHU sends a cached slice's HU values for the cursor read-out.
func (s *Server) sliceHU(w http.ResponseWriter, r *http.Request) {
	px, err := s.hub.pixels(r.URL.Query().Get("key"), map[string]bool{})
	if !s.pixelErr(w, err) {
		return
	}
	b := make([]byte, 2*len(px.hu.Pix))
	for i, v := range px.hu.Pix {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(v))
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("X-Rows", strconv.Itoa(px.hu.Rows))
	h.Set("X-Cols", strconv.Itoa(px.hu.Cols))
	h.Set("Cache-Control", "private, max-age=3600")
	_, _ = w.Write(b)
}

func (s *Server) pixelErr(w http.ResponseWriter, err error) bool {
	switch {
	case err == nil:
		return true
	case errors.Is(err, ErrNoSlice), errors.Is(err, ErrNoCT):
		http.Error(w, err.Error(), http.StatusNotFound)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
	return false
}

// Health is the /healthz body.
type Health struct {
	Status string            `json:"status"` // "ok" or "fail"
	Checks map[string]string `json:"checks"` // "ok" or the error
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	h := s.RunChecks(r.Context())
	code := http.StatusOK
	if h.Status != "ok" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, h)
}

// RunChecks runs every check concurrently, each under CheckTimeout.
func (s *Server) RunChecks(ctx context.Context) Health {
	h := Health{Status: "ok", Checks: map[string]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, c := range s.o.Checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, s.o.CheckTimeout)
			defer cancel()
			err := c(cctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				h.Checks[name] = err.Error()
				h.Status = "fail"
			} else {
				h.Checks[name] = "ok"
			}
		}()
	}
	wg.Wait()
	return h
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Serve listens on Options.Addr and serves until ctx ends; ready, when
// not nil, receives the bound address once listening (useful with port
// 0).
func (s *Server) Serve(ctx context.Context, ready func(addr string)) error {
	sec := httpsec.Options{CertFile: s.o.TLSCertFile, KeyFile: s.o.TLSKeyFile}
	ln, err := sec.Listen(s.o.Addr)
	if err != nil {
		return fmt.Errorf("web: listening on %s: %w", s.o.Addr, err)
	}
	scheme := "http"
	if sec.TLS() {
		scheme = "https"
	}
	// Requests inherit ctx, so event streams end when it does.
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	if ready != nil {
		ready(ln.Addr().String())
	}
	s.log.Info().Str("url", scheme+"://"+ln.Addr().String()+"/").Msg("viewer listening")
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
		}
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("web: serving: %w", err)
	}
}

// parseHex reads #rrggbb (black when malformed).
func parseHex(s string) color.RGBA {
	var r, g, b uint8
	if _, err := fmt.Sscanf(s, "#%02x%02x%02x", &r, &g, &b); err != nil {
		return color.RGBA{A: 255}
	}
	return color.RGBA{r, g, b, 255}
}
