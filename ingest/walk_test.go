package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// txtFormat reads *.txt files as one slice each, with the file's relative
// path (without extension) as its id, so that these tests see exactly
// what the walk hands to the readers.
var txtFormat = []ingest.Format{{
	Name:  "txt",
	Match: func(name string, _ []byte) bool { return strings.HasSuffix(name, ".txt") },
	Read: func(_ context.Context, path string, o ingest.Options, fn ingest.EmitFunc) error {
		rel, _ := filepath.Rel(o.Root, path)
		if _, err := os.ReadFile(path); err != nil {
			return err
		}
		return fn(ingest.Item{Meta: &lungsegv1.SliceMeta{Id: strings.TrimSuffix(filepath.ToSlash(rel), ".txt")}})
	},
}}

// walk runs Walk with a time limit: a walk that blocks (in open() on a
// named pipe) fails the test instead of hanging it, and the pipe is then
// opened for writing so that the stuck open returns.
func walk(t *testing.T, path string) (good []string, bad map[string]string) {
	t.Helper()
	type result struct {
		good []string
		bad  map[string]string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		r := result{bad: map[string]string{}}
		r.err = ingest.Walk(context.Background(), txtFormat, path, "", func(it ingest.Item) error {
			if it.Err != nil {
				r.bad[it.Meta.Id] = it.Err.Error()
			} else {
				r.good = append(r.good, it.Meta.Id)
			}
			return nil
		})
		done <- r
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.good, r.bad
	case <-time.After(10 * time.Second):
		// Unblock an open() stuck on a pipe of the test folder.
		filepath.WalkDir(filepath.Dir(path), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type()&fs.ModeNamedPipe != 0 {
				if f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			}
			return nil
		})
		t.Fatal("Walk blocked for 10 s")
	}
	return nil, nil
}

func write(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
}

// TestWalkFIFOInput gives a named pipe as the input: Walk reports it at
// once, without opening it (which would block until a writer comes).
func TestWalkFIFOInput(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no named pipes in the file system")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "pipe.dcm")
	mkfifo(t, p)
	good, bad := walk(t, p)
	if len(good) != 0 || !strings.Contains(bad["pipe.dcm"], "named pipe") || !strings.Contains(bad["pipe.dcm"], p) {
		t.Fatalf("good %v, errors %v; want one error naming %s as a named pipe", good, bad, p)
	}
	// A link to a pipe, given as the input.
	symlink(t, p, filepath.Join(dir, "link.dcm"))
	if _, bad := walk(t, filepath.Join(dir, "link.dcm")); !strings.Contains(bad["link.dcm"], "named pipe") {
		t.Fatalf("errors %v, want the link reported as a named pipe", bad)
	}
	// OpenFile, which every reader opens its input with, refuses the pipe
	// without blocking too.
	if _, err := ingest.OpenFile(p); !errors.Is(err, ingest.ErrNotRegular) {
		t.Fatalf("OpenFile on a pipe: %v, want ErrNotRegular", err)
	}
}

// TestWalkFolderEntries checks what a folder walk does with each kind of
// entry: regular files and links to them are read, every other entry is
// reported under its relative path, and the rest of the folder is read.
func TestWalkFolderEntries(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("needs symbolic links and named pipes")
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.txt"))
	write(t, filepath.Join(dir, "sub", "b.txt"))
	write(t, filepath.Join(dir, "sub", "notes.md")) // no format: skipped
	symlink(t, "a.txt", filepath.Join(dir, "link.txt"))
	symlink(t, "../a.txt", filepath.Join(dir, "sub", "up.txt"))
	symlink(t, "missing.txt", filepath.Join(dir, "dangling.txt"))
	symlink(t, "/dev/zero", filepath.Join(dir, "zero.txt"))
	symlink(t, "loop2.txt", filepath.Join(dir, "loop1.txt"))
	symlink(t, "loop1.txt", filepath.Join(dir, "loop2.txt"))
	symlink(t, "sub", filepath.Join(dir, "dirlink"))
	mkfifo(t, filepath.Join(dir, "fifo.txt"))
	mkfifo(t, filepath.Join(dir, "sub", "fifo_mask.png"))

	good, bad := walk(t, dir)
	sort.Strings(good)
	if want := "a link sub/b sub/up"; strings.Join(good, " ") != want {
		t.Errorf("read %v, want %s", good, want)
	}
	wantBad := map[string]string{
		"dangling":      "dangling symbolic link to missing.txt",
		"zero":          "symbolic link to /dev/zero, a character device",
		"loop1":         "loop of links",
		"loop2":         "loop of links",
		"dirlink":       "symbolic link to the folder sub",
		"fifo":          "fifo.txt is a named pipe",
		"sub/fifo_mask": "sub/fifo_mask.png is a named pipe",
	}
	for id, frag := range wantBad {
		if !strings.Contains(bad[id], frag) {
			t.Errorf("%s: error %q, want %q", id, bad[id], frag)
		}
	}
	if len(bad) != len(wantBad) {
		t.Errorf("errors %v, want only %v", bad, wantBad)
	}
}

