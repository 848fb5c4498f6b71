package ingest_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/formats"
	"github.com/lungseg/lungseg/ingest/pngpair"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/stage"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

type resolver struct{}

func (resolver) Resolve(n []string) ([]string, error) { return n, nil }

type recorder struct {
	outs  []stage.Out
	fails []stage.Failure
}

func (r *recorder) Emit(_ context.Context, o stage.Out) error { r.outs = append(r.outs, o); return nil }
func (r *recorder) Fail(_ context.Context, f stage.Failure) error {
	r.fails = append(r.fails, f)
	return nil
}

// TestJobGivesEverySliceItsOwnID reads a folder where a DICOM file and a
// PNG pair share a stem, plus a file no format knows: every readable
// slice gets a distinct id, and the job ends with an IngestDone.
func TestJobGivesEverySliceItsOwnID(t *testing.T) {
	dir := t.TempDir()
	hu := imgx.NewHU(16, 16)
	for _, id := range []string{"a", "b"} {
		if err := pngpair.Write(dir, id, hu, imgx.NewMask(16, 16)); err != nil {
			t.Fatal(err)
		}
	}
	// "a.dcm": not a valid DICOM, but its id collides with the pair "a".
	if err := os.WriteFile(filepath.Join(dir, "a.dcm"), []byte("not dicom"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("skipped"), 0o644); err != nil {
		t.Fatal(err)
	}
	job, _ := proto.Marshal(&lungsegv1.IngestJob{ReplayId: "r", Path: dir, Models: []string{"m"}})
	st := &ingest.Stage{Formats: formats.All(), Models: resolver{}}
	var r recorder
	if err := st.Process(context.Background(), &stage.Msg{Data: job}, &r); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	var done *lungsegv1.IngestDone
	for _, o := range r.outs {
		switch o.Subject {
		case bus.SubjRaw:
			if ids[o.SliceID] {
				t.Errorf("id %s published twice", o.SliceID)
			}
			ids[o.SliceID] = true
		case bus.IngestedSubject("r"):
			done = &lungsegv1.IngestDone{}
			_ = proto.Unmarshal(o.Data, done)
		}
	}
	if len(ids) != 2 || len(r.fails) != 1 {
		t.Fatalf("slices %v, failures %+v", ids, r.fails)
	}
	if ids[r.fails[0].SliceID] {
		t.Errorf("the broken a.dcm got id %q, shared with a slice", r.fails[0].SliceID)
	}
	if done == nil || done.Slices != 2 || done.Rejected != 1 {
		t.Fatalf("done %+v", done)
	}
}

// TestJobReadsLinkedFolder gives a job a symbolic link to a folder of PNG
// pairs (as a folder of links to patient folders gives): its slices are
// read, with ids relative to the folder.
func TestJobReadsLinkedFolder(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	for _, id := range []string{"a", "b"} {
		if err := pngpair.Write(data, id, imgx.NewHU(16, 16), imgx.NewMask(16, 16)); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(data, link); err != nil {
		t.Skipf("no symbolic links here: %v", err)
	}
	job, _ := proto.Marshal(&lungsegv1.IngestJob{ReplayId: "r", Path: link, Models: []string{"m"}})
	var r recorder
	if err := (&ingest.Stage{Formats: formats.All(), Models: resolver{}}).Process(context.Background(), &stage.Msg{Data: job}, &r); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, o := range r.outs {
		if o.Subject == bus.SubjRaw {
			ids[o.SliceID] = true
		}
	}
	if len(ids) != 2 || !ids["a"] || !ids["b"] || len(r.fails) != 0 {
		t.Fatalf("slices %v, failures %+v", ids, r.fails)
	}
}
