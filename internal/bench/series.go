package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/ingest/dicomweb"
	"github.com/lungseg/lungseg/ingest/dimse"
	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/preprocess"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/lungseg/lungseg/score/seg"
	"github.com/lungseg/lungseg/segment"
	"github.com/lungseg/lungseg/segment/infer"
	"github.com/lungseg/lungseg/segment/refine"
)

// SeriesLatency is a whole series sent by C-STORE (dcmtk's storescu) to the
// receive path (ingest/dimse's SCP, the acceptor, every stage on an
// embedded JetStream, the SEG collector) and timed from the first byte the
// SCP receives to the SEG published, against the sum of the bare
// inference of the same slices. Every figure is min, median and max over
// rounds; each round runs on a fresh server and pipeline, warmed by a
// two-slice series whose SEG is waited for first.
type SeriesLatency struct {
	Model   string `json:"model"`
	Threads int    `json:"threads"`
	Slices  int    `json:"slices"`
	Source  string `json:"source"`
	// QuietMs is the SEG collector's and the findings stage's quiet period:
	// a series counts as complete once no slice came for that long, so it
	// is part of every latency (lungseg receive --seg-quiet, default 10 s).
	QuietMs float64 `json:"quiet_ms"`
	// TotalMs: first byte received to the SEG's event published.
	TotalMs Spread `json:"total_ms"`
	// FindingsMs: first byte to the last finding of the series published
	// (no samples when the series gave no finding).
	FindingsMs Spread `json:"findings_ms"`
	// The breakdown of TotalMs. ReceiveMs: first byte to the last C-STORE
	// answered (every slice on RAW; storescu done). ProcessMs: from there
	// to the last score published (preprocess, segment, refine and score
	// catching up). SEGMs: from the last score to the SEG published (the
	// quiet period, then the SEG and SR built and stored).
	ReceiveMs Spread `json:"receive_ms"`
	// AcceptMs is the part of ReceiveMs the SCP's handler spent in the
	// acceptor, summed over the slices: decoding and checking each
	// instance, publishing it on RAW and its study's attributes (the rest
	// is the association, the transfer and storescu reading the files).
	AcceptMs  Spread `json:"accept_ms"`
	ProcessMs Spread `json:"process_ms"`
	SEGMs     Spread `json:"seg_ms"`
	// FirstScoreMs: first byte to the first score published.
	FirstScoreMs Spread `json:"first_score_ms"`
	// BareMs is the sum of the bare inference times of the same slices,
	// in this process with the same threads: Session.Run at batch 1 of
	// the model (for a cascade, of the detector plus the crop model's runs
	// inside refine's code, with the lung field as preprocess computes it).
	BareMs Spread `json:"bare_inference_ms"`
	// Ratio is TotalMs / BareMs over paired rounds; RatioToScores the
	// same up to the last score (no quiet period).
	Ratio         Spread `json:"ratio"`
	RatioToScores Spread `json:"ratio_to_scores"`
	// PartialSEGs counts the SEGs, over all rounds, written before the
	// series was wholly scored: a pause between two scores longer than the
	// quiet period (a loaded machine, a slow cascade) ends the series early
	// and the collector writes the rest as a second SEG of the same UIDs.
	PartialSEGs int `json:"partial_segs"`
}

// DefaultSeriesQuiet is the series section's quiet period.
const DefaultSeriesQuiet = time.Second

// seriesFiles returns the DICOM files of the series section (SeriesDir, by
// default ct_series/popi_00_141) and two files of another series for the
// warm-up (lungdx_a0002_30, else lungmask_1).
func (r *runner) seriesFiles() (files, warm []string, dir string, err error) {
	dir = r.o.SeriesDir
	ct := r.ctSeriesDir()
	if dir == "" && ct != "" {
		dir = filepath.Join(ct, "popi_00_141")
	}
	if dir == "" || dir == "none" {
		return nil, nil, "", nil
	}
	files, _ = filepath.Glob(filepath.Join(dir, "*.dcm"))
	sort.Strings(files)
	if len(files) == 0 {
		return nil, nil, "", fmt.Errorf("%w: no DICOM files in %s", ErrOptions, dir)
	}
	for _, w := range []string{"lungdx_a0002_30", "lungmask_1"} {
		if ct == "" {
			break
		}
		ws, _ := filepath.Glob(filepath.Join(ct, w, "*.dcm"))
		sort.Strings(ws)
		if len(ws) > 0 && filepath.Clean(filepath.Join(ct, w)) != filepath.Clean(dir) {
			warm = ws[:min(2, len(ws))]
			break
		}
	}
	if len(warm) == 0 {
		return nil, nil, "", fmt.Errorf("%w: no other series for the warm-up beside %s", ErrOptions, dir)
	}
	return files, warm, dir, nil
}

