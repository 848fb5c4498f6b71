package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
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

// ReadFunc reads the file at path and emits its slices, in order, to fn.
type ReadFunc func(ctx context.Context, path string, o Options, fn EmitFunc) error

// Format is one input format: Match looks at the file name and its first
// bytes (up to 132, enough for the DICOM preamble), Read emits its slices.
type Format struct {
	Name string
	// LocalIDs marks formats whose slice ids are local to the file (pickle
	// row numbers): inside a folder they are prefixed with the file's
	// relative path.
	LocalIDs bool
	Match    func(name string, head []byte) bool
	// Read emits items whose pixels (Item.HU, Item.Mask) are fresh memory,
	// fn's to keep.
	Read ReadFunc
	// Reusing, when not nil, returns a reader like Read that may reuse
	// the memory of the pixels it emits from one item to the next, its own
	// file's or a later one's: the Item.HU passed to fn is valid only until
	// fn returns. Only a walk whose fn copies or drops the pixels before it
	// returns uses it (the ingest stage's: see Stage); it makes one reader
	// per walk, used from the walk's goroutine alone. Walk uses Read.
	Reusing func() ReadFunc
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

// errStop marks an error returned by fn, which must stop the walk.
type errStop struct{ err error }

func (e errStop) Error() string { return e.err.Error() }
func (e errStop) Unwrap() error { return e.err }

// readers picks the reader of each format for one walk: Format.Read, or,
// in a walk whose fn keeps no pixels after it returns (reuse), the one
// reader per format that Format.Reusing makes on first use, kept for the
// rest of the walk.
type readers struct {
	reuse bool
	made  map[*Format]ReadFunc
}

func (r *readers) of(f *Format) ReadFunc {
	if !r.reuse || f.Reusing == nil {
		return f.Read
	}
	read, ok := r.made[f]
	if !ok {
		if r.made == nil {
			r.made = map[*Format]ReadFunc{}
		}
		read = f.Reusing()
		r.made[f] = read
	}
	return read
}

// readOne reads one file with read (f's), prefixing the ids of its items
// with prefix.
func readOne(ctx context.Context, f *Format, read ReadFunc, path, prefix string, o Options, fn EmitFunc) error {
	wrapped := func(it Item) error {
		if it.Meta != nil {
			it.Meta.Id = prefix + it.Meta.Id
		}
		if err := fn(it); err != nil {
			return errStop{err}
		}
		return nil
	}
	err := read(ctx, path, o, wrapped)
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
