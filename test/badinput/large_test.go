package badinput

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/objref"
	"github.com/rs/zerolog"
)

// largeKind is a slice inside the advertised 4096-pixel limit whose
// messages exceed the 1 MiB payload limit at some hop: the pixels at
// ingest, the bit-packed mask (2 MiB at 4096², 1.1 MiB at 3000²), the lung
// field and truth on the model input and output, the predicted mask and
// probabilities on the score. Each must be scored, nothing lost. The
// fixtures are generated here (tens of MB of PNG): none is committed.
type largeKind struct {
	name       string
	rows, cols int
	mask       bool
}

// large lists the large-slice kinds of the corpus (issue 15: a 4096² or
// 3000² PNG pair with mask failed with "maximum payload exceeded" at
// ingest and the rest of its folder was never read; a 4096² slice without
// mask was lost at score).
var large = []largeKind{
	{"large_4096_mask", 4096, 4096, true},
	{"large_3000_mask", 3000, 3000, true},
	{"large_4096_nomask", 4096, 4096, false},
	{"large_4096x700_mask", 700, 4096, true},
}

// TestCorpusLargeSlices replays the large kinds followed by small good
// slices, in one folder, through every stage of the real pipeline on
// JetStream: every slice must be scored, with its whole truth, and no
// error reported; the raw, model-input, output and score messages of the
// large ones travel by object reference.
func TestCorpusLargeSlices(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline on 4096² slices")
	}
	env := bustest.Start(t)
	// Only the pipeline reads the work streams, so that what every stage
	// acknowledged leaves them (bustest keeps a durable that never does).
	for _, st := range bus.WorkStreams {
		if err := env.JS.DeleteConsumer(context.Background(), st, bustest.KeepDurable); err != nil {
			t.Fatal(err)
		}
	}
	reg := registry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	in := filepath.Join(t.TempDir(), "in")
	if err := os.MkdirAll(in, 0o755); err != nil {
		t.Fatal(err)
	}
	truth := map[string]int64{}
	for i, k := range large {
		s := phantom.Generate(int64(20+i), 1, phantom.Options{Rows: k.rows, Cols: k.cols})[0]
		if !k.mask {
			s.Mask = nil
		} else {
			truth[k.name] = int64(s.Mask.Count())
		}
		if err := pngpair.Write(in, k.name, s.HU, s.Mask); err != nil {
			t.Fatal(err)
		}
	}
	// The same through a pandas pickle: a 3000² row with its mask.
	pk := phantom.Generate(30, 1, phantom.Options{Rows: 3000, Cols: 3000})
	if err := phantom.WritePKL(filepath.Join(in, "large_3000.pkl"), pk); err != nil {
		t.Fatal(err)
	}
	pklTruth := int64(pk[0].Mask.Count())
	// Small slices after the large ones (slice0001... sort after
	// large_...): the probe lost every file after the first large one.
	const nSmall = 3
	small := phantom.Generate(7, nSmall, phantom.Options{Rows: 64, Cols: 64})
	if err := phantom.WritePNG(in, small); err != nil {
		t.Fatal(err)
	}
	for _, s := range small {
		truth[s.Name()] = int64(s.Mask.Count())
	}

	pctx, stop := context.WithCancel(ctx)
	perr := make(chan error, 1)
	go func() {
		perr <- pipeline.Run(pctx, env.JS, pipeline.Config{Registry: reg, Formats: formats.All()}, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	}()
	defer func() {
		stop()
		if err := <-perr; err != nil {
			t.Error(err)
		}
	}()
	start := time.Now()
	rep, err := replay.Run(ctx, env.JS, replay.Options{Inputs: []string{in}, Models: []string{"tiny"}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d slices scored in %.1fs, %d errors", len(rep.Slices), time.Since(start).Seconds(), len(rep.Errors))
	if len(rep.Errors) != 0 || rep.Rejected != 0 {
		t.Errorf("errors %+v, %d rejected", rep.Errors, rep.Rejected)
	}
	scored := map[string]replay.SliceResult{}
	for _, s := range rep.Slices {
		scored[s.ID] = s
	}
	for _, k := range large {
		s, ok := scored[k.name]
		switch {
		case !ok:
			t.Errorf("%s (%d×%d, mask %v) not scored", k.name, k.rows, k.cols, k.mask)
		case s.HasTruth != k.mask || s.Truth != truth[k.name]:
			t.Errorf("%s: has truth %v with %d pixels, want %v with %d", k.name, s.HasTruth, s.Truth, k.mask, truth[k.name])
		}
	}
	pklScored, ids := false, map[string]bool{}
	for id, s := range scored {
		ids[id] = true
		if strings.HasPrefix(id, "large_3000/") { // the row's index label
			pklScored = s.HasTruth && s.Truth == pklTruth
		}
	}
	if !pklScored {
		t.Errorf("the 3000² pickle row was not scored with its %d truth pixels (scored: %v)", pklTruth, keys(ids))
	}
	for _, s := range small {
		if r, ok := scored[s.Name()]; !ok || r.Truth != truth[s.Name()] {
			t.Errorf("small slice %s after the large ones: scored %v, truth %d of %d", s.Name(), ok, r.Truth, truth[s.Name()])
		}
	}
	if len(rep.Slices) != len(large)+1+nSmall {
		t.Errorf("%d slices scored, want %d", len(rep.Slices), len(large)+1+nSmall)
	}
	// The scores of the large slices came by reference; every other
	// object was released once its work stream's consumers had
	// acknowledged it, and only the scores' (kept for inspection) and the
	// pixels ingest stored itself are left to the bucket's TTL.
	scoreRefs := map[string]bool{}
	for _, m := range bustest.Fetch(t, env.JS, bus.StreamScores, bus.ScoresSubject("tiny", rep.ReplayID)) {
		if ref, err := objref.Parse(m.Data()); err == nil {
			scoreRefs[ref.Key] = true
		}
	}
	if len(scoreRefs) < 3 {
		t.Errorf("%d scores by reference, want at least the 3 of 4096² and 3000²", len(scoreRefs))
	}
	px, err := env.JS.ObjectStore(ctx, bus.PixelsBucket)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	bustest.Eventually(t, time.Minute, "objects of consumed messages released", func() bool {
		infos, err := px.List(ctx)
		if err != nil {
			return false
		}
		left = left[:0]
		for _, i := range infos {
			if strings.HasPrefix(i.Name, objref.KeyPrefix) && !scoreRefs[i.Name] {
				left = append(left, i.Name)
			}
		}
		return len(left) == 0
	})
}
