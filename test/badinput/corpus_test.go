// Package badinput holds the bad-input corpus in one table: broken or
// hostile DICOM, pickle, PNG and protobuf inputs, each with the error it
// must produce. TestCorpusDecoders runs each through its decoder (the
// ingest readers, the preprocess and score processors); TestCorpusPipeline
// replays all of them through the real pipeline on JetStream and checks
// that each gives an error event on the errors subject while the good
// slices around them are still scored. The fuzz targets of the stage
// processors are seeded from the same fixtures.
//
// Fixtures: ingest/dicomio/testdata (make_fixtures.py), ingest/pickle/testdata
// (make_fixtures.py), and testdata/ here (make_fixtures.go).
package badinput

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/phantom"
	"github.com/lungseg/lungseg/pkg/pipeline"
	"github.com/lungseg/lungseg/pkg/replay"
	"github.com/lungseg/lungseg/pkg/stage"
	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/preprocess"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"google.golang.org/protobuf/proto"
)

// Where a fixture enters the pipeline.
const (
	viaIngest     = "ingest"     // a file in a replayed folder
	viaPreprocess = "preprocess" // a Slice message on lung.slices.raw
	viaScore      = "score"      // a ModelOutput on lung.masks.<model>
)

// fixture is one kind of bad input.
type fixture struct {
	path string // relative to the repository root; for gen, the name to make
	via  string
	want string // a piece of the error message
	// gen makes the input in dir under the name path (what cannot be
	// committed: named pipes, links to devices, trees over PATH_MAX) and
	// returns the path to give ingest.
	gen func(t testing.TB, dir, name string) string
}

