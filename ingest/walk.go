package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// ErrNotRegular reports an input that is not a regular file: a named pipe,
// a device, a socket, a symbolic link that leads nowhere or to one of
// those. Such inputs are never opened for reading (opening a named pipe
// blocks until a writer comes).
var ErrNotRegular = errors.New("ingest: not a regular file")

// OpenFile opens the regular file at path for reading without ever
// blocking: the open is non-blocking (a named pipe put in the file's place
// after it was listed does not wait for a writer) and the opened file is
// checked to be a regular file. Readers open their inputs with it.
func OpenFile(path string) (*os.File, error) {
	f, err := openNonBlocking(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s is a %s", ErrNotRegular, path, kind(st.Mode()))
	}
	return f, nil
}

// kind names a file mode's type for error messages.
func kind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "folder"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	}
	return "irregular file"
}

func readHead(path string) ([]byte, error) {
	f, err := OpenFile(path)
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

// readDir lists a folder, sorted by name. It returns the entries it could
// read along with the error when the listing fails part way. A variable
// so that the tests can make a folder unlistable (they run as root, whom
// permissions do not stop).
var readDir = func(path string) ([]fs.DirEntry, error) {
	f, err := openNonBlocking(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	return ents, err
}

// entry is one thing found in a folder: a regular file to read (or a
// symbolic link to one), or a problem to report under rel.
type entry struct {
	path, rel string
	err       error
	dir       bool // a folder: its id keeps any dot in its name
}

// Walk reads one input: a file, or a folder whose files are read in
// lexical order of their relative paths.
//
// Inside a folder, regular files that no format recognises (mask PNGs, a
// README) are skipped. A symbolic link to a regular file is read like the
// file, under the link's own path; every other entry that is not a regular
// file or a folder is reported, each as an Item with Err set under its
// relative path (without extension): a named pipe, socket or device, a
// dangling link, a link loop, a link to a folder (not followed) or to a
// non-regular file. A sub-folder that cannot be listed (no permission, a
// path over PATH_MAX, a folder that is its own ancestor) is reported the
// same way and the rest of the folder is still read. Nothing is opened in
// a way that can block: named pipes are never opened (see OpenFile).
//
// A folder given as a symbolic link is read at its target. Problems with
// one file are emitted as an Item with Err set and the walk goes on; Walk
// returns an error only when ctx ends or fn fails.
//
// The items' pixels are fresh memory, fn's to keep (Format.Read).
func Walk(ctx context.Context, formats []Format, path, masksDir string, fn EmitFunc) error {
	return walk(ctx, formats, path, masksDir, &readers{}, fn)
}

// walkReusing is Walk for an fn that keeps no pixels after it returns:
// the formats may reuse their memory (Format.Reusing), so Item.HU is
// valid only until fn returns.
func walkReusing(ctx context.Context, formats []Format, path, masksDir string, fn EmitFunc) error {
	return walk(ctx, formats, path, masksDir, &readers{reuse: true}, fn)
}

func walk(ctx context.Context, formats []Format, path, masksDir string, rd *readers, fn EmitFunc) error {
	st, err := os.Stat(path)
	if err != nil {
		return fn(Item{Meta: metaID(filepath.Base(path)), Err: fmt.Errorf("ingest: %w", linkError(path, err))})
	}
	if !st.IsDir() {
		if !st.Mode().IsRegular() {
			what := kind(st.Mode())
			if lst, err := os.Lstat(path); err == nil && lst.Mode()&fs.ModeSymlink != 0 {
				target, _ := os.Readlink(path)
				what = fmt.Sprintf("symbolic link to %s, a %s", target, what)
			}
			return fn(Item{Meta: metaID(filepath.Base(path)), Err: fmt.Errorf("%w: %s is a %s", ErrNotRegular, path, what)})
		}
		f, err := match(formats, path)
		if err != nil || f == nil {
			if err == nil {
				err = fmt.Errorf("%w: %s", ErrUnknownFormat, filepath.Base(path))
			} else {
				err = fmt.Errorf("ingest: %w", err)
			}
			return fn(Item{Meta: metaID(filepath.Base(path)), Err: err})
		}
		return readOne(ctx, f, rd.of(f), path, "", Options{Root: filepath.Dir(path), MasksDir: masksDir}, fn)
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	var ents []entry
	ents, rootErr := list(ctx, path, "", []os.FileInfo{st}, ents)
	if err := ctx.Err(); err != nil {
		return err
	}
	if rootErr != nil && len(ents) == 0 {
		// Nothing could be listed at all: one error for the input.
		return fn(Item{Meta: metaID(filepath.Base(path)), Err: fmt.Errorf("ingest: listing %s: %w", path, rootErr)})
	}
	if rootErr != nil {
		ents = append(ents, entry{rel: ".", err: fmt.Errorf("ingest: listing %s (the entries read before the failure are ingested): %w", path, rootErr)})
	}
	sort.SliceStable(ents, func(i, j int) bool { return ents[i].rel < ents[j].rel })
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.err != nil {
			id := filepath.ToSlash(e.rel)
			switch {
			case e.rel == ".":
				id = filepath.Base(path)
			case !e.dir:
				id = strings.TrimSuffix(id, filepath.Ext(id))
			}
			if err := fn(Item{Meta: metaID(id), Err: e.err}); err != nil {
				return err
			}
			continue
		}
		f, err := match(formats, e.path)
		if err != nil {
			id := filepath.ToSlash(e.rel)
			if ferr := fn(Item{Meta: metaID(strings.TrimSuffix(id, filepath.Ext(id))), Err: fmt.Errorf("ingest: %s: %w", id, err)}); ferr != nil {
				return ferr
			}
			continue
		}
		if f == nil {
			continue
		}
		prefix := ""
		if f.LocalIDs {
			prefix = filepath.ToSlash(strings.TrimSuffix(e.rel, filepath.Ext(e.rel))) + "/"
		}
		if err := readOne(ctx, f, rd.of(f), e.path, prefix, Options{Root: path, MasksDir: masksDir}, fn); err != nil {
			return err
		}
	}
	return nil
}

// list appends the entries of the folder dir (rel to the walk's root) and
// of its sub-folders to out. ancestors are the folders from the root down
// to dir, to catch a folder that contains itself (a bind mount). The
// error is dir's own listing error; those of sub-folders become entries.
func list(ctx context.Context, dir, rel string, ancestors []os.FileInfo, out []entry) ([]entry, error) {
	des, lerr := readDir(dir)
	for _, d := range des {
		if ctx.Err() != nil {
			return out, lerr
		}
		p := filepath.Join(dir, d.Name())
		r := filepath.Join(rel, d.Name())
		t := d.Type()
		switch {
		case t.IsRegular():
			out = append(out, entry{path: p, rel: r})
		case t.IsDir():
			info, err := d.Info()
			if err != nil {
				out = append(out, entry{rel: r, dir: true, err: fmt.Errorf("ingest: listing folder %s: %w", filepath.ToSlash(r), err)})
				continue
			}
			loop := false
			for _, a := range ancestors {
				loop = loop || os.SameFile(a, info)
			}
			if loop {
				out = append(out, entry{rel: r, dir: true, err: fmt.Errorf("ingest: folder %s is one of its own ancestors (a loop); not read", filepath.ToSlash(r))})
				continue
			}
			n := len(out)
			out, err = list(ctx, p, r, append(ancestors[:len(ancestors):len(ancestors)], info), out)
			if err != nil {
				msg := "ingest: listing folder %s: %w"
				if len(out) > n {
					msg = "ingest: listing folder %s (the entries read before the failure are ingested): %w"
				}
				out = append(out, entry{rel: r, dir: true, err: fmt.Errorf(msg, filepath.ToSlash(r), err)})
			}
		case t&fs.ModeSymlink != 0:
			out = append(out, symlinkEntry(p, r))
		default:
			out = append(out, entry{rel: r, err: fmt.Errorf("%w: %s is a %s; not read", ErrNotRegular, filepath.ToSlash(r), kind(t))})
		}
	}
	return out, lerr
}

// symlinkEntry follows the link at p: a link to a regular file is that
// file; anything else is reported.
func symlinkEntry(p, rel string) entry {
	name := filepath.ToSlash(rel)
	target, _ := os.Readlink(p)
	st, err := os.Stat(p)
	switch {
	case err != nil:
		return entry{rel: rel, err: fmt.Errorf("%w: %s: %w", ErrNotRegular, name, linkError(p, err))}
	case st.Mode().IsRegular():
		return entry{path: p, rel: rel}
	case st.IsDir():
		return entry{rel: rel, err: fmt.Errorf("%w: %s is a symbolic link to the folder %s; links to folders are not followed (give the folder itself as an input)", ErrNotRegular, name, target)}
	}
	return entry{rel: rel, err: fmt.Errorf("%w: %s is a symbolic link to %s, a %s; not read", ErrNotRegular, name, target, kind(st.Mode()))}
}

// linkError words a failed stat of a path that may be a symbolic link:
// a dangling link or a loop of links says so.
func linkError(p string, err error) error {
	lst, lerr := os.Lstat(p)
	if lerr != nil || lst.Mode()&fs.ModeSymlink == 0 {
		return err
	}
	target, _ := os.Readlink(p)
	switch {
	case errors.Is(err, syscall.ELOOP):
		return fmt.Errorf("symbolic link to %s is a loop of links: %w", target, err)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("dangling symbolic link to %s: %w", target, err)
	}
	return fmt.Errorf("symbolic link to %s: %w", target, err)
}
