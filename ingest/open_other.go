//go:build !unix

package ingest

import "os"

// openNonBlocking opens path read-only (named pipes do not live in the
// file system here).
func openNonBlocking(path string) (*os.File, error) { return os.Open(path) }
