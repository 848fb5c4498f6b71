// Package ortlib finds, fetches and loads the ONNX Runtime shared library
// that github.com/yalue/onnxruntime_go binds to at run time.
//
// The library comes from the npm package onnxruntime-node at a pinned
// version (its tarball carries a CPU build of libonnxruntime for each
// platform). Lookup order:
//
//  1. the file named by $LUNGSEG_ORT_LIB (used as is, not checksummed, so
//     a GPU build can be dropped in);
//  2. the cache: $LUNGSEG_CACHE, else os.UserCacheDir()/lungseg, holding
//     onnxruntime/<Version>/<library file>.
//
// Fetch fills the cache with `npm pack` when npm is on PATH, else with an
// HTTPS GET of the registry tarball, extracts the one library file and
// checks its size and pinned sha256 before moving it into place.
package ortlib

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/rs/zerolog"
	ort "github.com/yalue/onnxruntime_go"
)

// Version is the pinned ONNX Runtime (and onnxruntime-node) version.
const Version = "1.24.3"

// NPMPackage is the npm package whose tarball carries the library.
const NPMPackage = "onnxruntime-node"

// Environment variables read by this package.
const (
	// EnvLib names a library file to use instead of the cache.
	EnvLib = "LUNGSEG_ORT_LIB"
	// EnvCache overrides the cache folder (default os.UserCacheDir()/lungseg).
	EnvCache = "LUNGSEG_CACHE"
	// EnvRegistry overrides the npm registry base URL used by Fetch.
	EnvRegistry = "LUNGSEG_NPM_REGISTRY"
)

// DefaultRegistry is the public npm registry, used when neither
// $LUNGSEG_NPM_REGISTRY nor `npm config get registry` gives one.
const DefaultRegistry = "https://registry.npmjs.org/"

// Sentinel errors.
var (
	// ErrNotFound means the library is not in the cache (Fetch it).
	ErrNotFound = errors.New("ortlib: library not found")
	// ErrUnsupportedPlatform means no library is pinned for GOOS/GOARCH;
	// set $LUNGSEG_ORT_LIB instead.
	ErrUnsupportedPlatform = errors.New("ortlib: no pinned library for this platform")
	// ErrChecksum means a fetched file's sha256 differs from the pinned one.
	ErrChecksum = errors.New("ortlib: sha256 mismatch")
	// ErrBadTarball means the package tarball lacks the library or
	// declares it with the wrong size or type.
	ErrBadTarball = errors.New("ortlib: bad package tarball")
)

// artifact is one library file inside the onnxruntime-node tarball,
// measured from onnxruntime-node-1.24.3.tgz (tarball sha256
// aa1bb5fa261ea68de05dd53efbba210cd7adf2d2850f4c3a201054c74cc78040).
type artifact struct {
	member string // path inside the tarball
	file   string // file name in the cache
	size   int64
	sha256 string
}

// artifacts maps GOOS/GOARCH to the pinned library. Only linux/amd64 is
// exercised by the tests; the others are pinned from the same tarball.
var artifacts = map[string]artifact{
	"linux/amd64": {
		member: "package/bin/napi-v6/linux/x64/libonnxruntime.so.1",
		file:   "libonnxruntime.so.1",
		size:   35164376,
		sha256: "92ba8e44d31b80a34f5e805076a044122c3be1fffe0d88ed790de7267b0b2682",
	},
	"linux/arm64": {
		member: "package/bin/napi-v6/linux/arm64/libonnxruntime.so.1",
		file:   "libonnxruntime.so.1",
		size:   18625376,
		sha256: "33032cb5b91c12edbf028d7c69fa40a31848d66c0095448758af237d5e0b07db",
	},
	"darwin/arm64": {
		member: "package/bin/napi-v6/darwin/arm64/libonnxruntime.1.24.3.dylib",
		file:   "libonnxruntime.1.24.3.dylib",
		size:   35937208,
		sha256: "76831409ce6eded92b4cb343cf422c458a60c1ea1d5f3cfa69692ab7fcc67f0f",
	},
}

func platformArtifact() (artifact, error) {
	key := runtime.GOOS + "/" + runtime.GOARCH
	a, ok := artifacts[key]
	if !ok {
		return artifact{}, fmt.Errorf("%w %s (set %s to a library file)", ErrUnsupportedPlatform, key, EnvLib)
	}
	return a, nil
}

// CacheDir returns the cache root: $LUNGSEG_CACHE, else
// os.UserCacheDir()/lungseg.
func CacheDir() (string, error) {
	if d := os.Getenv(EnvCache); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("ortlib: finding cache folder (set %s): %w", EnvCache, err)
	}
	return filepath.Join(d, "lungseg"), nil
}

// libDir is the folder holding the cached library of this Version.
func libDir() (string, error) {
	root, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "onnxruntime", Version), nil
}

// Path returns the library to load: $LUNGSEG_ORT_LIB when set (it must
// exist), else the cached file. A cached file of the wrong size counts as
// missing. The error wraps ErrNotFound when Fetch would help.
func Path(ctx context.Context) (string, error) {
	if p := os.Getenv(EnvLib); p != "" {
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("ortlib: %s: %w", EnvLib, err)
		}
		if !st.Mode().IsRegular() {
			return "", fmt.Errorf("ortlib: %s=%s is not a regular file", EnvLib, p)
		}
		return p, nil
	}
	a, err := platformArtifact()
	if err != nil {
		return "", err
	}
	dir, err := libDir()
	if err != nil {
		return "", err
	}
	return cachedPath(dir, a)
}

func cachedPath(dir string, a artifact) (string, error) {
	p := filepath.Join(dir, a.file)
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %s", ErrNotFound, p)
	}
	if err != nil {
		return "", fmt.Errorf("ortlib: checking cache: %w", err)
	}
	if st.Size() != a.size {
		return "", fmt.Errorf("%w: %s has %d bytes, want %d", ErrNotFound, p, st.Size(), a.size)
	}
	return p, nil
}

var (
	initMu   sync.Mutex
	initPath string
)

// Init makes ONNX Runtime ready in this process: Path, else Fetch, then
// ort.SetSharedLibraryPath and ort.InitializeEnvironment. It does the work
// once per process; later calls return nil at once. A failed call leaves
// nothing initialised and may be retried. Safe for concurrent use.
func Init(ctx context.Context, log zerolog.Logger) error {
	initMu.Lock()
	defer initMu.Unlock()
	if initPath != "" {
		return nil
	}
	if ort.IsInitialized() {
		initPath = "(initialised elsewhere)"
		log.Debug().Msg("onnx runtime was already initialised")
		return nil
	}
	p, err := Fetch(ctx, log)
	if err != nil {
		return err
	}
	ort.SetSharedLibraryPath(p)
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		return fmt.Errorf("ortlib: initialising onnx runtime from %s: %w", p, err)
	}
	initPath = p
	v := ort.GetVersion()
	ev := log.Info()
	if v != Version {
		ev = log.Warn().Str("pinned", Version)
	}
	ev.Str("library", p).Str("version", v).Msg("onnx runtime ready")
	return nil
}

// Loaded returns the library path Init loaded, "(initialised elsewhere)"
// when ONNX Runtime was already initialised by other code, or "" before
// Init succeeds.
func Loaded() string {
	initMu.Lock()
	defer initMu.Unlock()
	return initPath
}
