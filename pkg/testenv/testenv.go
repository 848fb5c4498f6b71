// Package testenv lets tests find the external tools some of them need
// (Debian's python3 with numpy, pandas, pydicom or torch; dcmtk; chromium)
// and the shared LIDC data. Outside CI a missing tool skips the test; in CI
// (CI=true), where .ci/run installs every tool, it fails the test, so no
// test is silently skipped there.
package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// Python is the interpreter with Debian's packages.
const Python = "/usr/bin/python3"

// InCI reports whether the tests run in CI.
func InCI() bool { v := os.Getenv("CI"); return v != "" && v != "false" && v != "0" }

func missing(t testing.TB, what string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s is required in CI (.ci/run installs it)", what)
	}
	t.Skipf("%s not available", what)
}

// The Python modules each kind of test runs, in one place, so that a test
// checks every module the code it runs imports (train_test.go checks
// TrainModules against train/'s imports). Debian package names in
// brackets.
var (
	// TrainModules: what train/lungseg_train imports (python3-torch,
	// -torchvision, -numpy, -onnx, -pil, -scipy, -pandas, -pydicom).
	TrainModules = []string{"torch", "torchvision", "numpy", "onnx", "PIL", "scipy", "pandas", "pydicom"}
	// TrainTestModules: train's unit tests (python3-pytest too).
	TrainTestModules = append(append([]string(nil), TrainModules...), "pytest")
	// FixtureModules: the fixture scripts beside the Go tests
	// (python3-numpy, -pandas, -pydicom, -scipy, -pil).
	FixtureModules = []string{"numpy", "pandas", "pydicom", "scipy", "PIL"}
)

// RequireTrain returns the interpreter after checking every module that
// train/lungseg_train imports (a test that runs any part of it).
func RequireTrain(t testing.TB) string {
	t.Helper()
	return RequirePython(t, TrainModules...)
}

// RequirePython returns the interpreter after checking it imports every
// module named.
func RequirePython(t testing.TB, modules ...string) string {
	t.Helper()
	if _, err := os.Stat(Python); err != nil {
		missing(t, Python)
	}
	if len(modules) > 0 {
		// report every missing module at once, not the first
		code := "import importlib.util, sys\nmiss = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]\n" +
			"print(' '.join(miss)); sys.exit(1 if miss else 0)"
		if out, err := exec.Command(Python, append([]string{"-c", code}, modules...)...).CombinedOutput(); err != nil {
			missing(t, "python modules "+strings.TrimSpace(string(out))+" (of "+strings.Join(modules, ", ")+")")
		}
	}
	return Python
}

// RequireCommand returns the path of an executable on PATH.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missing(t, name)
	}
	return p
}

// RequireFile returns path after checking it exists; what says what it is
// and where it comes from (for example "pydicom's test files (Debian
// python3-pydicom)").
func RequireFile(t testing.TB, path, what string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		missing(t, what+" ("+path+")")
	}
	return path
}

// Unavailable is for a test that needs something of the system itself (a
// named pipe, a second loopback address): it skips outside CI and fails in
// CI, where the Linux runner has it.
func Unavailable(t testing.TB, what string) {
	t.Helper()
	missing(t, what)
}

// RepoRoot returns the repository root (the folder holding go.mod).
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// SharedData returns ../shared/data beside the repository, skipping the
// test when it is absent (CI always has it).
func SharedData(t testing.TB) string {
	t.Helper()
	d := filepath.Join(RepoRoot(t), "..", "shared", "data")
	if _, err := os.Stat(filepath.Join(d, "lidc", "MANIFEST.csv")); err != nil {
		if InCI() {
			t.Fatalf("../shared/data is required in CI: %v", err)
		}
		t.Skip("../shared/data not present")
	}
	return d
}

// TinyModelDir is the folder of the tiny untrained test model
// (segment/testdata/tiny: model.onnx and card.json).
func TinyModelDir(t testing.TB) string {
	t.Helper()
	return filepath.Join(RepoRoot(t), "segment", "testdata", "tiny")
}

// TinyRegistry copies the tiny test model into a fresh registry folder and
// returns the folder.
func TinyRegistry(t testing.TB) string {
	t.Helper()
	return TestRegistry(t, "tiny")
}

// TestRegistry copies the named test models of segment/testdata (model.onnx
// and card.json of each, for example "tiny", "tiny-det", "tiny-crop") into a
// fresh registry folder and returns the folder.
func TestRegistry(t testing.TB, names ...string) string {
	t.Helper()
	reg := t.TempDir()
	for _, name := range names {
		src := filepath.Join(RepoRoot(t), "segment", "testdata", name)
		dst := filepath.Join(reg, name)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"model.onnx", "card.json"} {
			b, err := os.ReadFile(filepath.Join(src, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return reg
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers, for capturing
// the logs or output of code under test.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
