package badinput

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/rs/zerolog"
)

// TestFIFOInputDoesNotBlockTheReplay gives a named pipe as one input of a
// replay, before a folder of good slices, as the outside probe did: ingest
// used to block in open() on the pipe, so the other input was never read
// and the process could not stop. The pipe must be reported on the errors
// subject, the other input's slices scored, and the pipeline must stop
// promptly afterwards.
func TestFIFOInputDoesNotBlockTheReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline")
	}
	env := bustest.Start(t)
	reg := registry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pctx, stop := context.WithCancel(ctx)
	perr := make(chan error, 1)
	go func() {
		perr <- pipeline.Run(pctx, env.JS, pipeline.Config{Registry: reg, Formats: formats.All()}, zerolog.Nop())
	}()
	dir := t.TempDir()
	fifo := makeFIFO(t, dir, "pipe.dcm")
	good := filepath.Join(dir, "good")
	if err := os.Mkdir(good, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := phantom.WritePNG(good, phantom.Generate(5, 2, phantom.Options{Rows: 32, Cols: 32})); err != nil {
		t.Fatal(err)
	}
	rep, err := replay.Run(ctx, env.JS, replay.Options{Inputs: []string{fifo, good}, Models: []string{"tiny"}, Timeout: time.Minute}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	scored := map[string]bool{}
	for _, s := range rep.Slices {
		scored[s.ID] = true
	}
	if !scored["good/slice0001"] || !scored["good/slice0002"] {
		t.Errorf("the folder after the pipe was not read: scored %v", keys(scored))
	}
	evs := readErrors(t, env.JS, bus.ErrorsSubject("ingest", rep.ReplayID), func(evs []*lungsegv1.ErrorEvent) bool { return len(evs) > 0 })
	found := false
	for _, e := range evs {
		found = found || (strings.HasPrefix(e.Id, "pipe") && strings.Contains(e.Error, fifo+" is a named pipe (FIFO)"))
	}
	if !found {
		t.Errorf("error events %v, want the pipe reported by path as a named pipe", evs)
	}
	start := time.Now()
	stop()
	select {
	case err := <-perr:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pipeline did not stop within 30 s")
	}
	t.Logf("pipeline stopped in %v", time.Since(start).Round(time.Millisecond))
}
