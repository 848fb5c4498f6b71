package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stuckEnv makes the test binary, run again as a child, act as a lungseg
// process stuck in open() on a named pipe (what a FIFO input did to
// ingest): it installs signalContext and blocks, never looking at its
// context.
const stuckEnv = "LUNGSEG_TEST_STUCK_ON_FIFO"

func TestMain(m *testing.M) {
	if fifo := os.Getenv(stuckEnv); fifo != "" {
		grace, _ := time.ParseDuration(os.Getenv(stuckEnv + "_GRACE"))
		_, stop := signalContext(os.Stderr, grace)
		defer stop()
		os.Stderr.WriteString("ready\n")
		f, err := os.Open(fifo) // blocks until a writer comes: never
		if err == nil {
			f.Close()
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSignalEndsAStuckProcess checks that SIGTERM ends a process within
// the grace period even when a goroutine is blocked in a system call and
// nothing returns, and that a second signal ends it at once.
func TestSignalEndsAStuckProcess(t *testing.T) {
	for _, tc := range []struct {
		name    string
		grace   time.Duration
		signals int
		within  time.Duration
		say     string
	}{
		{"after the grace period", time.Second, 1, 8 * time.Second, "still running 1s after SIGTERM: exiting"},
		{"at a second signal", time.Hour, 2, 8 * time.Second, "SIGTERM again: exiting now"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fifo := filepath.Join(t.TempDir(), "pipe.dcm")
			if err := syscall.Mkfifo(fifo, 0o644); err != nil {
				t.Skipf("mkfifo: %v", err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), stuckEnv+"="+fifo, stuckEnv+"_GRACE="+tc.grace.String())
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			lines := make(chan string, 16)
			go func() {
				sc := bufio.NewScanner(stderr)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			select {
			case l := <-lines:
				if l != "ready" {
					t.Fatalf("child said %q", l)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("child did not start")
			}
			time.Sleep(200 * time.Millisecond) // into open()
			start := time.Now()
			for i := range tc.signals {
				if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
				if i == 0 && tc.signals > 1 {
					// The first signal's message, then the second.
					select {
					case <-lines:
					case <-time.After(5 * time.Second):
					}
				}
			}
			var said []string
			done := make(chan error, 1)
			go func() {
				for l := range lines {
					said = append(said, l)
				}
				done <- cmd.Wait()
			}()
			select {
			case err := <-done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) {
					t.Errorf("exit %v, want status %d", err, 128+int(syscall.SIGTERM))
				}
				if !strings.Contains(strings.Join(said, "\n"), tc.say) {
					t.Errorf("said %q, want %q", said, tc.say)
				}
				t.Logf("exited %v after the signal: %q", time.Since(start).Round(time.Millisecond), said)
			case <-time.After(tc.within):
				t.Fatalf("still running %v after SIGTERM", tc.within)
			}
		})
	}
}
