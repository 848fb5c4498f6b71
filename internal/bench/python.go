package bench

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// scripts are the Python helpers, written to a temporary folder at run
// time so that the binary alone can run the bench.
//
//go:embed py/*.py
var scripts embed.FS

// ErrPython reports a Python helper that failed or answered nonsense.
var ErrPython = errors.New("bench: python helper failed")

// writeScripts copies the embedded helpers into dir.
func writeScripts(dir string) error {
	ents, err := scripts.ReadDir("py")
	if err != nil {
		return err
	}
	for _, e := range ents {
		b, err := scripts.ReadFile("py/" + e.Name())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			return fmt.Errorf("bench: writing %s: %w", e.Name(), err)
		}
	}
	return nil
}

// FindPython returns the interpreter to use: want when set, else
// /usr/bin/python3 (Debian's, with torch, pydicom and pandas), else
// python3 on $PATH; "" when there is none.
func FindPython(want string) string {
	if want != "" {
		if p, err := exec.LookPath(want); err == nil {
			return p
		}
		return ""
	}
	for _, c := range []string{"/usr/bin/python3", "python3"} {
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	return ""
}

// pyHas reports whether python imports every module; the error says
// which import failed.
func pyHas(ctx context.Context, python string, modules ...string) error {
	if python == "" {
		return errors.New("no python interpreter")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", "import "+strings.Join(modules, ", "))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndex(msg, "\n"); i >= 0 {
			msg = msg[i+1:]
		}
		return fmt.Errorf("%s cannot import %s: %s", python, strings.Join(modules, ", "), msg)
	}
	return nil
}

// pyServer is a running helper that answers one JSON line per request.
type pyServer struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	stderr *tailBuffer
	name   string
}

// startPy runs python script args and reads its start-up line into hello.
func startPy(ctx context.Context, python, script string, env []string, hello any, args ...string) (*pyServer, error) {
	cmd := exec.CommandContext(ctx, python, append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	s := &pyServer{cmd: cmd, stderr: &tailBuffer{max: 4096}, name: filepath.Base(script)}
	cmd.Stderr = s.stderr
	var err error
	if s.in, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: starting %s: %v", ErrPython, s.name, err)
	}
	s.out = bufio.NewScanner(stdout)
	s.out.Buffer(make([]byte, 1<<20), 1<<24)
	if err := s.read(hello); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *pyServer) read(v any) error {
	if !s.out.Scan() {
		err := s.out.Err()
		if err == nil {
			err = io.EOF
		}
		_ = s.cmd.Wait()
		return fmt.Errorf("%w: %s: %v: %s", ErrPython, s.name, err, s.stderr.String())
	}
	if err := json.Unmarshal(s.out.Bytes(), v); err != nil {
		return fmt.Errorf("%w: %s answered %q: %v", ErrPython, s.name, truncate(s.out.Text(), 200), err)
	}
	return nil
}

// call sends one request and decodes the answer.
func (s *pyServer) call(req, resp any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := s.in.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%w: %s: writing request: %v: %s", ErrPython, s.name, err, s.stderr.String())
	}
	return s.read(resp)
}

// Close ends the helper (closing its stdin ends its loop).
func (s *pyServer) Close() {
	_ = s.in.Close()
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}

// tailBuffer keeps the last max bytes written (a helper's stderr).
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
