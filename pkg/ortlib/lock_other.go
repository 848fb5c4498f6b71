//go:build !unix

package ortlib

import "context"

// lockFile is a no-op where flock is missing: concurrent fetches may then
// both download, but each writes its own temporary file and renames a
// verified file into place, so the cache stays consistent.
func lockFile(ctx context.Context, path string) (func(), error) {
	return func() {}, nil
}
