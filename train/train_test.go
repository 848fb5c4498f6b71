// Package train holds no Go code: this test runs the Python training
// package's unit tests and its smoke run (a few training steps of every
// architecture and an ONNX export) from `go test ./...`, so that CI, which
// runs the README's test command, exercises train/ too.
package train

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/testenv"
)

func runPython(t *testing.T, args ...string) string {
	t.Helper()
	py := testenv.RequirePython(t, "torch", "numpy", "onnx", "PIL")
	cmd := exec.Command(py, args...)
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", py, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPythonUnitTests(t *testing.T) {
	testenv.RequirePython(t, "pytest")
	out := runPython(t, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests")
	t.Log(lastLines(out, 3))
}

func TestTrainingSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("smoke training takes a minute on 2 cores")
	}
	out := runPython(t, "-m", "lungseg_train.smoke")
	t.Log(lastLines(out, 5))
	if !strings.Contains(out, "smoke:") || strings.Contains(out, " 0 passed") {
		t.Fatalf("smoke run did not report passes:\n%s", lastLines(out, 20))
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
