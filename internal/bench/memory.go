package bench

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/nats-io/nats.go/jetstream"
)

// Memory is one replay of a pickle of Rows 512×512 rows through every
// stage in this process (embedded JetStream included, as `lungseg run`),
// with the memory and disk it took.
type Memory struct {
	Model string `json:"model"`
	Rows  int    `json:"rows"`
	// BacklogMB is the ingest backlog bound (pipeline.Config.MaxBacklog);
	// 0 means none (ingest reads as fast as it can).
	BacklogMB float64 `json:"backlog_mb"`
	// PeakRSSMB is the process's peak resident set (VmHWM, reset before the
	// replay) over its resident set before it (BaseRSSMB).
	BaseRSSMB float64 `json:"base_rss_mb"`
	PeakRSSMB float64 `json:"peak_rss_mb"`
	// PeakHeapMB is the peak of the live Go heap (heap objects), sampled
	// every 50 ms.
	PeakHeapMB float64 `json:"peak_heap_mb"`
	// PeakPendingMB is the peak of the bytes held in RAW, READY and MASKS
	// (what consumers still had to acknowledge).
	PeakPendingMB float64 `json:"peak_pending_mb"`
	// StoreMB is the JetStream store's disk use at each quarter of the
	// replay's scores and at the end (the last figure).
	StoreMB []float64 `json:"store_mb"`
	// PeakStoreMB is its peak, sampled every 500 ms.
	PeakStoreMB float64 `json:"peak_store_mb"`
	// StreamsMB are the bytes each stream holds at the end (RAW, READY and
	// MASKS should hold nothing; SCORES keeps the results for inspection).
	StreamsMB  map[string]float64 `json:"streams_mb"`
	SlicesPerS float64            `json:"slices_per_s"`
}

// DefaultMemoryRows are the pickle sizes the probe measured.
var DefaultMemoryRows = []int{264, 708, 2124}

// memory runs the memory section: each row count with the backlog bound
// and, with MemoryUnbound, without it.
func (r *runner) memory(ctx context.Context, reg *model.Registry, cards []*model.Card) error {
	if len(cards) == 0 {
		return nil
	}
	card := cards[0]
	rows := r.o.MemoryRows
	if len(rows) == 0 {
		rows = DefaultMemoryRows
	}
	bounds := []int64{r.o.MaxBacklog}
	if r.o.MemoryUnbound {
		bounds = append(bounds, -1)
	}
	base := phantom.Generate(31, min(16, slices0(rows)), phantom.Options{})
	for _, b := range bounds {
		for _, n := range rows {
			m, err := r.memoryRun(ctx, reg, card, base, n, b)
			if err != nil {
				return err
			}
			r.rep.Memory = append(r.rep.Memory, m)
			r.progress("memory %s rows %d backlog %s: peak RSS +%.0f MB (base %.0f), live heap %.0f MB, pending %.0f MB, store %s MB (peak %.0f), %.1f slices/s; streams at the end (MB) %v",
				m.Model, m.Rows, backlogName(m.BacklogMB), m.PeakRSSMB, m.BaseRSSMB, m.PeakHeapMB, m.PeakPendingMB, floats(m.StoreMB), m.PeakStoreMB, m.SlicesPerS, m.StreamsMB)
		}
	}
	return nil
}

func slices0(rows []int) int {
	m := rows[0]
	for _, n := range rows {
		m = max(m, n)
	}
	return m
}

func backlogName(mb float64) string {
	if mb <= 0 {
		return "none"
	}
	return fmt.Sprintf("%.0f MB", mb)
}

func floats(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, strconv.FormatFloat(x, 'f', 0, 64))
	}
	return strings.Join(s, "/")
}