// seriesLatency measures the whole-series latency of the first selected model
// and the first selected cascade.
func (r *runner) seriesLatency(ctx context.Context, reg *model.Registry, names []string, cards []*model.Card) error {
	storescu, err := exec.LookPath("storescu")
	if err != nil {
		r.skip("series: dcmtk's storescu not found")
		return nil
	}
	files, warm, dir, err := r.seriesFiles()
	if err != nil {
		return err
	}
	if files == nil {
		r.skip("series: no ct_series/popi_00_141 (../shared/data beside the repository, --ct-series or --series-dir)")
		return nil
	}
	var pick []string
	if len(cards) > 0 {
		pick = append(pick, cards[0].Name)
	}
	for _, n := range names {
		if model.IsCascade(n) {
			pick = append(pick, n)
			break
		}
	}
	if len(pick) == 0 {
		r.skip("series: no model selected")
		return nil
	}
	// the slices for the bare loop, decoded once
	var slices []cascadeSlice
	for _, f := range files {
		img, err := dicomio.ReadFile(f)
		if err != nil {
			return fmt.Errorf("bench: series: %w", err)
		}
		for _, fr := range img.Frames {
			slices = append(slices, cascadeSlice{hu: fr.HU, rowMm: fr.SpacingRowMm, colMm: fr.SpacingColMm})
		}
	}
	quiet := r.o.SeriesQuiet
	if quiet <= 0 {
		quiet = DefaultSeriesQuiet
	}
	t := r.o.Threads[0]
	for _, name := range pick {
		res := SeriesLatency{Model: name, Threads: t, Slices: len(slices), Source: dir, QuietMs: float64(quiet) / 1e6}
		var total, fnd, recv, acc, proc, segw, first, bare, rat, ratS []float64
		for round := 0; round < r.o.Rounds; round++ {
			run := func() error {
				m, err := r.seriesRound(ctx, reg, name, t, quiet, storescu, files, len(slices), warm)
				if err != nil {
					return err
				}
				total = append(total, m.total)
				recv = append(recv, m.receive)
				acc = append(acc, m.accept)
				proc = append(proc, m.process)
				segw = append(segw, m.seg)
				first = append(first, m.firstScore)
				res.PartialSEGs += m.partial
				if m.findings > 0 {
					fnd = append(fnd, m.findings)
				}
				return nil
			}
			runBare := func() error {
				b, err := bareSeries(reg, name, r.o.infer(t), *r.o.Log, slices)
				bare = append(bare, b)
				return err
			}
			steps := []func() error{run, runBare}
			if round%2 == 1 {
				steps[0], steps[1] = runBare, run
			}
			for _, f := range steps {
				if err := f(); err != nil {
					return fmt.Errorf("bench: series %s: %w", name, err)
				}
			}
			rat = append(rat, ratio(total[round], bare[round]))
			ratS = append(ratS, ratio(recv[round]+proc[round], bare[round]))
		}
		res.TotalMs, res.FindingsMs, res.ReceiveMs, res.ProcessMs = spreadOf(total), spreadOf(fnd), spreadOf(recv), spreadOf(proc)
		res.AcceptMs = spreadOf(acc)
		res.SEGMs, res.FirstScoreMs, res.BareMs = spreadOf(segw), spreadOf(first), spreadOf(bare)
		res.Ratio, res.RatioToScores = spreadOf(rat), spreadOf(ratS)
		r.rep.Series = append(r.rep.Series, res)
		r.progress("series %s threads %d (%d slices by C-STORE): first byte to SEG %s ms (received %s, scored %s later, SEG %s after the last score, quiet %v; %d partial SEGs); bare inference %s ms; ratio %s",
			name, t, res.Slices, res.TotalMs.format(0), res.ReceiveMs.format(0), res.ProcessMs.format(0), res.SEGMs.format(0), quiet,
			res.PartialSEGs, res.BareMs.format(0), res.Ratio.format(2))
	}
	return nil
}

// roundTimes are one round's marks, in ms from the first byte.
type roundTimes struct {
	total, receive, accept, process, seg, firstScore, findings float64
	// partial are the SEGs written before the whole series was scored
	partial int
}

// firstByteListener marks the time of the first byte read on any
// connection it accepts since the last reset. The mark is a time.Now()
// with its monotonic reading, like the other marks of a round: a wall
// clock read back from Unix nanoseconds made the round's total a wall-clock
// difference while its parts were monotonic ones, and a clock step during
// a round (seen once in CI: 14 s) left the parts short of the total.
type firstByteListener struct {
	net.Listener
	first atomic.Pointer[time.Time] // nil: none yet
}

func (l *firstByteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &firstByteConn{Conn: c, l: l}, nil
}

type firstByteConn struct {
	net.Conn
	l *firstByteListener
}

