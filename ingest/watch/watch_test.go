package watch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/lungseg/lungseg/ingest/dicomweb"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
)

func TestWatchedFolder(t *testing.T) {
	env := bustest.Start(t)
	acc := &dicomweb.Acceptor{JS: env.JS, Models: []string{"m"}, Source: "watch", Log: zerolog.Nop()}
	dir := t.TempDir()
	w := &Watcher{Dir: dir, Log: zerolog.Nop(), Accept: func(ctx context.Context, name string, b []byte) (bool, error) {
		_, err := acc.Accept(ctx, name, b, "")
		var rej *dicomweb.Rejection
		return errors.As(err, &rej) && rej.Permanent, err
	}}
	ph := phantom.Generate(5, 2, phantom.Options{Rows: 32, Cols: 32, Series: true})
	for i, s := range ph {
		err := dicomwrite.WriteFile(filepath.Join(dir, "exam", s.Name()+".dcm"), dicomwrite.Series{StudyUID: s.StudyUID, SeriesUID: s.SeriesUID},
			dicomwrite.Instance{HU: s.HU, SpacingRowMm: 0.7, SpacingColMm: 0.7, InstanceNumber: i + 1, UID: s.InstanceUID})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "junk.dcm"), []byte("not dicom at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// First poll only notes the files (they may still be being written).
	if n, err := w.Poll(ctx); n != 0 || err != nil {
		t.Fatalf("first poll accepted %d (%v)", n, err)
	}
	if n, err := w.Poll(ctx); n != 2 || err != nil {
		t.Fatalf("second poll accepted %d (%v), want 2", n, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "exam", "*"))
	if len(left) != 0 {
		t.Errorf("accepted files left: %v", left)
	}
	cause, err := os.ReadFile(filepath.Join(dir, FailedDir, "junk.dcm.err"))
	if err != nil || !strings.Contains(string(cause), "not a DICOM Part 10 file") {
		t.Errorf("rejected file's cause: %q %v", cause, err)
	}
	ctx2, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, _ := env.JS.Stream(ctx2, bus.StreamRaw)
	info, _ := st.Info(ctx2)
	if info.State.Msgs != 2 {
		t.Errorf("%d slices in RAW, want 2", info.State.Msgs)
	}
	// The failed folder is not watched.
	if n, _ := w.Poll(ctx); n != 0 {
		t.Errorf("accepted %d from failed/", n)
	}
}

func TestWatchRetriesTransientFailures(t *testing.T) {
	dir := t.TempDir()
	calls := 0
	w := &Watcher{Dir: dir, Log: zerolog.Nop(), Accept: func(ctx context.Context, name string, b []byte) (bool, error) {
		calls++
		if calls == 1 {
			return false, errors.New("bus down")
		}
		return false, nil
	}}
	p := filepath.Join(dir, "a.dcm")
	os.WriteFile(p, []byte("x"), 0o644)
	w.Poll(context.Background())
	if n, _ := w.Poll(context.Background()); n != 0 {
		t.Fatal("accepted on a failing bus")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("file gone after a transient failure: %v", err)
	}
	if n, _ := w.Poll(context.Background()); n != 1 {
		t.Fatal("not retried")
	}
	// A growing file waits until it stops changing.
	os.WriteFile(p, []byte("x"), 0o644)
	w.Poll(context.Background())
	os.WriteFile(p, []byte("xy"), 0o644)
	if n, _ := w.Poll(context.Background()); n != 0 {
		t.Error("accepted a file that was still growing")
	}
	// Oversized files are rejected unread.
	w.MaxFileBytes = 1
	if n, _ := w.Poll(context.Background()); n != 0 {
		t.Error("accepted an oversized file")
	}
	if _, err := os.Stat(filepath.Join(dir, FailedDir, "a.dcm.err")); err != nil {
		t.Errorf("oversized file not moved to failed/: %v", err)
	}
}

// TestWatchLeavesUnreadableEntries puts a named pipe and a sub-folder
// deeper than PATH_MAX (so that it cannot be listed, even by root) in the
// watched folder: each is logged once, and the files beside them are
// still accepted.
func TestWatchLeavesUnreadableEntries(t *testing.T) {
	dir := t.TempDir()
	var logged strings.Builder
	var got []string
	w := &Watcher{Dir: dir, Log: zerolog.New(&logged), Accept: func(_ context.Context, name string, _ []byte) (bool, error) {
		got = append(got, name)
		return false, nil
	}}
	for _, name := range []string{"a.dcm", "z/b.dcm"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe.dcm"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	for range 25 { // 25 × 201 bytes: over PATH_MAX
		d := strings.Repeat("d", 200)
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
	r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for range 3 {
		if _, err := w.Poll(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(got, " ") != "a.dcm z/b.dcm" {
		t.Errorf("accepted %v, want a.dcm and z/b.dcm", got)
	}
	out := logged.String()
	if strings.Count(out, "pipe.dcm") != 1 || !strings.Contains(out, "not a regular file") {
		t.Errorf("log %s: want the pipe once", out)
	}
	if strings.Count(out, "file name too long") != 1 {
		t.Errorf("log %s: want the deep folder once", out)
	}
}
