package ingest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestRoots(t *testing.T) {
	root := t.TempDir()
	other := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A link inside the root that points outside it.
	if err := os.Symlink(other, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	r, err := NewRoots(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		ok   bool
	}{
		{root, true},
		{filepath.Join(root, "a", "b"), true},
		{filepath.Join(root, "a", "missing.pkl"), true},
		{filepath.Join(root, "a", "..", "..", filepath.Base(other)), false},
		{other, false},
		{filepath.Join(root, "escape"), false},
		{"/etc/passwd", false},
		{root + "-sibling", false},
		{"relative/path", false},
	} {
		err := r.Check(c.path)
		if c.ok && err != nil {
			t.Errorf("%s: %v, want allowed", c.path, err)
		}
		if !c.ok && !errors.Is(err, ErrOutsideRoots) {
			t.Errorf("%s: %v, want ErrOutsideRoots", c.path, err)
		}
	}
	none, _ := NewRoots()
	if err := none.Check(root); !errors.Is(err, ErrOutsideRoots) {
		t.Errorf("no roots: %v, want refused", err)
	}
	var unrestricted *Roots
	if err := unrestricted.Check("/etc/passwd"); err != nil {
		t.Errorf("nil roots: %v", err)
	}
}
