package ingest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrOutsideRoots means an ingest job names a path outside the input
// roots the ingest stage was given.
var ErrOutsideRoots = errors.New("ingest: path outside the input roots")

// Roots are the folders ingest jobs may read under: a job naming any
// other path (or a masks folder elsewhere) is refused, so that a client
// that may publish jobs cannot make the stage read arbitrary server-side
// files. Paths are compared after resolving symbolic links. A nil *Roots
// allows every path; an empty one allows none.
type Roots struct {
	dirs []string
}

// NewRoots returns the roots of the given folders (made absolute, links
// resolved; a folder that does not exist yet is kept as written).
func NewRoots(dirs ...string) (*Roots, error) {
	r := &Roots{}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		abs, err := resolve(d)
		if err != nil {
			return nil, fmt.Errorf("ingest: input root %q: %w", d, err)
		}
		r.dirs = append(r.dirs, abs)
	}
	return r, nil
}

// Dirs returns the resolved root folders.
func (r *Roots) Dirs() []string { return append([]string(nil), r.dirs...) }

func resolve(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		return real, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	return filepath.Clean(abs), nil
}

// Check returns nil when path lies under one of the roots, and an error
// wrapping ErrOutsideRoots naming the path and the roots otherwise.
func (r *Roots) Check(path string) error {
	if r == nil {
		return nil
	}
	if len(r.dirs) == 0 {
		return fmt.Errorf("%w: %s (no input roots are configured: set input_roots in the configuration or --input-root)", ErrOutsideRoots, path)
	}
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%w: %s is not an absolute path", ErrOutsideRoots, path)
	}
	p, err := resolve(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrOutsideRoots, path, err)
	}
	for _, d := range r.dirs {
		if p == d || strings.HasPrefix(p, d+string(filepath.Separator)) || d == string(filepath.Separator) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is not under %s", ErrOutsideRoots, path, strings.Join(r.dirs, ", "))
}

// walker returns the walk of a job when its path and masks folder lie
// under the stage's roots, and otherwise a walk that reports the refusal
// as the job's one failed item. The walk lets the formats reuse pixel
// memory (walkReusing): Process's fn copies the pixels into the outgoing
// message and keeps no Item.HU.
func (s *Stage) walker(path, masksDir string) func(context.Context, []Format, string, string, EmitFunc) error {
	err := s.Roots.Check(path)
	if err == nil && masksDir != "" {
		err = s.Roots.Check(masksDir)
	}
	if err == nil {
		return walkReusing
	}
	return func(_ context.Context, _ []Format, path, _ string, fn EmitFunc) error {
		return fn(Item{Meta: metaID(filepath.Base(path)), Err: err})
	}
}
