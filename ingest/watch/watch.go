// Package watch ingests DICOM files that a site exports into a folder. It
// polls the folder; a file whose size and modification time have not
// changed between two polls is complete and is handed to Accept. An
// accepted file is removed; a rejected one is moved to failed/ with a
// .err file beside it giving the cause; a file that failed for a reason
// that may pass (the bus was down) stays and is retried at the next poll.
package watch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// FailedDir is the sub-folder rejected files are moved to.
const FailedDir = "failed"

// AcceptFunc stores one file's bytes. permanent reports that the file
// itself is bad (it is moved to failed/); otherwise it is retried.
type AcceptFunc func(ctx context.Context, name string, data []byte) (permanent bool, err error)

// Watcher polls one folder.
type Watcher struct {
	Dir    string
	Accept AcceptFunc
	// Interval between polls (default 2 s).
	Interval time.Duration
	// MaxFileBytes: larger files are rejected without being read
	// (default 512 MiB).
	MaxFileBytes int64
	Log          zerolog.Logger

	seen map[string]stamp
	// reported holds the entries already logged as unreadable (a named
	// pipe, an unlistable sub-folder), so each is logged once, not at
	// every poll.
	reported map[string]bool
}

type stamp struct {
	size int64
	mod  time.Time
}

// Run polls until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	iv := w.Interval
	if iv <= 0 {
		iv = 2 * time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		if _, err := w.Poll(ctx); err != nil && ctx.Err() == nil {
			w.Log.Error().Err(err).Str("dir", w.Dir).Msg("polling")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Poll makes one pass and returns how many files it accepted.
func (w *Watcher) Poll(ctx context.Context) (int, error) {
	if w.seen == nil {
		w.seen = map[string]stamp{}
	}
	max := w.MaxFileBytes
	if max <= 0 {
		max = 512 << 20
	}
	failed := filepath.Join(w.Dir, FailedDir)
	now := map[string]stamp{}
	reported := map[string]bool{}
	// report logs, once while it lasts, an entry that is left alone.
	report := func(p string, err error) {
		rel, _ := filepath.Rel(w.Dir, p)
		reported[p] = true
		if !w.reported[p] {
			w.Log.Error().Err(err).Str("file", rel).Msg("left alone in the watched folder")
		}
	}
	accepted := 0
	err := filepath.WalkDir(w.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == w.Dir {
				return err
			}
			// One unlistable sub-folder (permissions, a path over
			// PATH_MAX) must not stop the rest of the folder.
			report(p, fmt.Errorf("watch: listing: %w", err))
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if p == failed {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		if !d.Type().IsRegular() {
			// Named pipes, devices, links: never opened (a pipe would
			// block the poll).
			report(p, fmt.Errorf("watch: not a regular file (%v)", d.Type()))
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		st := stamp{info.Size(), info.ModTime()}
		now[p] = st
		if prev, ok := w.seen[p]; !ok || prev != st {
			return nil // new or still being written: wait for one more poll
		}
		rel, _ := filepath.Rel(w.Dir, p)
		if st.size > max {
			w.fail(p, rel, fmt.Errorf("watch: %s is %d bytes, over the %d-byte limit", rel, st.size, max))
			delete(now, p)
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		permanent, err := w.Accept(ctx, rel, data)
		switch {
		case err == nil:
			accepted++
			if err := os.Remove(p); err != nil {
				w.Log.Error().Err(err).Str("file", rel).Msg("removing an accepted file")
			}
			delete(now, p)
		case permanent:
			w.fail(p, rel, err)
			delete(now, p)
		default:
			w.Log.Warn().Err(err).Str("file", rel).Msg("will retry")
		}
		return nil
	})
	w.seen = now
	w.reported = reported
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return accepted, err
	}
	return accepted, err
}

// fail moves a rejected file to failed/ (keeping its relative path) and
// writes the cause beside it.
func (w *Watcher) fail(p, rel string, cause error) {
	w.Log.Warn().Err(cause).Str("file", rel).Msg("file rejected")
	dst := filepath.Join(w.Dir, FailedDir, rel)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
		if err := os.Rename(p, dst); err == nil {
			os.WriteFile(dst+".err", []byte(cause.Error()+"\n"), 0o644)
			return
		}
	}
	w.Log.Error().Str("file", rel).Msg("could not move a rejected file; removing it")
	os.Remove(p)
}
