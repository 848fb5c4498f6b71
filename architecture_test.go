// The architecture rule of the README and ../shared/ARCHITECTURE.md, read
// from the import graph: stages (ingest, preprocess, segment, score) meet
// only through subjects, so no stage package imports another stage's, and
// pkg/ holds shared building blocks only, so no pkg/ package imports a
// stage. Test files are not counted.
package lungseg_test

import (
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/lungseg/lungseg/"

var stages = []string{"ingest", "preprocess", "segment", "score"}

// knownViolations are the imports that break the rule today (issue 17:
// the refine stage, and the wiring, replay client, bench, viewer, report
// and phantom generator moving out of pkg/). The test fails on any other
// violation, and on an entry here that no longer happens, so the list
// only shrinks.
var knownViolations = []string{
	"pkg/bench -> ingest",
	"pkg/bench -> ingest/dicomio",
	"pkg/bench -> ingest/formats",
	"pkg/bench -> ingest/pickle",
	"pkg/bench -> preprocess",
	"pkg/bench -> score",
	"pkg/bench -> segment",
	"pkg/bench -> segment/cascade",
	"pkg/bench -> segment/infer",
	"pkg/phantom -> ingest/dicomio",
	"pkg/phantom -> ingest/pickle",
	"pkg/phantom -> ingest/pngpair",
	"pkg/pipeline -> ingest",
	"pkg/pipeline -> preprocess",
	"pkg/pipeline -> score",
	"pkg/pipeline -> score/findings",
	"pkg/pipeline -> segment",
	"pkg/pipeline -> segment/infer",
	"pkg/replay -> score",
	"pkg/replay -> score/findings",
	"pkg/report -> ingest",
	"pkg/report -> score",
	"pkg/web -> score/findings",
	"preprocess/dataset -> ingest",
	"preprocess/dataset -> ingest/pngpair",
	"score -> segment/cascade",
	"score/seg -> ingest/dicomio",
}

// stageOf returns the stage a package path (relative to the module) is
// part of, or "".
func stageOf(rel string) string {
	for _, s := range stages {
		if rel == s || strings.HasPrefix(rel, s+"/") {
			return s
		}
	}
	return ""
}

// violations lists "pkg -> imported" for every import that breaks the
// rule, given "path|imports" lines as `go list` writes them.
func violations(lines []string) []string {
	var out []string
	for _, line := range lines {
		p, imps, ok := strings.Cut(line, "|")
		if !ok || !strings.HasPrefix(p, module) {
			continue
		}
		rel := strings.TrimPrefix(p, module)
		from := stageOf(rel)
		for _, imp := range strings.Fields(imps) {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			to := stageOf(strings.TrimPrefix(imp, module))
			if to == "" {
				continue
			}
			if strings.HasPrefix(rel, "pkg/") || (from != "" && from != to) {
				out = append(out, rel+" -> "+strings.TrimPrefix(imp, module))
			}
		}
	}
	sort.Strings(out)
	return out
}

func TestViolationsFound(t *testing.T) {
	got := violations([]string{
		module + "score|" + module + "segment/cascade " + module + "pkg/imgx " + module + "score/findings",
		module + "pkg/x|" + module + "ingest/pickle fmt",
		module + "cmd/lungseg|" + module + "ingest " + module + "score",
		module + "ingest/watch|" + module + "ingest",
	})
	want := []string{"pkg/x -> ingest/pickle", "score -> segment/cascade"}
	if strings.Join(got, ";") != strings.Join(want, ";") {
		t.Errorf("violations %q, want %q", got, want)
	}
}

func TestStagesMeetOnlyThroughSubjects(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}|{{join .Imports \" \"}}", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	got := violations(strings.Split(strings.TrimSpace(string(out)), "\n"))
	known := map[string]bool{}
	for _, v := range knownViolations {
		known[v] = true
	}
	seen := map[string]bool{}
	for _, v := range got {
		seen[v] = true
		if !known[v] {
			t.Errorf("new import against the architecture: %s (stages meet through subjects; pkg/ imports no stage)", v)
		}
	}
	for _, v := range knownViolations {
		if !seen[v] {
			t.Errorf("%s no longer happens: remove it from knownViolations", v)
		}
	}
}
