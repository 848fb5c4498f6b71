// Package train holds no Go code: this test runs the Python training
// package's unit tests and its smoke run (a few training steps of every
// architecture and an ONNX export) from `go test ./...`, so that CI, which
// runs the README's test command, exercises train/ too.
package train

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/testenv"
)

func runPython(t *testing.T, args ...string) string {
	t.Helper()
	py := testenv.RequireTrain(t)
	cmd := exec.Command(py, args...)
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", py, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPythonUnitTests(t *testing.T) {
	testenv.RequirePython(t, testenv.TrainTestModules...)
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

// TestTrainNeedsAreListed: every module that train/ imports (outside the
// standard library and its own package) is in testenv.TrainTestModules, so
// a machine without one skips (or, in CI, fails) the tests above with its
// name instead of failing them with a ModuleNotFoundError. onnxruntime is
// optional (export.py uses it when present).
func TestTrainNeedsAreListed(t *testing.T) {
	py := testenv.RequirePython(t)
	files, err := filepath.Glob("lungseg_train/*.py")
	if err != nil || len(files) == 0 {
		t.Fatalf("no train sources: %v", err)
	}
	more, _ := filepath.Glob("tests/*.py")
	tools, _ := filepath.Glob("*.py")
	files = append(append(files, more...), tools...)
	code := `import ast, sys
std = set(sys.stdlib_module_names)
found = set()
for f in sys.argv[1:]:
    for n in ast.walk(ast.parse(open(f).read())):
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            names = [n.module]
        else:
            continue
        for m in names:
            root = m.split(".")[0]
            if root not in std:
                found.add(root)
print(" ".join(sorted(found)))`
	out, err := exec.Command(py, append([]string{"-c", code}, files...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("listing imports: %v\n%s", err, out)
	}
	listed := map[string]bool{"lungseg_train": true, "run_all": true, "conftest": true, "pack_data": true, "onnxruntime": true}
	for _, m := range testenv.TrainTestModules {
		listed[m] = true
	}
	imports := strings.Fields(string(out))
	if len(imports) < 3 {
		t.Fatalf("found only %q: the scan is broken", imports)
	}
	for _, m := range imports {
		if !listed[m] {
			t.Errorf("train/ imports %s, which testenv.TrainTestModules does not list", m)
		}
	}
}
