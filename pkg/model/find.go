package model

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// EnvRegistry names the environment variable that points at the model
// registry when no folder is given.
const EnvRegistry = "LUNGSEG_MODELS"

// ErrNoRegistry means no model registry was found; its message names every
// place tried.
var ErrNoRegistry = errors.New("model: no model registry found")

// Where says where FindRegistry looks when no folder is given.
type Where struct {
	// Getenv, Getwd and Executable default to the os package's.
	Getenv     func(string) string
	Getwd      func() (string, error)
	Executable func() (string, error)
}

// FindRegistry returns the model registry folder. A folder given (a flag
// or a config file) is used as it is, and must exist. Otherwise the first
// of these that holds a model (a sub-folder with a card.json) wins:
// $LUNGSEG_MODELS; models/ in the working directory or the nearest parent
// that has one (a source checkout, from any sub-folder); models/ beside the
// executable or one level above it (bin/lungseg of a release). The error
// names every place tried.
func FindRegistry(given string, w Where) (string, error) {
	if w.Getenv == nil {
		w.Getenv = os.Getenv
	}
	if w.Getwd == nil {
		w.Getwd = os.Getwd
	}
	if w.Executable == nil {
		w.Executable = os.Executable
	}
	if given != "" {
		st, err := os.Stat(given)
		if err != nil {
			return "", fmt.Errorf("%w: %s (given): %v", ErrNoRegistry, given, err)
		}
		if !st.IsDir() {
			return "", fmt.Errorf("%w: %s (given) is not a folder", ErrNoRegistry, given)
		}
		return given, nil
	}
	var tried []string
	seen := map[string]bool{}
	try := func(dir, why string) bool {
		if dir == "" || seen[dir] {
			return false
		}
		seen[dir] = true
		tried = append(tried, dir+" ("+why+")")
		return holdsModel(dir)
	}
	if env := w.Getenv(EnvRegistry); env != "" {
		if try(env, "$"+EnvRegistry) {
			return env, nil
		}
	}
	if wd, err := w.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			cand := filepath.Join(d, "models")
			why := "working directory"
			if d != wd {
				why = "a parent of the working directory"
			}
			if try(cand, why) {
				return cand, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	if exe, err := w.Executable(); err == nil {
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
		dir := filepath.Dir(exe)
		for _, cand := range []string{filepath.Join(dir, "models"), filepath.Join(filepath.Dir(dir), "models")} {
			if try(cand, "beside the executable") {
				return cand, nil
			}
		}
	}
	return "", fmt.Errorf("%w (give --models-dir DIR or set $%s); tried: %s", ErrNoRegistry, EnvRegistry, summarise(tried))
}

// holdsModel reports whether dir has a sub-folder with a card.
func holdsModel(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.IsDir() {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), CardFile)); err == nil {
				return true
			}
		}
	}
	return false
}

// summarise lists the places tried, folding the parents of the working
// directory into one entry.
func summarise(tried []string) string {
	var out []string
	parents := 0
	for _, t := range tried {
		if strings.HasSuffix(t, "(a parent of the working directory)") {
			parents++
			continue
		}
		out = append(out, t)
	}
	if parents > 0 {
		out = append(out, fmt.Sprintf("models/ in %d parent folders of the working directory", parents))
	}
	return strings.Join(out, "; ")
}
