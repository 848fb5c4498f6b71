package ortlib

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"
)

// entry is one member of a fake tarball.
type entry struct {
	name     string
	body     []byte
	size     int64 // declared size; -1 means len(body)
	typeflag byte
}

func makeTgz(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: e.typeflag}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeSymlink {
			h.Linkname = "elsewhere"
		} else {
			h.Size = e.size
			if e.size < 0 {
				h.Size = int64(len(e.body))
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fakeLib is a made-up library and the artifact that pins it.
func fakeLib() ([]byte, artifact) {
	body := bytes.Repeat([]byte("not really a shared library\n"), 300)
	sum := sha256.Sum256(body)
	return body, artifact{
		member: "package/bin/napi-v6/linux/x64/libonnxruntime.so.1",
		file:   "libonnxruntime.so.1",
		size:   int64(len(body)),
		sha256: hex.EncodeToString(sum[:]),
	}
}

func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".part") || strings.HasPrefix(e.Name(), ".npm-pack-") {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestExtract(t *testing.T) {
	body, a := fakeLib()
	other := entry{name: "package/README.md", body: []byte("hello"), size: -1}
	flipped := append([]byte(nil), body...)
	flipped[17] ^= 1
	tgz := func(es ...entry) func(*testing.T) []byte {
		return func(t *testing.T) []byte { return makeTgz(t, es...) }
	}
	cases := []struct {
		name    string
		data    func(*testing.T) []byte
		wantErr error
	}{
		{"good", tgz(other, entry{name: a.member, body: body, size: -1}), nil},
		{"member missing", tgz(other), ErrBadTarball},
		{"other platform only", tgz(entry{name: strings.Replace(a.member, "x64", "arm64", 1), body: body, size: -1}), ErrBadTarball},
		{"wrong declared size", tgz(entry{name: a.member, body: append(body, 'x'), size: -1}), ErrBadTarball},
		{"wrong content", tgz(entry{name: a.member, body: flipped, size: -1}), ErrChecksum},
		{"symlink", tgz(entry{name: a.member, typeflag: tar.TypeSymlink}), ErrBadTarball},
		{"not gzip", func(*testing.T) []byte { return []byte("<html>not found</html>") }, ErrBadTarball},
		{"truncated", func(t *testing.T) []byte {
			b := makeTgz(t, entry{name: a.member, body: body, size: -1})
			return b[:len(b)/2]
		}, ErrBadTarball},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, a.file)
			err := extract(bytes.NewReader(c.data(t)), a, dst)
			if c.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(dst)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, body) {
					t.Fatal("extracted bytes differ")
				}
				st, _ := os.Stat(dst)
				if st.Mode().Perm()&0o100 == 0 {
					t.Errorf("mode %v not executable", st.Mode())
				}
			} else {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("got %v, want %v", err, c.wantErr)
				}
				if _, err := os.Stat(dst); !os.IsNotExist(err) {
					t.Errorf("destination exists after failure: %v", err)
				}
			}
			if l := leftovers(t, dir); len(l) > 0 {
				t.Errorf("temporary files left: %v", l)
			}
		})
	}
}

// registry serves one tarball at the npm tarball path and counts GETs.
func registry(t *testing.T, tgz []byte) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/onnxruntime-node/-/onnxruntime-node-"+Version+".tgz" {
			http.NotFound(w, r)
			return
		}
		hits.Add(1)
		w.Write(tgz)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestFetchHTTP(t *testing.T) {
	body, a := fakeLib()
	srv, _ := registry(t, makeTgz(t, entry{name: a.member, body: body, size: -1}))
	for _, reg := range []string{srv.URL, srv.URL + "/"} {
		dst := filepath.Join(t.TempDir(), a.file)
		if err := fetchHTTP(context.Background(), srv.Client(), reg, a, dst); err != nil {
			t.Fatalf("registry %s: %v", reg, err)
		}
		if got, _ := os.ReadFile(dst); !bytes.Equal(got, body) {
			t.Fatalf("registry %s: wrong bytes", reg)
		}
	}
	dst := filepath.Join(t.TempDir(), a.file)
	err := fetchHTTP(context.Background(), srv.Client(), srv.URL+"/mirror", a, dst)
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("wrong registry path: got %v, want a 404 error", err)
	}
}

func TestFetchIntoConcurrent(t *testing.T) {
	body, a := fakeLib()
	srv, hits := registry(t, makeTgz(t, entry{name: a.member, body: body, size: -1}))
	dir := filepath.Join(t.TempDir(), "onnxruntime", Version)
	list := []fetcher{{"https", func(ctx context.Context, a artifact, dst string) error {
		return fetchHTTP(ctx, srv.Client(), srv.URL, a, dst)
	}}}
	const workers = 6
	paths := make([]string, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			paths[i], errs[i] = fetchInto(context.Background(), zerolog.Nop(), dir, a, list)
		})
	}
	wg.Wait()
	for i := range workers {
		if errs[i] != nil {
			t.Fatalf("worker %d: %v", i, errs[i])
		}
		if paths[i] != filepath.Join(dir, a.file) {
			t.Fatalf("worker %d: path %s", i, paths[i])
		}
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("registry hit %d times, want 1", n)
	}
	if got, _ := os.ReadFile(paths[0]); !bytes.Equal(got, body) {
		t.Fatal("wrong bytes in cache")
	}
	if l := leftovers(t, dir); len(l) > 0 {
		t.Errorf("temporary files left: %v", l)
	}
}