// TestWalkUnlistableSubfolder makes one sub-folder fail to list (the
// tests run as root, whom a mode of 700 does not stop, so the listing is
// replaced): the folder is reported and everything else is still read.
func TestWalkUnlistableSubfolder(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.txt"))
	write(t, filepath.Join(dir, "locked.v2", "secret.txt"))
	write(t, filepath.Join(dir, "partial", "p1.txt"))
	write(t, filepath.Join(dir, "partial", "p2.txt"))
	write(t, filepath.Join(dir, "z", "c.txt"))
	restore := ingest.SetReadDir(func(p string) ([]fs.DirEntry, error) {
		ents, err := ingest.ReadDir(p)
		switch filepath.Base(p) {
		case "locked.v2":
			return nil, &fs.PathError{Op: "open", Path: p, Err: syscall.EACCES}
		case "partial":
			return ents[:1], &fs.PathError{Op: "readdirent", Path: p, Err: syscall.EIO}
		}
		return ents, err
	})
	defer restore()
	good, bad := walk(t, dir)
	if want := "a partial/p1 z/c"; strings.Join(good, " ") != want {
		t.Errorf("read %v, want %s", good, want)
	}
	if !strings.Contains(bad["locked.v2"], "listing folder locked.v2") || !strings.Contains(bad["locked.v2"], "permission denied") {
		t.Errorf("locked.v2: error %q (errors %v)", bad["locked.v2"], bad)
	}
	if !strings.Contains(bad["partial"], "listing folder partial (the entries read before the failure are ingested)") {
		t.Errorf("partial: error %q", bad["partial"])
	}
	if len(bad) != 2 {
		t.Errorf("errors %v", bad)
	}

	// The input folder itself unlistable: one error for the input.
	restore2 := ingest.SetReadDir(func(p string) ([]fs.DirEntry, error) {
		return nil, &fs.PathError{Op: "open", Path: p, Err: syscall.EACCES}
	})
	defer restore2()
	good, bad = walk(t, dir)
	if len(good) != 0 || len(bad) != 1 || !strings.Contains(fmt.Sprint(bad), "permission denied") {
		t.Errorf("unlistable input: read %v, errors %v", good, bad)
	}
}

// MakeDeepFolder makes dir/d…/d…/… deeper than PATH_MAX (4096 bytes),
// with deep.txt at the bottom, through file descriptors (os.Root), since
// no path can name it. It returns the first component.
func makeDeepFolder(t *testing.T, dir string) string {
	t.Helper()
	name := strings.Repeat("d", 200)
	r, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	for range 25 { // 25 × 201 bytes
		if err := r.Mkdir(name, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := r.OpenRoot(name)
		r.Close()
		if err != nil {
			t.Fatal(err)
		}
		r = next
	}
	defer r.Close()
	if err := r.WriteFile("deep.txt", []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestWalkPathOverPathMax reads a folder with a sub-folder tree deeper
// than PATH_MAX, on the real listing: the part that cannot be named is
// reported, the rest is read.
func TestWalkPathOverPathMax(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("PATH_MAX of Linux")
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.txt"))
	write(t, filepath.Join(dir, "z.txt"))
	makeDeepFolder(t, dir)
	good, bad := walk(t, dir)
	if want := "a z"; strings.Join(good, " ") != want {
		t.Errorf("read %v, want %s", good, want)
	}
	if len(bad) != 1 {
		t.Fatalf("errors %v, want one", bad)
	}
	for id, msg := range bad {
		if !strings.HasPrefix(id, strings.Repeat("d", 200)+"/") || !strings.Contains(msg, "file name too long") {
			t.Errorf("error %s: %q, want the deep folder with ENAMETOOLONG", id, msg)
		}
	}
}
