package findings_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/ingest/pickle"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/internal/pipeline"
	"github.com/lungseg/lungseg/internal/replay"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/score/findings"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// TestReplayPickleSeries replays a 12-slice phantom series written as a
// Mendeley-style pickle (no series column) through the whole pipeline with
// an oracle segment stage (ground truth as prediction) and the findings
// stage at its default 60 s quiet period:
//
//   - without --series-per-input every row is its own "series": one
//     finding per slice and nodule section (issue 16's complaint);
//   - with it (replay.Options.SeriesPerInput) the rows are one series:
//     one finding per phantom nodule, at most one alert each, and the
//     replay flushes the series, so the nodules are in its report when
//     Run returns, long before the quiet period;
//   - the same pickle with a series_uid column groups its rows without
//     the option.
func TestReplayPickleSeries(t *testing.T) {
	env := bustest.Start(t)
	js := env.JS
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	reg, err := model.OpenRegistry(oracleRegistry(t))
	if err != nil {
		t.Fatal(err)
	}
	var ps []phantom.Slice
	var sizes []float64
	for seed := int64(20); ; seed++ {
		ps = phantom.Generate(seed, 12, phantom.Options{Rows: 192, Cols: 192, Series: true, MaxNodules: 3,
			IrregularFraction: -1, MinDiameterMm: 6, MaxDiameterMm: 20})
		sizes = largestSections(ps)
		if len(sizes) >= 2 && sectionsOf(ps) > len(sizes) {
			break
		}
		if seed > 80 {
			t.Fatal("no suitable phantom series")
		}
	}
	dir := t.TempDir()
	plain := filepath.Join(dir, "series.pkl")
	if err := phantom.WritePKL(plain, ps); err != nil {
		t.Fatal(err)
	}
	withCol := filepath.Join(dir, "with-column.pkl")
	f, err := os.Create(withCol)
	if err != nil {
		t.Fatal(err)
	}
	err = pickle.WriteFunc(f, len(ps), func(i int) (*pickle.Row, error) {
		r := ps[i].PickleRow()
		r.Series = "patient-7"
		return &r, nil
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	roots, err := ingest.NewRoots(dir)
	if err != nil {
		t.Fatal(err)
	}

	log := zerolog.Nop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// Every stage but segment, findings at its defaults (quiet 60 s).
	run(t, ctx, &wg, "pipeline", func(ctx context.Context) error {
		return pipeline.Run(ctx, js, pipeline.Config{Registry: reg, Formats: formats.All(), Defaults: []string{"oracle"},
			InputRoots: roots, Stages: []string{pipeline.Ingest, pipeline.Preprocess, pipeline.Score, pipeline.Findings}}, log)
	})
	oracleRunner, err := stage.New(js, stage.Config{Name: pipeline.Segment, Durable: "segment-oracle", Stream: bus.StreamReady,
		FilterSubjects: []string{bus.ReadySubject("oracle")}}, oracle{}, log)
	if err != nil {
		t.Fatal(err)
	}
	run(t, ctx, &wg, "oracle", oracleRunner.Run)

	alerts := func(rid string) int {
		st, err := js.Stream(ctx, findings.StreamAlerts)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(findings.PrefixAlerts+"*.*."+rid))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, c := range info.State.Subjects {
			n += int(c)
		}
		return n
	}
	replayOf := func(in string, perInput bool) (*replay.Report, time.Duration) {
		t.Helper()
		start := time.Now()
		rep, err := replay.Run(ctx, js, replay.Options{Inputs: []string{in}, Models: []string{"oracle"},
			SeriesPerInput: perInput, Timeout: 2 * time.Minute}, log)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Errors) != 0 || len(rep.Slices) != len(ps) {
			t.Fatalf("%s: %d slices, errors %+v", in, len(rep.Slices), rep.Errors)
		}
		return rep, time.Since(start)
	}

	// Without the option: one finding per nodule section, as before.
	rep, took := replayOf(plain, false)
	if !rep.FindingsComplete || len(rep.Nodules) <= len(sizes) {
		t.Errorf("without --series-per-input: %d findings (complete %v, %s), want one per section (%d sections of %d nodules)",
			len(rep.Nodules), rep.FindingsComplete, rep.FindingsNote, sectionsOf(ps), len(sizes))
	}
	for _, n := range rep.Nodules {
		if n.Slices != 1 || n.CompletedBy != findings.CompletedSingle {
			t.Errorf("without --series-per-input: nodule %s on %d slices, completed by %s", n.ID, n.Slices, n.CompletedBy)
		}
	}
	t.Logf("without the option: %d findings, %d alerts for %d nodules (%.1fs)", len(rep.Nodules), alerts(rep.ReplayID), len(sizes), took.Seconds())

	check := func(name string, rep *replay.Report, took time.Duration, series string) {
		t.Helper()
		if !rep.FindingsComplete || rep.FindingsNote != "" {
			t.Errorf("%s: findings not complete: %s", name, rep.FindingsNote)
		}
		// The quiet period is 60 s: only the flush can have made these.
		if took >= findings.DefaultConfig.QuietPeriod {
			t.Errorf("%s: the replay took %s, as long as the quiet period", name, took)
		}
		if len(rep.Nodules) != len(sizes) {
			t.Errorf("%s: %d findings, want one per phantom nodule: %d (%+v)", name, len(rep.Nodules), len(sizes), rep.Nodules)
		}
		alerting, multi := 0, 0
		for _, n := range rep.Nodules {
			if n.Series != series || n.CompletedBy != findings.CompletedFlush || !n.ThicknessAssumed {
				t.Errorf("%s: nodule %s: series %q, completed by %s, thickness assumed %v", name, n.ID, n.Series, n.CompletedBy, n.ThicknessAssumed)
			}
			if findings.AtLeast(n.Category, findings.LR4A) {
				alerting++
			}
			if n.Slices > 1 {
				multi++
			}
		}
		if multi == 0 {
			t.Errorf("%s: no nodule spans two slices", name)
		}
		if a := alerts(rep.ReplayID); a != alerting || a > len(sizes) {
			t.Errorf("%s: %d alerts for %d nodules (%d at LR4A or above)", name, a, len(sizes), alerting)
		}
		withFindings := 0
		for _, s := range rep.Slices {
			if s.Series != series || s.Category == "" {
				t.Errorf("%s: slice %s: series %q, category %q", name, s.ID, s.Series, s.Category)
			}
			if len(s.Findings) > 0 {
				withFindings++
				if c := s.Findings[0]; c.AreaMm2 <= 0 || c.DiameterMm <= 0 || !c.SpacingAssumed || c.MeanProb == nil || c.MeanHU == nil {
					t.Errorf("%s: slice %s: finding %+v", name, s.ID, c)
				}
			}
		}
		if withFindings == 0 {
			t.Errorf("%s: no slice has findings", name)
		}
		t.Logf("%s: %d findings, %d alerts for %d nodules (%.1fs)", name, len(rep.Nodules), alerts(rep.ReplayID), len(sizes), took.Seconds())
	}
	rep, took = replayOf(plain, true)
	check("--series-per-input", rep, took, "input:0:series.pkl")
	rep, took = replayOf(withCol, false)
	check("series_uid column", rep, took, "patient-7")
}

// sectionsOf counts the nodule sections of a phantom series: one per
// nodule and slice it shows on.
func sectionsOf(ps []phantom.Slice) int {
	n := 0
	for _, s := range ps {
		n += len(s.Nodules)
	}
	return n
}