// corpus lists every kind of bad input.
var corpus = []fixture{
	// DICOM (ingest/dicomio/testdata/make_fixtures.py).
	{"ingest/dicomio/testdata/truncated.dcm", viaIngest, "needs 384 bytes but the file has", nil},
	{"ingest/dicomio/testdata/truncated_header.dcm", viaIngest, "file meta header needs", nil},
	{"ingest/dicomio/testdata/huge_length.dcm", viaIngest, "needs 4294967280 bytes", nil},
	{"ingest/dicomio/testdata/huge_rows.dcm", viaIngest, "exceeds the 4096-pixel limit", nil},
	{"ingest/dicomio/testdata/short_pixels.dcm", viaIngest, "pixel data has 352 bytes, want 384", nil},
	{"ingest/dicomio/testdata/no_preamble.dcm", viaIngest, "no 128-byte preamble", nil},
	{"ingest/dicomio/testdata/non_ct.dcm", viaIngest, "modality is MR, not CT", nil},
	{"ingest/dicomio/testdata/nonimage.dcm", viaIngest, "no pixel data element", nil},
	{"ingest/dicomio/testdata/rgb.dcm", viaIngest, "3 samples per pixel", nil},
	{"ingest/dicomio/testdata/deflate.dcm", viaIngest, "is not supported", nil},
	{"ingest/dicomio/testdata/undefined_date.dcm", viaIngest, "has an undefined length", nil},
	{"ingest/dicomio/testdata/hu_intercept_huge.dcm", viaIngest, "map every stored value to 9.99967232e+08..1.000032767e+09 HU, outside the int16 range", nil},
	{"ingest/dicomio/testdata/spacing_huge.dcm", viaIngest, `PixelSpacing 1e+308\1e+308 mm is outside 0.01..50 mm`, nil},
	// Pickles (ingest/pickle/testdata/make_fixtures.py).
	{"ingest/pickle/testdata/broken_unknown_class.pkl", viaIngest, "not on the al", nil},
	{"ingest/pickle/testdata/broken_truncated.pkl", viaIngest, "truncated", nil},
	{"ingest/pickle/testdata/broken_not_frame.pkl", viaIngest, "not a DataFrame", nil},
	{"ingest/pickle/testdata/broken_missing_column.pkl", viaIngest, "no hu_array_old column", nil},
	{"ingest/pickle/testdata/broken_huge_shape.pkl", viaIngest, "exceeds the 4096-pixel limit", nil},
	{"ingest/pickle/testdata/broken_mask_shape.pkl", viaIngest, "mask is 8×8 but hu_array_old is 16×16", nil},
	{"ingest/pickle/testdata/broken_nan.pkl", viaIngest, "non-finite HU value NaN", nil},
	{"ingest/pickle/testdata/broken_ndim3.pkl", viaIngest, "is not 2-D", nil},
	{"ingest/pickle/testdata/broken_cell_none.pkl", viaIngest, "cell is a None", nil},
	{"ingest/pickle/testdata/broken_mask_values.pkl", viaIngest, "decoding row 1 (id 1): pickle: bad array cell: mask value 0.5 at pixel 35 (row 2, col 3) is not 0 or 1", nil},
	{"ingest/pickle/testdata/broken_hu_range.pkl", viaIngest, "every HU value is outside the int16 range", nil},
	{"ingest/pickle/testdata/broken_duplicate_mask.pkl", viaIngest, "column mask appears 2 times", nil},
	{"ingest/pickle/testdata/broken_str_data.pkl", viaIngest, "array data is a str with a character above U+00FF", nil},
	// Not regular files and unlistable folders (made by the test).
	{"fifo_input.dcm", viaIngest, "is a named pipe (FIFO)", makeFIFO},
	{"dangling_link.dcm", viaIngest, "dangling symbolic link to no-such-file.dcm", makeDangling},
	{"devzero_link.dcm", viaIngest, "/dev/zero", makeDevZero},
	{"loop_link.dcm", viaIngest, "loop of links", makeLinkLoop},
	{"deep_folder", viaIngest, "file name too long", makeDeepFolder},
	// PNG pairs (testdata/make_fixtures.go).
	{"test/badinput/testdata/png/png_truncated_image.png", viaIngest, "unexpected EOF", nil},
	{"test/badinput/testdata/png/png_huge_ihdr_image.png", viaIngest, "exceeds the 4096-pixel limit", nil},
	{"test/badinput/testdata/png/png_notpng_image.png", viaIngest, "not a PNG file", nil},
	{"test/badinput/testdata/png/png_rgb_image.png", viaIngest, "must be 16-bit grayscale", nil},
	{"test/badinput/testdata/png/png_wrongmask_image.png", viaIngest, "mask is 8×8 but the image is 16×16", nil},
	// Protobuf messages (testdata/make_fixtures.go).
	{"test/badinput/testdata/proto/slice_truncated.bin", viaPreprocess, "decoding slice", nil},
	{"test/badinput/testdata/proto/slice_no_meta.bin", viaPreprocess, "without metadata", nil},
	{"test/badinput/testdata/proto/slice_short_pixels.bin", viaPreprocess, "100 bytes for 64×64", nil},
	{"test/badinput/testdata/proto/slice_huge_dims.bin", viaPreprocess, "exceeds the 4096-pixel limit", nil},
	{"test/badinput/testdata/proto/slice_negative_dims.bin", viaPreprocess, "slice_negative_dims", nil},
	{"test/badinput/testdata/proto/slice_bad_mask.bin", viaPreprocess, "mask", nil},
	{"test/badinput/testdata/proto/slice_unknown_model.bin", viaPreprocess, "unknown model", nil},
	{"test/badinput/testdata/proto/slice_wrong_wiretype.bin", viaPreprocess, "without metadata", nil},
	{"test/badinput/testdata/proto/slice_length_overflow.bin", viaPreprocess, "decoding slice", nil},
	{"test/badinput/testdata/proto/slice_random_bytes.bin", viaPreprocess, "decoding slice", nil},
	{"test/badinput/testdata/proto/output_no_meta.bin", viaScore, "without slice metadata", nil},
	{"test/badinput/testdata/proto/output_prob_short.bin", viaScore, "probability map", nil},
	{"test/badinput/testdata/proto/output_huge_dims.bin", viaScore, "exceeds the 4096-pixel limit", nil},
	{"test/badinput/testdata/proto/output_huge_slice.bin", viaScore, "exceeds the 4096-pixel limit", nil},
	{"test/badinput/testdata/proto/output_bad_truth.bin", viaScore, "truth", nil},
	{"test/badinput/testdata/proto/output_truncated.bin", viaScore, "decoding model output", nil},
}

// recorder is an Emitter that keeps what a processor emits.
type recorder struct {
	mu    sync.Mutex
	outs  []stage.Out
	fails []stage.Failure
}

func (r *recorder) Emit(_ context.Context, o stage.Out) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outs = append(r.outs, o)
	return nil
}

func (r *recorder) Fail(_ context.Context, f stage.Failure) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fails = append(r.fails, f)
	return nil
}

// cards serves the tiny test model's card.
type cards map[string]*model.Card