func TestFetchIntoFallsBack(t *testing.T) {
	body, a := fakeLib()
	srv, _ := registry(t, makeTgz(t, entry{name: a.member, body: body, size: -1}))
	broken := fetcher{"broken", func(context.Context, artifact, string) error { return errors.New("npm exploded") }}
	good := fetcher{"https", func(ctx context.Context, a artifact, dst string) error {
		return fetchHTTP(ctx, srv.Client(), srv.URL, a, dst)
	}}

	var logbuf bytes.Buffer
	log := zerolog.New(&logbuf)
	dir := t.TempDir()
	p, err := fetchInto(context.Background(), log, dir, a, []fetcher{broken, good})
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(dir, a.file) {
		t.Fatalf("path %s", p)
	}
	if !strings.Contains(logbuf.String(), "npm exploded") {
		t.Errorf("failed method not logged: %s", logbuf.String())
	}

	_, err = fetchInto(context.Background(), zerolog.Nop(), t.TempDir(), a, []fetcher{broken, broken})
	if err == nil || strings.Count(err.Error(), "npm exploded") != 2 {
		t.Fatalf("got %v, want both failures reported", err)
	}
}

func TestFetchNPMWithFakeNPM(t *testing.T) {
	body, a := fakeLib()
	tgz := filepath.Join(t.TempDir(), "prepared.tgz")
	if err := os.WriteFile(tgz, makeTgz(t, entry{name: a.member, body: body, size: -1}), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	argsFile := filepath.Join(bin, "args")
	// The fake npm records its arguments and copies the prepared tarball to
	// the --pack-destination folder, as npm pack would.
	script := `#!/bin/sh
echo "$@" > ` + argsFile + `
dest=
while [ $# -gt 0 ]; do
  if [ "$1" = "--pack-destination" ]; then dest=$2; fi
  shift
done
cp ` + tgz + ` "$dest/onnxruntime-node-` + Version + `.tgz"
`
	npm := filepath.Join(bin, "npm")
	if err := os.WriteFile(npm, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, a.file)
	if err := fetchNPM(context.Background(), npm, "https://mirror.example/npm/", a, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, body) {
		t.Fatal("wrong bytes")
	}
	args, _ := os.ReadFile(argsFile)
	for _, want := range []string{"pack onnxruntime-node@" + Version, "--registry https://mirror.example/npm/"} {
		if !strings.Contains(string(args), want) {
			t.Errorf("npm args %q lack %q", args, want)
		}
	}
	if l := leftovers(t, dir); len(l) > 0 {
		t.Errorf("temporary files left: %v", l)
	}

	failing := filepath.Join(bin, "npm-fail")
	os.WriteFile(failing, []byte("#!/bin/sh\necho 'npm error code E404' >&2\nexit 1\n"), 0o755)
	err := fetchNPM(context.Background(), failing, "", a, filepath.Join(t.TempDir(), a.file))
	if err == nil || !strings.Contains(err.Error(), "E404") {
		t.Fatalf("got %v, want the npm error", err)
	}
}

func TestRegistryURL(t *testing.T) {
	bin := t.TempDir()
	write := func(name, out string) string {
		p := filepath.Join(bin, name)
		os.WriteFile(p, []byte("#!/bin/sh\necho '"+out+"'\n"), 0o755)
		return p
	}
	good := write("npm-good", "https://npm.corp.example/")
	junk := write("npm-junk", "undefined")
	cases := []struct {
		name, env, npm, want string
	}{
		{"env wins", "https://env.example/", good, "https://env.example/"},
		{"npm config", "", good, "https://npm.corp.example/"},
		{"npm junk", "", junk, DefaultRegistry},
		{"no npm", "", "", DefaultRegistry},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(EnvRegistry, c.env)
			if got := registryURL(context.Background(), c.npm); got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestPath(t *testing.T) {
	a, err := platformArtifact()
	if err != nil {
		t.Skip(err) // the pinned table has no entry for this platform
	}
	t.Run("env file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "libort.so")
		os.WriteFile(f, []byte("x"), 0o644)
		t.Setenv(EnvLib, f)
		if p, err := Path(context.Background()); err != nil || p != f {
			t.Fatalf("got %q, %v", p, err)
		}
	})
	t.Run("env missing", func(t *testing.T) {
		t.Setenv(EnvLib, filepath.Join(t.TempDir(), "nope.so"))
		_, err := Path(context.Background())
		if err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("got %v, want a plain error (Fetch must not paper over a bad %s)", err, EnvLib)
		}
		if _, err := Fetch(context.Background(), zerolog.Nop()); err == nil {
			t.Fatal("Fetch succeeded with a missing " + EnvLib)
		}
	})
	t.Run("empty cache", func(t *testing.T) {
		t.Setenv(EnvLib, "")
		t.Setenv(EnvCache, t.TempDir())
		if _, err := Path(context.Background()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("got %v, want ErrNotFound", err)
		}
	})
	t.Run("cached wrong size", func(t *testing.T) {
		t.Setenv(EnvLib, "")
		root := t.TempDir()
		t.Setenv(EnvCache, root)
		dir := filepath.Join(root, "onnxruntime", Version)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, a.file), []byte("short"), 0o755)
		if _, err := Path(context.Background()); !errors.Is(err, ErrNotFound) {
			t.Fatalf("got %v, want ErrNotFound", err)
		}
	})
	t.Run("cached", func(t *testing.T) {
		t.Setenv(EnvLib, "")
		root := t.TempDir()
		t.Setenv(EnvCache, root)
		dir := filepath.Join(root, "onnxruntime", Version)
		os.MkdirAll(dir, 0o755)
		want := filepath.Join(dir, a.file)
		f, _ := os.Create(want)
		f.Truncate(a.size)
		f.Close()
		if p, err := Path(context.Background()); err != nil || p != want {
			t.Fatalf("got %q, %v; want %q", p, err, want)
		}
	})
}