func (c *firstByteConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.l.first.Load() == nil {
		now := time.Now()
		c.l.first.CompareAndSwap(nil, &now)
	}
	return n, err
}

// seriesRound runs one round on a fresh embedded server: the pipeline for
// name, the C-STORE SCP and the SEG collector as lungseg receive runs
// them; the warm-up series first (its SEG waited for), then the timed one.
func (r *runner) seriesRound(ctx context.Context, reg *model.Registry, name string, threads int, quiet time.Duration,
	storescu string, files []string, want int, warm []string) (roundTimes, error) {
	var rt roundTimes
	store, err := os.MkdirTemp(r.tmp, "series-js-")
	if err != nil {
		return rt, err
	}
	defer os.RemoveAll(store)
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: store})
	if err != nil {
		return rt, err
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	nc, err := bus.ConnectEmbedded(srv, "lungseg-bench-series")
	if err != nil {
		return rt, err
	}
	defer nc.Close()
	js, err := bus.JetStream(nc)
	if err != nil {
		return rt, err
	}
	if err := bus.EnsureStreams(ctx, js, bus.StreamOptions{}); err != nil {
		return rt, err
	}
	studies, err := bus.StudyStore(ctx, js, bus.StreamOptions{})
	if err != nil {
		return rt, err
	}
	log := *r.o.Log
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil)
	goRun := func(what string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("%s stopped: %w", what, err))
			}
		}()
	}
	fcfg := findings.Config{QuietPeriod: quiet}
	pc := pipeline.Config{Registry: reg, Models: []string{name}, Defaults: []string{name}, Infer: r.o.infer(threads),
		Formats: formats.All(), Findings: fcfg}
	goRun("pipeline", func(c context.Context) error { return pipeline.Run(c, js, pc, log) })
	col := &seg.Collector{JS: js, Quiet: quiet, Studies: studies, Findings: fcfg, Log: log}
	cr, err := stage.New(js, seg.RunnerConfig(), col, log)
	if err != nil {
		return rt, err
	}
	goRun("SEG collector", cr.Run)
	goRun("SEG flusher", func(c context.Context) error {
		if err := col.Run(c); !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	})
	acc := &dicomweb.Acceptor{JS: js, Models: []string{name}, Source: "dimse", Studies: studies, Log: log}
	var inAccept atomic.Int64 // ns
	scp, err := dimse.New(dimse.Config{AETitle: "LUNGSEG"}, func(ctx context.Context, q *dimse.StoreRequest) (uint16, error) {
		st := time.Now()
		_, err := acc.Accept(ctx, "C-STORE from "+q.CallingAE, q.Part10(), "")
		inAccept.Add(int64(time.Since(st)))
		return dicomweb.FailureReason(err), err
	}, log)
	if err != nil {
		return rt, err
	}
	ln0, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return rt, err
	}
	ln := &firstByteListener{Listener: ln0}
	wg.Add(1)
	go func() { defer wg.Done(); _ = scp.Serve(ln) }()
	defer scp.Close()

	// marks from core subscriptions on the subjects JetStream stores on
	var mu sync.Mutex
	var firstScore, lastScore, segAt, lastFinding time.Time
	scores, segs := 0, 0
	sub := func(subj string, f func(m *nats.Msg, at time.Time)) (*nats.Subscription, error) {
		return nc.Subscribe(subj, func(m *nats.Msg) {
			at := time.Now()
			mu.Lock()
			defer mu.Unlock()
			f(m, at)
		})
	}
	s1, err := sub(bus.ScoresSubject(name, "")+"", func(m *nats.Msg, at time.Time) {
		if firstScore.IsZero() {
			firstScore = at
		}
		lastScore = at
		scores++
	})
	if err != nil {
		return rt, err
	}
	defer s1.Unsubscribe()
	s2, err := sub(seg.ResultsSubject(name, ""), func(m *nats.Msg, at time.Time) {
		if m.Header.Get(seg.HdrObject) == seg.ObjectSEG {
			segAt = at
			segs++
		}
	})
	if err != nil {
		return rt, err
	}
	defer s2.Unsubscribe()
	s3, err := sub(bus.PrefixFindings+">", func(m *nats.Msg, at time.Time) {
		tok := strings.Split(m.Subject, ".")
		if len(tok) >= 4 && tok[2] != findings.SliceToken && tok[3] == name {
			lastFinding = at
		}
	})
	if err != nil {
		return rt, err
	}
	defer s3.Unsubscribe()
	if err := nc.Flush(); err != nil {
		return rt, err
	}
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	send := func(fs []string) error {
		cmd := exec.CommandContext(ctx, storescu, append([]string{"-xr", "-aet", "BENCH", "-aec", "LUNGSEG", host, port}, fs...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("storescu: %v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	waitFor := func(what string, cond func() bool, limit time.Duration) error {
		deadline := time.Now().Add(limit)
		for {
			mu.Lock()
			ok := cond()
			mu.Unlock()
			if ok {
				return nil
			}
			if err := context.Cause(ctx); err != nil {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("no %s within %v", what, limit)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// warm-up: two slices of another series, up to their SEG
	if err := send(warm); err != nil {
		return rt, err
	}
	if err := waitFor("SEG of the warm-up series", func() bool { return segs >= 1 }, 5*time.Minute); err != nil {
		return rt, err
	}
	// let the warm-up's findings complete too (same quiet period)
	time.Sleep(quiet + 200*time.Millisecond)
	mu.Lock()
	firstScore, lastScore, segAt, lastFinding = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	scores, segs = 0, 0
	mu.Unlock()
	ln.first.Store(nil)
	inAccept.Store(0)

	if err := send(files); err != nil {
		return rt, err
	}
	sent := time.Now()
	// the SEG of the whole series is the one after the last score: a gap
	// between scores longer than the quiet period makes the collector
	// write a SEG of the slices so far first (counted in partial)
	if err := waitFor("SEG of the series", func() bool { return scores >= want && segAt.After(lastScore) }, 30*time.Minute); err != nil {
		return rt, fmt.Errorf("%w (%d scores of %d)", err, scores, want)
	}
	// findings are published by their own quiet timer: wait one more
	// quiet period (and a margin) for the last of them
	time.Sleep(quiet + 500*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	first := ln.first.Load()
	if first == nil {
		return rt, fmt.Errorf("series %s: the SEG came but the SCP read no byte", name)
	}
	t0 := *first
	ms := func(a, b time.Time) float64 { return float64(b.Sub(a)) / 1e6 }
	rt = roundTimes{total: ms(t0, segAt), receive: ms(t0, sent), process: ms(sent, lastScore), seg: ms(lastScore, segAt),
		firstScore: ms(t0, firstScore), partial: segs - 1, accept: float64(inAccept.Load()) / 1e6}
	if !lastFinding.IsZero() {
		rt.findings = ms(t0, lastFinding)
	}
	if lastScore.Before(sent) {
		// scoring kept up with reception: nothing left to process
		rt.process = 0
		rt.seg = ms(sent, segAt)
	}
	return rt, nil
}

// timedModel sums the time of its model's runs.
type timedModel struct {
	segment.Model
	d *time.Duration
}

func (m timedModel) Run(in []float32, n int) ([]float32, error) {
	st := time.Now()
	out, err := m.Model.Run(in, n)
	*m.d += time.Since(st)
	return out, err
}

func (m timedModel) FixedBatch() int {
	if f, ok := m.Model.(segment.FixedBatcher); ok {
		return f.FixedBatch()
	}
	return 0
}

// bareSeries returns the sum of the bare inference over slices, in ms:
// the model's Session.Run at batch 1 on preprocess.Input, and for a
// cascade also the crop model's runs inside refine.Stage.Refine.
func bareSeries(reg *model.Registry, name string, io infer.Options, log zerolog.Logger, slices []cascadeSlice) (float64, error) {
	base, _ := model.SplitVariant(name)
	dcard, err := reg.Get(base)
	if err != nil {
		return 0, err
	}
	det, err := infer.Open(dcard, io, log)
	if err != nil {
		return 0, err
	}
	defer det.Close()
	var d time.Duration
	var rs *refine.Stage
	if model.IsCascade(name) {
		ccard, ok := reg.Crop(base)
		if !ok {
			return 0, fmt.Errorf("no crop model for %s", base)
		}
		crop, err := infer.Open(ccard, io, log)
		if err != nil {
			return 0, err
		}
		defer crop.Close()
		rs = &refine.Stage{Detector: dcard.Name, Crop: ccard, CropModel: timedModel{Model: crop, d: &d}}
	}
	h, w := dcard.Input.Height, dcard.Input.Width
	// the first slice twice: an untimed warm-up of each session
	for i, s := range append(slices[:1:1], slices...) {
		if i == 1 {
			d = 0
		}
		x := preprocess.Input(s.hu, dcard)
		st := time.Now()
		prob, err := det.Run(x, 1)
		if err != nil {
			return 0, err
		}
		d += time.Since(st)
		if rs == nil {
			continue
		}
		o := &lungsegv1.ModelOutput{Meta: &lungsegv1.SliceMeta{Rows: int32(s.hu.Rows), Cols: int32(s.hu.Cols)}, Model: dcard.Name,
			Height: int32(h), Width: int32(w)}
		if f, err := lungfield.Compute(s.hu, s.rowMm, s.colMm, lungfield.Options{}); err == nil {
			o.FieldBits, o.HasField = f.PackBits(), true
		}
		if _, err := rs.Refine(o, prob, s.hu); err != nil {
			return 0, err
		}
	}
	return float64(d) / 1e6, nil
}