func (c cards) Get(name string) (*model.Card, error) {
	if k, ok := c[name]; ok {
		return k, nil
	}
	return nil, model.ErrUnknownModel
}

func tinyCard(t testing.TB, root string) *model.Card {
	t.Helper()
	c, err := model.LoadCard(filepath.Join(root, "segment", "testdata", "tiny"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// process runs one message through a stage processor.
func process(t testing.TB, p stage.Processor, data []byte) (*recorder, error) {
	rec := &recorder{}
	err := p.Process(context.Background(), &stage.Msg{Subject: "fixture", Data: data, SliceID: "fixture", ReplayID: "r", Log: zerolog.Nop()}, rec)
	return rec, err
}

// TestCorpusDecoders checks the error each fixture gives at its decoder.
func TestCorpusDecoders(t *testing.T) {
	root := testenv.RepoRoot(t)
	kinds := map[string]int{}
	pre := &preprocess.Stage{Cards: cards{"tiny": tinyCard(t, root)}, Defaults: []string{"tiny"}}
	for _, fx := range corpus {
		t.Run(filepath.Base(fx.path), func(t *testing.T) {
			path := filepath.Join(root, fx.path)
			if fx.gen != nil {
				path = fx.gen(t, t.TempDir(), fx.path)
			}
			var msgs []string
			switch fx.via {
			case viaIngest:
				kinds[strings.TrimPrefix(filepath.Ext(fx.path), ".")]++
				good := 0
				err := ingest.Walk(context.Background(), formats.All(), path, "", func(it ingest.Item) error {
					if it.Err != nil {
						msgs = append(msgs, it.Err.Error())
					} else {
						good++
					}
					return nil
				})
				if err != nil {
					msgs = append(msgs, err.Error())
				}
			default:
				kinds["proto"]++
				data, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				var p stage.Processor = pre
				if fx.via == viaScore {
					p = score.Stage{}
				}
				rec, err := process(t, p, data)
				for _, f := range rec.fails {
					msgs = append(msgs, f.Err.Error())
				}
				if err == nil && len(rec.fails) == 0 {
					t.Fatalf("accepted; emitted %d messages", len(rec.outs))
				}
				if err != nil {
					if !stage.IsPermanent(err) {
						t.Errorf("error %q is not permanent: it would be retried", err)
					}
					msgs = append(msgs, err.Error())
				}
			}
			if len(msgs) == 0 {
				t.Fatal("no error")
			}
			found := false
			for _, m := range msgs {
				found = found || strings.Contains(m, fx.want)
			}
			if !found {
				t.Errorf("errors %q lack %q", msgs, fx.want)
			}
		})
	}
	total := 0
	for _, n := range kinds {
		total += n
	}
	if total < 20 {
		t.Errorf("%d kinds of bad input, want at least 20", total)
	}
	t.Logf("corpus: %v", kinds)
}

// registry opens a registry holding the tiny test model.
func registry(t *testing.T) *model.Registry {
	t.Helper()
	reg, err := model.OpenRegistry(testenv.TinyRegistry(t))
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// TestCorpusPipeline replays the file fixtures mixed with good phantom
// slices through every stage, then injects the protobuf fixtures on the
// stage subjects, and checks that each yields an error event while every
// good slice is scored.
func TestCorpusPipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole pipeline")
	}
	root := testenv.RepoRoot(t)
	env := bustest.Start(t)
	reg := registry(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pctx, stop := context.WithCancel(ctx)
	perr := make(chan error, 1)
	go func() {
		perr <- pipeline.Run(pctx, env.JS, pipeline.Config{Registry: reg, Formats: formats.All()}, zerolog.Nop())
	}()
	defer func() {
		stop()
		if err := <-perr; err != nil {
			t.Error(err)
		}
	}()

	in := filepath.Join(t.TempDir(), "in")
	if err := os.MkdirAll(in, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, fx := range corpus {
		if fx.via != viaIngest {
			continue
		}
		if fx.gen != nil {
			fx.gen(t, in, fx.path)
			continue
		}
		for _, src := range companions(filepath.Join(root, fx.path)) {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(in, filepath.Base(src)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	const nGood = 4
	if err := phantom.WritePNG(in, phantom.Generate(3, nGood, phantom.Options{Rows: 64, Cols: 64})); err != nil {
		t.Fatal(err)
	}
	// A link to a good pair is read like the pair; inputs accepted with a
	// warning carry it into the report's slice entry.
	for _, part := range []string{"_image.png", "_mask.png"} {
		if err := os.Symlink("slice0001"+part, filepath.Join(in, "linked"+part)); err != nil {
			t.Fatal(err)
		}
	}
	warned := map[string]string{
		"broken_labels/1":   "label1 is an int (3), not a str; used as text",
		"broken_labels/2":   "label1 is None: the slice has no label",
		"broken_hu_range/1": "hu_array_old: 2 of 256 HU values outside the int16 range clamped to it",
		"hu_unsigned_max":   "3 of 192 pixels outside the int16 HU range clamped to it",
	}
	for _, src := range []string{"ingest/pickle/testdata/broken_labels.pkl", "ingest/dicomio/testdata/hu_unsigned_max.dcm"} {
		b, err := os.ReadFile(filepath.Join(root, src))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(in, filepath.Base(src)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := replay.Run(ctx, env.JS, replay.Options{Inputs: []string{in}, Models: []string{"tiny"}}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	scored := map[string]bool{}
	for _, s := range rep.Slices {
		scored[s.ID] = true
	}
	for i := 1; i <= nGood; i++ {
		if id := "slice000" + string(rune('0'+i)); !scored[id] {
			t.Errorf("good slice %s not scored (scored: %v)", id, keys(scored))
		}
	}
	if !scored["linked"] {
		t.Errorf("the slice linked to a good pair was not scored (scored: %v)", keys(scored))
	}
	for id, w := range warned {
		found := false
		for _, s := range rep.Slices {
			if s.ID == id && strings.Contains(strings.Join(s.Warnings, "; "), w) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no scored slice with the warning %q", id, w)
		}
	}
	// The report does not wait for ingest's error events (IngestDone
	// counts them): read them from the errors stream.
	ingestErrs := readErrors(t, env.JS, bus.ErrorsSubject("ingest", rep.ReplayID), func(evs []*lungsegv1.ErrorEvent) bool {
		return int64(len(evs)) >= rep.Rejected
	})
	t.Logf("%d slices ingested, %d inputs rejected, %d ingest error events", rep.Ingested, rep.Rejected, len(ingestErrs))
	for _, fx := range corpus {
		if fx.via != viaIngest {
			continue
		}
		name := filepath.Base(fx.path)
		id := strings.TrimSuffix(strings.TrimSuffix(name, filepath.Ext(name)), "_image")
		found := false
		for _, e := range append(ingestErrs, reportErrors(rep)...) {
			if (e.Id == id || strings.HasPrefix(e.Id, id+"/")) && strings.Contains(e.Error, fx.want) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no error event with %q", name, fx.want)
		}
	}

	// Protobuf fixtures straight onto the stage subjects, then one good
	// slice after them.
	const rid = "badproto"
	want := map[string]fixture{}
	for _, fx := range corpus {
		if fx.via == viaIngest {
			continue
		}
		data, err := os.ReadFile(filepath.Join(root, fx.path))
		if err != nil {
			t.Fatal(err)
		}
		id := strings.TrimSuffix(filepath.Base(fx.path), ".bin")
		subject := bus.SubjRaw
		if fx.via == viaScore {
			subject = bus.MasksSubject("tiny")
		}
		want[id] = fx
		if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: subject, Data: data, SliceID: id, ReplayID: rid, Model: "tiny"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	good := phantom.Generate(4, 1, phantom.Options{Rows: 32, Cols: 32})[0]
	gs, err := ingest.SliceMessage(ingest.Item{Meta: &lungsegv1.SliceMeta{Id: "good-after", ReplayId: rid, Rows: 32, Cols: 32,
		SpacingRowMm: 0.7, SpacingColMm: 0.7, Models: []string{"tiny"}}, HU: good.HU, Mask: good.Mask})
	if err != nil {
		t.Fatal(err)
	}
	gb, _ := proto.Marshal(gs)
	if err := stage.Publish(ctx, env.JS, "test", stage.Out{Subject: bus.SubjRaw, Data: gb, SliceID: "good-after", ReplayID: rid}, nil); err != nil {
		t.Fatal(err)
	}
	byID := func(evs []*lungsegv1.ErrorEvent) map[string][]*lungsegv1.ErrorEvent {
		m := map[string][]*lungsegv1.ErrorEvent{}
		for _, ev := range evs {
			m[ev.Id] = append(m[ev.Id], ev)
		}
		return m
	}
	evs := readErrors(t, env.JS, bus.PrefixErrors+"*."+rid, func(evs []*lungsegv1.ErrorEvent) bool {
		got := byID(evs)
		for id, fx := range want {
			if !slices.ContainsFunc(got[id], func(e *lungsegv1.ErrorEvent) bool { return e.Stage == fx.via }) {
				return false
			}
		}
		return true
	})
	got := byID(evs)
	for id, fx := range want {
		ok := false
		for _, ev := range got[id] {
			// Other consumers of the same subject (findings) may report
			// the message too; the stage under test must.
			if ev.Stage == fx.via && ev.Permanent && strings.Contains(ev.Error, fx.want) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s: error events %v, want one of stage %s, permanent, mentioning %q", id, got[id], fx.via, fx.want)
		}
	}
	scores, err := env.JS.OrderedConsumer(ctx, bus.StreamScores, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.ScoresSubject("tiny", rid)}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := scores.Next(jetstream.FetchMaxWait(60 * time.Second))
	if err != nil {
		t.Fatalf("the good slice after the bad messages was not scored: %v", err)
	}
	var s lungsegv1.Score
	if err := proto.Unmarshal(m.Data(), &s); err != nil || s.Meta.GetId() != "good-after" {
		t.Fatalf("score %v, %v", s.Meta, err)
	}
}

// companions returns a fixture file with the files that go with it (the
// mask of a PNG pair).
func companions(path string) []string {
	if strings.HasSuffix(path, "_image.png") {
		return []string{path, strings.TrimSuffix(path, "_image.png") + "_mask.png"}
	}
	return []string{path}
}

func keys(m map[string]bool) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	b, _ := json.Marshal(out)
	return string(b)
}

// readErrors reads the error events on subject until done holds for them
// or 60 seconds pass.
func readErrors(t *testing.T, js jetstream.JetStream, subject string, done func([]*lungsegv1.ErrorEvent) bool) []*lungsegv1.ErrorEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, bus.StreamErrors, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var evs []*lungsegv1.ErrorEvent
	for !done(evs) && ctx.Err() == nil {
		b, err := c.Fetch(100, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			var ev lungsegv1.ErrorEvent
			if err := proto.Unmarshal(m.Data(), &ev); err != nil {
				t.Fatal(err)
			}
			evs = append(evs, &ev)
		}
	}
	return evs
}

// reportErrors turns a report's errors into events.
func reportErrors(rep *replay.Report) []*lungsegv1.ErrorEvent {
	var out []*lungsegv1.ErrorEvent
	for _, e := range rep.Errors {
		out = append(out, &lungsegv1.ErrorEvent{Id: e.ID, Stage: e.Stage, Error: e.Error})
	}
	return out
}

// makeFIFO makes a named pipe: opening it for reading would block until
// a writer came.
func makeFIFO(t testing.TB, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func link(t testing.TB, target, p string) string {
	t.Helper()
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func makeDangling(t testing.TB, dir, name string) string {
	return link(t, "no-such-file.dcm", filepath.Join(dir, name))
}

func makeDevZero(t testing.TB, dir, name string) string {
	return link(t, "/dev/zero", filepath.Join(dir, name))
}

// makeLinkLoop makes two links that point at each other.
func makeLinkLoop(t testing.TB, dir, name string) string {
	other := strings.TrimSuffix(name, filepath.Ext(name)) + "_b" + filepath.Ext(name)
	link(t, name, filepath.Join(dir, other))
	return link(t, other, filepath.Join(dir, name))
}

// makeDeepFolder makes dir/name/d…/d…/… deeper than PATH_MAX (4096
// bytes) with a file at the bottom, through file descriptors (os.Root),
// since no path can name it; it returns dir/name, whose walk must report
// the part it cannot list.
func makeDeepFolder(t testing.TB, dir, name string) string {
	t.Helper()
	top := filepath.Join(dir, name)
	if err := os.Mkdir(top, 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenRoot(top)
	if err != nil {
		t.Fatal(err)
	}
	d := strings.Repeat("d", 200)
	for range 25 { // 25 × 201 bytes
		if err := r.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := r.OpenRoot(d)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		r = next
	}
	defer r.Close()
	if err := r.WriteFile("deep.dcm", []byte("not even DICOM"), 0o644); err != nil {
		t.Fatal(err)
	}
	return top
}
