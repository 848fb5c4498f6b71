package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ErrUnknownFormat reports an input file no reader recognises.
var ErrUnknownFormat = errors.New("ingest: unknown input format")

// Options are the per-job settings a reader may use.
type Options struct {
	// Root is the folder slice ids are relative to.
	Root string
	// MasksDir holds ground-truth PNGs for DICOM inputs.
	MasksDir string
}

// Format is one input format: Match looks at the file name and its first
// bytes (up to 132, enough for the DICOM preamble), Read emits its slices.
type Format struct {
	Name string
	// LocalIDs marks formats whose slice ids are local to the file (pickle
	// row numbers): inside a folder they are prefixed with the file's
	// relative path.
	LocalIDs bool
	Match    func(name string, head []byte) bool
	Read     func(ctx context.Context, path string, o Options, fn EmitFunc) error
}

// HeadSize is how many leading bytes Match is given.
const HeadSize = 132

// HasExt reports whether name ends with one of exts (case-insensitive).
func HasExt(name string, exts ...string) bool {
	l := strings.ToLower(name)
	for _, e := range exts {
		if strings.HasSuffix(l, e) {
			return true
		}
	}
	return false
}

// IsDICOM reports whether head holds the DICOM preamble's "DICM" marker.
func IsDICOM(head []byte) bool {
	return len(head) >= 132 && bytes.Equal(head[128:132], []byte("DICM"))
}

func readHead(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, HeadSize)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:n], nil
}

func match(formats []Format, path string) (*Format, error) {
	head, err := readHead(path)
	if err != nil {
		return nil, err
	}
	name := filepath.Base(path)
	for i := range formats {
		if formats[i].Match(name, head) {
			return &formats[i], nil
		}
	}
	return nil, nil
}

// Walk reads one input: a file, or a folder whose files are read in
// lexical order (files no format recognises, such as mask PNGs, are
// skipped). Problems with one file are emitted as an Item with Err set and
// the walk goes on; Walk returns an error only when ctx ends or fn fails.
func Walk(ctx context.Context, formats []Format, path, masksDir string, fn EmitFunc) error {
	st, err := os.Stat(path)
	if err != nil {
		return fn(Item{Meta: metaID(filepath.Base(path)), Err: fmt.Errorf("ingest: %w", err)})
	}
	if !st.IsDir() {
		f, err := match(formats, path)
		if err != nil || f == nil {
			if err == nil {
				err = fmt.Errorf("%w: %s", ErrUnknownFormat, filepath.Base(path))
			}
			return fn(Item{Meta: metaID(filepath.Base(path)), Err: err})
		}
		return readOne(ctx, f, path, "", Options{Root: filepath.Dir(path), MasksDir: masksDir}, fn)
	}
	// A folder given as a symbolic link is read at its target (WalkDir
	// does not follow a linked root, which would list no file at all).
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return fn(Item{Meta: metaID(filepath.Base(path)), Err: fmt.Errorf("ingest: listing %s: %w", path, err)})
	}
	sort.Strings(files)
	for _, p := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := match(formats, p)
		rel, _ := filepath.Rel(path, p)
		if err != nil {
			if ferr := fn(Item{Meta: metaID(rel), Err: fmt.Errorf("ingest: %w", err)}); ferr != nil {
				return ferr
			}
			continue
		}
		if f == nil {
			continue
		}
		prefix := ""
		if f.LocalIDs {
			prefix = filepath.ToSlash(strings.TrimSuffix(rel, filepath.Ext(rel))) + "/"
		}
		if err := readOne(ctx, f, p, prefix, Options{Root: path, MasksDir: masksDir}, fn); err != nil {
			return err
		}
	}
	return nil
}

// errStop marks an error returned by fn, which must stop the walk.
type errStop struct{ err error }

func (e errStop) Error() string { return e.err.Error() }
func (e errStop) Unwrap() error { return e.err }

// readOne reads one file, prefixing the ids of its items with prefix.
func readOne(ctx context.Context, f *Format, path, prefix string, o Options, fn EmitFunc) error {
	wrapped := func(it Item) error {
		if it.Meta != nil {
			it.Meta.Id = prefix + it.Meta.Id
		}
		if err := fn(it); err != nil {
			return errStop{err}
		}
		return nil
	}
	err := f.Read(ctx, path, o, wrapped)
	var stop errStop
	switch {
	case err == nil:
		return nil
	case errors.As(err, &stop):
		return stop.err
	case ctx.Err() != nil:
		return ctx.Err()
	default:
		// The file failed as a whole (e.g. a truncated pickle): report it
		// under its relative path and go on with the next file.
		rel, rerr := filepath.Rel(o.Root, path)
		if rerr != nil {
			rel = filepath.Base(path)
		}
		return fn(Item{Meta: metaID(strings.TrimSuffix(rel, filepath.Ext(rel))), Err: fmt.Errorf("ingest: reading %s as %s: %w", rel, f.Name, err)})
	}
}
