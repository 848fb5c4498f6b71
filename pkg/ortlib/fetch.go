package ortlib

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// tarballName is the file npm pack writes and the registry serves.
const tarballName = NPMPackage + "-" + Version + ".tgz"

// Fetch returns Path when it finds the library; otherwise it downloads the
// pinned library into the cache and returns its path. It does not fetch
// when $LUNGSEG_ORT_LIB is set (that file must exist). Concurrent calls,
// in one process or several, download once: they serialise on a lock file
// in the cache, and the file only appears, by rename, once verified.
func Fetch(ctx context.Context, log zerolog.Logger) (string, error) {
	p, err := Path(ctx)
	if err == nil || !errors.Is(err, ErrNotFound) {
		return p, err
	}
	a, err := platformArtifact()
	if err != nil {
		return "", err
	}
	dir, err := libDir()
	if err != nil {
		return "", err
	}
	return fetchInto(ctx, log, dir, a, fetchers(log))
}

// fetcher writes the package tarball's library member, verified, to dst.
type fetcher struct {
	name string
	run  func(ctx context.Context, a artifact, dst string) error
}

// fetchers lists the ways to get the tarball, best first: npm pack when
// npm is on PATH, then HTTPS.
func fetchers(log zerolog.Logger) []fetcher {
	var list []fetcher
	npm, npmErr := exec.LookPath("npm")
	if npmErr == nil {
		list = append(list, fetcher{"npm pack", func(ctx context.Context, a artifact, dst string) error {
			return fetchNPM(ctx, npm, os.Getenv(EnvRegistry), a, dst)
		}})
	}
	list = append(list, fetcher{"https", func(ctx context.Context, a artifact, dst string) error {
		reg := registryURL(ctx, npm)
		log.Debug().Str("registry", reg).Msg("fetching onnx runtime over https")
		return fetchHTTP(ctx, http.DefaultClient, reg, a, dst)
	}})
	return list
}

// fetchInto takes the lock in dir, re-checks the cache and tries each
// fetcher in turn until one leaves a verified file at dir/a.file.
func fetchInto(ctx context.Context, log zerolog.Logger, dir string, a artifact, list []fetcher) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("ortlib: creating cache folder: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".fetch.lock"))
	if err != nil {
		return "", fmt.Errorf("ortlib: locking cache: %w", err)
	}
	defer unlock()
	// Another process may have fetched it while we waited for the lock.
	if p, err := cachedPath(dir, a); err == nil {
		return p, nil
	}
	dst := filepath.Join(dir, a.file)
	var errs []error
	for _, f := range list {
		start := time.Now()
		log.Info().Str("method", f.name).Str("package", NPMPackage+"@"+Version).Str("dest", dst).Msg("fetching onnx runtime")
		err := f.run(ctx, a, dst)
		if err == nil {
			log.Info().Str("method", f.name).Int64("bytes", a.size).Dur("took_ms", time.Since(start)).Msg("fetched onnx runtime")
			return dst, nil
		}
		log.Warn().Err(err).Str("method", f.name).Msg("fetching onnx runtime failed")
		errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
		if ctx.Err() != nil {
			break
		}
	}
	return "", fmt.Errorf("ortlib: fetching %s@%s: %w", NPMPackage, Version, errors.Join(errs...))
}

// fetchNPM runs `npm pack` into a temporary folder beside dst and extracts
// the library from the tarball it writes.
func fetchNPM(ctx context.Context, npm, registry string, a artifact, dst string) error {
	tmp, err := os.MkdirTemp(filepath.Dir(dst), ".npm-pack-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	args := []string{"pack", NPMPackage + "@" + Version, "--pack-destination", tmp, "--silent"}
	if registry != "" {
		args = append(args, "--registry", registry)
	}
	cmd := exec.CommandContext(ctx, npm, args...)
	cmd.Dir = tmp
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("running npm pack: %w: %s", err, lastLine(stderr.String()))
	}
	f, err := os.Open(filepath.Join(tmp, tarballName))
	if err != nil {
		return fmt.Errorf("opening npm pack output: %w", err)
	}
	defer f.Close()
	return extract(f, a, dst)
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// registryURL picks the registry base: $LUNGSEG_NPM_REGISTRY, else
// `npm config get registry` when npm is given, else DefaultRegistry.
func registryURL(ctx context.Context, npm string) string {
	if r := os.Getenv(EnvRegistry); r != "" {
		return r
	}
	if npm != "" {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		out, err := exec.CommandContext(cctx, npm, "config", "get", "registry").Output()
		if err == nil {
			r := strings.TrimSpace(string(out))
			if u, err := url.Parse(r); err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" {
				return r
			}
		}
	}
	return DefaultRegistry
}

// tarballURL is the registry's address of the pinned tarball.
func tarballURL(registry string) string {
	return strings.TrimRight(registry, "/") + "/" + NPMPackage + "/-/" + tarballName
}

// fetchHTTP GETs the tarball from registry and streams the library out
// of it into dst.
func fetchHTTP(ctx context.Context, client *http.Client, registry string, a artifact, dst string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, tarballURL(registry), nil)
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", req.URL, resp.Status)
	}
	return extract(resp.Body, a, dst)
}

// maxLib caps how much extract will write whatever a tarball declares.
const maxLib = 512 << 20

// extract reads a gzipped tar stream, finds a.member, checks its declared
// size before writing, copies it to a temporary file beside dst while
// hashing, checks the sha256 and renames the file to dst.
func extract(r io.Reader, a artifact, dst string) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: reading gzip: %v", ErrBadTarball, err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return fmt.Errorf("%w: no %s in tarball", ErrBadTarball, a.member)
		}
		if err != nil {
			return fmt.Errorf("%w: reading tar: %v", ErrBadTarball, err)
		}
		if h.Name != a.member {
			continue
		}
		if h.Typeflag != tar.TypeReg {
			return fmt.Errorf("%w: %s is not a regular file (type %q)", ErrBadTarball, a.member, h.Typeflag)
		}
		if h.Size != a.size || h.Size <= 0 || h.Size > maxLib {
			return fmt.Errorf("%w: %s declares %d bytes, want %d", ErrBadTarball, a.member, h.Size, a.size)
		}
		return writeVerified(tr, a, dst)
	}
}

// writeVerified copies exactly a.size bytes from r to a temporary file in
// dst's folder, checks the sha256, then renames it onto dst.
func writeVerified(r io.Reader, a artifact, dst string) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".ortlib-*.part")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, a.size+1))
	if err != nil {
		return fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if n != a.size {
		return fmt.Errorf("%w: %s has %d bytes, want %d", ErrBadTarball, a.member, n, a.size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != a.sha256 {
		return fmt.Errorf("%w: %s: got %s, want %s", ErrChecksum, a.member, got, a.sha256)
	}
	if err = tmp.Chmod(0o755); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("moving library into place: %w", err)
	}
	return nil
}
