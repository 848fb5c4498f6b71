package ingest_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
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

// TestJobOutsideRootsRefused gives the stage one input root: a job under
// it is read, a job naming another folder (or a masks folder elsewhere)
// publishes no slice and reports ErrOutsideRoots as a failure, and the
// job still ends with its IngestDone so the replay finishes.
func TestJobOutsideRootsRefused(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	for _, dir := range []string{root, outside} {
		if err := pngpair.Write(dir, "a", imgx.NewHU(16, 16), imgx.NewMask(16, 16)); err != nil {
			t.Fatal(err)
		}
	}
	roots, err := ingest.NewRoots(root)
	if err != nil {
		t.Fatal(err)
	}
	st := &ingest.Stage{Formats: formats.All(), Models: resolver{}, Roots: roots}
	for _, c := range []struct {
		name, path, masks string
		ok                bool
	}{
		{"inside", root, "", true},
		{"outside", outside, "", false},
		{"system file", "/etc/passwd", "", false},
		{"traversal", filepath.Join(root, "..", filepath.Base(outside)), "", false},
		{"masks outside", root, outside, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			job, _ := proto.Marshal(&lungsegv1.IngestJob{ReplayId: "r", Path: c.path, MasksDir: c.masks, Models: []string{"m"}})
			var r recorder
			if err := st.Process(context.Background(), &stage.Msg{Data: job}, &r); err != nil {
				t.Fatal(err)
			}
			var raw int
			var done *lungsegv1.IngestDone
			for _, o := range r.outs {
				switch o.Subject {
				case bus.SubjRaw:
					raw++
				case bus.IngestedSubject("r"):
					done = &lungsegv1.IngestDone{}
					_ = proto.Unmarshal(o.Data, done)
				}
			}
			if done == nil {
				t.Fatal("no IngestDone")
			}
			if c.ok {
				if raw != 1 || len(r.fails) != 0 {
					t.Fatalf("%d slices, failures %+v", raw, r.fails)
				}
				return
			}
			if raw != 0 || len(r.fails) != 1 || !errors.Is(r.fails[0].Err, ingest.ErrOutsideRoots) || done.Rejected != 1 {
				t.Fatalf("%d slices, failures %+v, done %+v; want the job refused", raw, r.fails, done)
			}
			if msg := r.fails[0].Err.Error(); !strings.Contains(msg, "outside the input roots") {
				t.Errorf("error %q does not say why", msg)
			}
		})
	}
}