// memoryRun writes an n-row pickle from the base slices (repeated, each
// row its own index), starts every stage on a fresh embedded server with
// the given backlog bound and replays the pickle while sampling memory.
func (r *runner) memoryRun(ctx context.Context, reg *model.Registry, card *model.Card, base []phantom.Slice, n int, backlog int64) (Memory, error) {
	m := Memory{Model: card.Name, Rows: n}
	if backlog >= 0 {
		b := backlog
		if b == 0 {
			b = bus.DefaultMaxBacklog
		}
		m.BacklogMB = float64(b) / 1e6
	}
	rows := make([]phantom.Slice, n)
	for i := range rows {
		rows[i] = base[i%len(base)]
		rows[i].Index = i
	}
	pkl := filepath.Join(r.tmp, fmt.Sprintf("memory-%d.pkl", n))
	if err := phantom.WritePKL(pkl, rows); err != nil {
		return m, err
	}
	defer os.Remove(pkl)
	store, err := os.MkdirTemp(r.tmp, "js-memory-")
	if err != nil {
		return m, err
	}
	defer os.RemoveAll(store)
	srv, err := bus.StartEmbedded(bus.EmbeddedOptions{StoreDir: store})
	if err != nil {
		return m, err
	}
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	nc, err := bus.ConnectEmbedded(srv, "lungseg-bench-memory")
	if err != nil {
		return m, err
	}
	defer nc.Close()
	js, err := bus.JetStream(nc)
	if err != nil {
		return m, err
	}
	if err := bus.EnsureStreams(ctx, js, bus.StreamOptions{}); err != nil {
		return m, err
	}
	pc := pipeline.Config{Registry: reg, Models: []string{card.Name}, Defaults: []string{card.Name},
		Infer: r.o.infer(r.o.Threads[0]), Formats: formats.All(), MaxBacklog: backlog,
		Stages: []string{pipeline.Ingest, pipeline.Preprocess, pipeline.Segment, pipeline.Score}}
	pctx, stop := context.WithCancel(ctx)
	perr := make(chan error, 1)
	go func() { perr <- pipeline.Run(pctx, js, pc, *r.o.Log) }()
	defer func() { stop(); <-perr }()

	// Start from a clean slate: what earlier sections and the pickle
	// writer left is returned to the system and the peak is reset.
	runtime.GC()
	debug.FreeOSMemory()
	resetPeakRSS()
	m.BaseRSSMB = procStatusMB("VmRSS")

	var mu sync.Mutex
	var peakHeap, peakPending, peakStore, profiled float64
	sctx, sstop := context.WithCancel(ctx)
	var sw sync.WaitGroup
	sw.Add(1)
	go func() {
		defer sw.Done()
		bl := &bus.Backlog{JS: js}
		sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			metrics.Read(sample)
			heap := float64(sample[0].Value.Uint64()) / 1e6
			var pend, st float64
			if i%4 == 0 {
				if p, _, err := bl.Pending(sctx); err == nil {
					pend = float64(p) / 1e6
				}
			}
			if i%10 == 0 {
				st = dirMB(store)
			}
			if prof := os.Getenv("LUNGSEG_BENCH_HEAP_PROFILE"); prof != "" && heap > 1.1*profiled {
				writeHeapProfile(fmt.Sprintf("%s.%d", prof, n))
				profiled = heap
			}
			mu.Lock()
			peakHeap, peakPending, peakStore = max(peakHeap, heap), max(peakPending, pend), max(peakStore, st)
			mu.Unlock()
		}
	}()
	// Quarters: disk use as the scores come in.
	qctx, qstop := context.WithCancel(ctx)
	var quarters []float64
	sw.Add(1)
	go func() {
		defer sw.Done()
		next := 1
		for next < 4 {
			select {
			case <-qctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			if scored(js) >= uint64(next*n/4) {
				quarters = append(quarters, dirMB(store))
				next++
			}
		}
	}()
	start := time.Now()
	rep, err := replay.Run(ctx, js, replay.Options{Inputs: []string{pkl}, Timeout: 2 * time.Hour}, *r.o.Log)
	d := time.Since(start)
	qstop()
	sstop()
	sw.Wait()
	if err != nil {
		return m, fmt.Errorf("bench: memory replay of %d rows: %w", n, err)
	}
	if len(rep.Slices) != n || len(rep.Errors) > 0 {
		return m, fmt.Errorf("bench: memory replay of %d rows scored %d, %d errors", n, len(rep.Slices), len(rep.Errors))
	}
	time.Sleep(time.Second) // let the last acknowledgements remove their messages
	m.PeakRSSMB = procStatusMB("VmHWM") - m.BaseRSSMB
	m.PeakHeapMB, m.PeakPendingMB, m.PeakStoreMB = peakHeap, peakPending, max(peakStore, dirMB(store))
	m.StoreMB = append(quarters, dirMB(store))
	m.StreamsMB = map[string]float64{}
	for _, name := range []string{bus.StreamRaw, bus.StreamReady, bus.StreamMasks, bus.StreamScores, bus.StreamErrors, bus.StreamEvents} {
		if st, err := js.Stream(ctx, name); err == nil {
			m.StreamsMB[name] = float64(st.CachedInfo().State.Bytes) / 1e6
		}
	}
	m.SlicesPerS = float64(n) / d.Seconds()
	return m, nil
}

// scored is the number of messages on SCORES.
func scored(js jetstream.JetStream) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, bus.StreamScores)
	if err != nil {
		return 0
	}
	return st.CachedInfo().State.Msgs
}

// resetPeakRSS resets the process's VmHWM to its current RSS (Linux).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// procStatusMB reads a kB field of /proc/self/status in MB (0 elsewhere).
func procStatusMB(field string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb * 1024 / 1e6
			}
		}
	}
	return 0
}

// dirMB is the disk use of the files under dir, in MB.
func dirMB(dir string) float64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return float64(total) / 1e6
}

// writeHeapProfile writes the in-use heap profile to path (for finding
// where the peak goes: set LUNGSEG_BENCH_HEAP_PROFILE=PREFIX).
func writeHeapProfile(path string) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	_ = pprof.Lookup("heap").WriteTo(f, 0)
}
