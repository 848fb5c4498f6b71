package ingest

import "io/fs"

// SetReadDir replaces how Walk lists folders until the returned function
// is called.
func SetReadDir(f func(string) ([]fs.DirEntry, error)) (restore func()) {
	old := readDir
	readDir = f
	return func() { readDir = old }
}

// ReadDir is Walk's own folder listing.
var ReadDir = readDir

// WalkReusing is the ingest stage's walk: the formats may reuse pixel
// memory (Format.Reusing).
var WalkReusing = walkReusing
