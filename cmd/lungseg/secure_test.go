package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/bustest"
	"github.com/lungseg/lungseg/pkg/natsauth"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"google.golang.org/protobuf/proto"
)

func TestWarnExposed(t *testing.T) {
	for _, c := range []struct {
		addr   string
		authed bool
		warn   bool
	}{
		{"127.0.0.1:4222", false, false},
		{"localhost:8080", false, false},
		{"[::1]:8042", false, false},
		{":8042", false, true},
		{"0.0.0.0:11112", false, true},
		{"[::]:4222", false, true},
		{"192.168.1.5:8080", false, true},
		{"0.0.0.0:8080", true, false},
	} {
		var buf bytes.Buffer
		warnExposed(zerolog.New(&buf), "STOW-RS", c.addr, c.authed, "set --stow-token")
		got := strings.Contains(buf.String(), `"level":"warn"`)
		if got != c.warn {
			t.Errorf("%s (authenticated %v): warned %v, want %v: %s", c.addr, c.authed, got, c.warn, buf.String())
		}
		if got && !strings.Contains(buf.String(), "without authentication") || got && !strings.Contains(buf.String(), "--stow-token") {
			t.Errorf("warning does not say what is wrong and what to set: %s", buf.String())
		}
	}
}

// startRun runs `lungseg run` with args on a loopback port and a fresh
// data folder, and returns the credentials it wrote once its server is up.
func startRun(t *testing.T, args ...string) (dataDir string, creds *natsauth.Credentials, stop func() error) {
	t.Helper()
	dataDir = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cmdRun(ctx, append([]string{"--listen", "127.0.0.1:0", "--data-dir", dataDir, "--web", "", "--log-level", "warn"}, args...))
	}()
	var once bool
	stop = func() error {
		if once {
			return nil
		}
		once = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("run did not stop")
		}
	}
	t.Cleanup(func() { stop() })
	path := filepath.Join(dataDir, natsauth.CredentialsFile)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, err := natsauth.ReadCredentials(path); err == nil && c.URL != "" {
			return dataDir, c, stop
		}
		select {
		case err := <-done:
			t.Fatalf("run ended before writing %s: %v", path, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("run wrote no credentials file %s", path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func connectRole(t *testing.T, url string, c *natsauth.Credentials, role string) jetstream.JetStream {
	t.Helper()
	o, err := c.Options(role)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, nats.UserInfo(o.User, o.Password))
	if err != nil {
		t.Fatalf("connecting as %s: %v", role, err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return js
}

// TestRunCreatesCredentials checks that `lungseg run` owning its embedded
// server lets no client in without credentials, writes per-run
// credentials only its user can read, gives the replay user no right to
// list or delete streams, and removes the file when it stops.
func TestRunCreatesCredentials(t *testing.T) {
	dataDir, creds, stop := startRun(t, "--stages", "none", "--models-dir", testRegistry(t))
	path := filepath.Join(dataDir, natsauth.CredentialsFile)
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	for _, r := range natsauth.Roles {
		if len(creds.Users[r]) < 24 {
			t.Errorf("role %s has password %q", r, creds.Users[r])
		}
	}
	if nc, err := nats.Connect(creds.URL); err == nil {
		nc.Close()
		t.Fatal("an anonymous client connected to run's server")
	}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	rjs := connectRole(t, creds.URL, creds, natsauth.RoleReplay)
	if err := rjs.DeleteStream(short(), bus.StreamRaw); err == nil {
		t.Error("the replay user deleted a stream")
	}
	names := rjs.StreamNames(short())
	for range names.Name() {
	}
	if names.Err() == nil {
		t.Error("the replay user listed the streams")
	}
	ajs := connectRole(t, creds.URL, creds, natsauth.RoleAdmin)
	if _, err := ajs.Stream(short(), bus.StreamRaw); err != nil {
		t.Errorf("admin cannot read the RAW stream: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("credentials file left after run stopped: %v", err)
	}
}

// TestRunStagesAsRolesWithInputRoots runs every stage of `lungseg run`
// (each as its own NATS user) with one input root, and replays through it
// as a client with `replay --nats`, which finds its credentials in the
// data folder: a folder under the root is scored, one outside it is
// refused with a clear error on the errors subject.
func TestRunStagesAsRolesWithInputRoots(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the pipeline")
	}
	reg := testRegistry(t)
	root := t.TempDir()
	inside, outside := filepath.Join(root, "series"), t.TempDir()
	sl := phantom.Generate(31, 3, phantom.Options{Rows: 64, Cols: 64, Series: true})
	if err := phantom.WriteDICOM(inside, sl); err != nil {
		t.Fatal(err)
	}
	if err := phantom.WriteDICOM(outside, sl); err != nil {
		t.Fatal(err)
	}
	dataDir, creds, _ := startRun(t, "--models-dir", reg, "--input-root", root)
	// Wait for every stage's consumer (work streams may keep messages
	// only for consumers that exist).
	ajs := connectRole(t, creds.URL, creds, natsauth.RoleAdmin)
	deadline := time.Now().Add(60 * time.Second)
	for _, st := range []string{bus.StreamIngest, bus.StreamRaw, bus.StreamReady, bus.StreamMasks, bus.StreamScores} {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			n := 0
			if s, err := ajs.Stream(ctx, st); err == nil {
				names := s.ConsumerNames(ctx)
				for range names.Name() {
					n++
				}
			}
			cancel()
			if n > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no consumer on %s after 60 s", st)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	replayVia := func(input string) *struct {
		slices int
		errs   []string
	} {
		t.Helper()
		cfg := defaultConfig()
		cfg.NATS, cfg.DataDir, cfg.ModelsDir, cfg.LogLevel = creds.URL, dataDir, reg, "warn"
		report := filepath.Join(t.TempDir(), "report.json")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := doReplay(ctx, &cfg, replayArgs{inputs: []string{input}, models: []string{"tiny"}, report: report, timeout: time.Minute}); err != nil {
			t.Logf("replay of %s: %v", input, err)
		}
		rep := readReport(t, report)
		out := &struct {
			slices int
			errs   []string
		}{slices: len(rep.Slices)}
		for _, e := range rep.Errors {
			out.errs = append(out.errs, e.Stage+": "+e.Error)
		}
		return out
	}
	in := replayVia(inside)
	if in.slices != len(sl) || len(in.errs) != 0 {
		t.Fatalf("inside the root: %d of %d slices scored, errors %v", in.slices, len(sl), in.errs)
	}
	out := replayVia(outside)
	if out.slices != 0 {
		t.Fatalf("outside the root: %d slices scored", out.slices)
	}
	// The refusal is on the errors subject, naming the path and why.
	var found []string
	for _, m := range bustest.Fetch(t, ajs, bus.StreamErrors, bus.PrefixErrors+"ingest.>") {
		var ev lungsegv1.ErrorEvent
		if err := proto.Unmarshal(m.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		found = append(found, ev.Error)
	}
	if len(found) != 1 || !strings.Contains(found[0], "outside the input roots") || !strings.Contains(found[0], outside) {
		t.Fatalf("errors on lung.errors.ingest.>: %q (report: %v); want one naming %s outside the input roots", found, out.errs, outside)
	}
}
