package ingest_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

// mixedDICOMFolder writes a folder of DICOM files whose walk order
// alternates sizes (512², the 12×16 fixtures, single- and multi-frame,
// native, RLE and JPEG Lossless, 96×80, 7×9), each with its own pixels,
// and one file that is not DICOM. It returns the folder and the slices
// dicomio.Read (fresh memory) gives, by id.
func mixedDICOMFolder(t *testing.T) (string, map[string][]int16) {
	t.Helper()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(19, 5))
	write := func(name string, rows, cols int) {
		hu := imgx.NewHU(rows, cols)
		for i := range hu.Pix {
			hu.Pix[i] = int16(rng.IntN(3000) - 1024)
		}
		s := dicomwrite.Series{StudyUID: dicomwrite.NewUID("study"), SeriesUID: dicomwrite.NewUID("series"), Intercept: -1024}
		in := dicomwrite.Instance{HU: hu, SpacingRowMm: 0.7, SpacingColMm: 0.7, InstanceNumber: 1, UID: dicomwrite.NewUID(name)}
		if err := dicomwrite.WriteFile(filepath.Join(dir, name), s, in); err != nil {
			t.Fatal(err)
		}
	}
	fixture := func(name, as string) {
		b, err := os.ReadFile(filepath.Join("dicomio", "testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, as), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("00_big.dcm", 512, 512)
	fixture("rle_multiframe.dcm", "01_rle_multiframe.dcm")
	write("02_mid.dcm", 96, 80)
	write("03_tiny.dcm", 7, 9)
	fixture("jpll_sv1_multiframe.dcm", "04_jpll_multiframe.dcm")
	write("05_big.dcm", 512, 512)
	if err := os.WriteFile(filepath.Join(dir, "06_garbage.dcm"), []byte("not DICOM"), 0o644); err != nil {
		t.Fatal(err)
	}
	fixture("ct_8bit.dcm", "07_8bit.dcm")
	fixture("ct_multiframe.dcm", "08_multiframe.dcm")
	write("09_big.dcm", 512, 512)

	want := map[string][]int16{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		err := dicomio.Read(context.Background(), filepath.Join(dir, e.Name()), dir, "", func(it ingest.Item) error {
			if it.Err == nil {
				want[it.Meta.Id] = it.HU.Pix
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(want) != 15 {
		t.Fatalf("%d slices in the folder, want 15", len(want))
	}
	return dir, want
}

// TestStageMessagesKeepTheirPixels: the ingest stage reads a job with
// reused pixel memory (a DICOM Decoder per walk); every message it
// emitted, checked after the whole job was read, holds its own slice's
// pixels, not a later file's.
func TestStageMessagesKeepTheirPixels(t *testing.T) {
	dir, want := mixedDICOMFolder(t)
	job, _ := proto.Marshal(&lungsegv1.IngestJob{ReplayId: "r", Path: dir, Models: []string{"m"}})
	var r recorder
	if err := (&ingest.Stage{Formats: formats.All(), Models: resolver{}}).Process(context.Background(), &stage.Msg{Data: job}, &r); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, o := range r.outs {
		if o.Subject != bus.SubjRaw {
			continue
		}
		var sl lungsegv1.Slice
		if err := proto.Unmarshal(o.Data, &sl); err != nil {
			t.Fatal(err)
		}
		hu, err := imgx.DecodeHU(int(sl.Meta.Rows), int(sl.Meta.Cols), sl.Hu)
		if err != nil {
			t.Fatal(err)
		}
		w, ok := want[sl.Meta.Id]
		if !ok {
			t.Errorf("unexpected slice %s", sl.Meta.Id)
			continue
		}
		if !slices.Equal(hu.Pix, w) {
			t.Errorf("slice %s: the message's pixels are not the file's", sl.Meta.Id)
		}
		seen++
	}
	if seen != len(want) || len(r.fails) != 1 || !strings.HasPrefix(r.fails[0].SliceID, "06_garbage") {
		t.Errorf("%d of %d slices published; failures %v", seen, len(want), r.fails)
	}
}

// TestWalkItemsAreTheCallers: Walk, which the replay report and the
// dataset builder use to keep items (a map of slices, worker goroutines),
// hands out fresh pixels: every item kept from the walk still holds its
// own file's pixels once the walk is over.
func TestWalkItemsAreTheCallers(t *testing.T) {
	dir, want := mixedDICOMFolder(t)
	var kept []ingest.Item
	err := ingest.Walk(context.Background(), formats.All(), dir, "", func(it ingest.Item) error {
		if it.Err == nil {
			kept = append(kept, it) // kept past fn's return, no copy
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(kept) != len(want) {
		t.Fatalf("%d items, want %d", len(kept), len(want))
	}
	for _, it := range kept {
		if !slices.Equal(it.HU.Pix, want[it.Meta.Id]) {
			t.Errorf("slice %s: a kept item's pixels changed during the walk", it.Meta.Id)
		}
	}
}

// TestWalkReusingMakesOneReaderPerWalk: the stage's walk reads every file
// of a format that offers Reusing with the one reader it made for the
// walk (a fresh one for the next walk), formats without it with Read;
// Walk never calls Reusing.
func TestWalkReusingMakesOneReaderPerWalk(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"a.r", "b.r", "c.r", "a.p", "b.p"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var log []string
	made := 0
	emit := func(tag string) ingest.ReadFunc {
		return func(_ context.Context, path string, _ ingest.Options, fn ingest.EmitFunc) error {
			log = append(log, tag+":"+filepath.Base(path))
			return fn(ingest.Item{Meta: &lungsegv1.SliceMeta{Id: filepath.Base(path)}})
		}
	}
	fs := []ingest.Format{
		{Name: "r", Match: func(n string, _ []byte) bool { return strings.HasSuffix(n, ".r") }, Read: emit("read"),
			Reusing: func() ingest.ReadFunc { made++; return emit(fmt.Sprintf("reuse%d", made)) }},
		{Name: "p", Match: func(n string, _ []byte) bool { return strings.HasSuffix(n, ".p") }, Read: emit("plain")},
	}
	nop := func(ingest.Item) error { return nil }
	for _, tc := range []struct {
		walk func(context.Context, []ingest.Format, string, string, ingest.EmitFunc) error
		want string
	}{
		{ingest.Walk, "plain:a.p read:a.r plain:b.p read:b.r read:c.r"},
		{ingest.WalkReusing, "plain:a.p reuse1:a.r plain:b.p reuse1:b.r reuse1:c.r"},
		{ingest.WalkReusing, "plain:a.p reuse2:a.r plain:b.p reuse2:b.r reuse2:c.r"},
		{ingest.Walk, "plain:a.p read:a.r plain:b.p read:b.r read:c.r"},
	} {
		log = nil
		if err := tc.walk(context.Background(), fs, dir, "", nop); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(log, " "); got != tc.want {
			t.Errorf("read %q, want %q", got, tc.want)
		}
	}
	if made != 2 {
		t.Errorf("Reusing called %d times for two reusing walks", made)
	}
}
