package ortlib

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	ort "github.com/yalue/onnxruntime_go"
)

// TestInit loads the real library, fetching it into the user cache when
// missing. It never skips: without the library (or network to fetch it)
// it fails, in CI as anywhere else.
func TestInit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var logbuf bytes.Buffer
	log := zerolog.New(&logbuf)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = Init(ctx, log) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Init %d: %v\nlog: %s", i, err, logbuf.String())
		}
	}
	if !ort.IsInitialized() {
		t.Fatal("environment not initialised after Init")
	}
	if v := ort.GetVersion(); v != Version {
		t.Errorf("loaded version %q, want %q", v, Version)
	}
	p := Loaded()
	if p == "" {
		t.Fatal("Loaded is empty after Init")
	}
	if os.Getenv(EnvLib) == "" {
		a, _ := platformArtifact()
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		h := sha256.New()
		io.Copy(h, f)
		if got := hex.EncodeToString(h.Sum(nil)); got != a.sha256 {
			t.Errorf("cached library sha256 %s, want %s", got, a.sha256)
		}
	}
	if err := Init(ctx, zerolog.Nop()); err != nil {
		t.Fatalf("second Init: %v", err)
	}
}

// TestFetchHTTPSRegistry downloads the real tarball over HTTPS (about
// 86 MB), bypassing npm. It is opt-in because TestInit already proves a
// fetch path works: set LUNGSEG_ORT_TEST_HTTPS=1 to run it.
func TestFetchHTTPSRegistry(t *testing.T) {
	if os.Getenv("LUNGSEG_ORT_TEST_HTTPS") != "1" {
		t.Skip("set LUNGSEG_ORT_TEST_HTTPS=1 to download the tarball over HTTPS")
	}
	a, err := platformArtifact()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dst := t.TempDir() + "/" + a.file
	reg := registryURL(ctx, "")
	start := time.Now()
	if err := fetchHTTP(ctx, http.DefaultClient, reg, a, dst); err != nil {
		t.Fatal(err)
	}
	t.Logf("fetched %s from %s in %v", a.file, reg, time.Since(start))
}
