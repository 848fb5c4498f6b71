// The architecture rule of the README and ../shared/ARCHITECTURE.md, read
// from the import graph: stages (ingest, preprocess, segment, score) meet
// only through subjects, so no stage package imports another stage's, and
// pkg/ holds shared building blocks only, so no pkg/ package imports a
// stage or the application layer (internal/: wiring, replay client,
// bench, viewer, report, phantoms, dead letters, webhooks), and no stage
// imports internal/ either. Test files are not counted.
package lungseg_test

import (
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/lungseg/lungseg/"

var stages = []string{"ingest", "preprocess", "segment", "score"}

// knownViolations are the imports that break the rule today (none since
// the refine stage of issue 17 took the cascade's merge out of score).
// The test fails on any other violation, and on an entry here that no
// longer happens, so the list only shrinks.
var knownViolations = []string{}

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
			irel := strings.TrimPrefix(imp, module)
			if irel == "internal" || strings.HasPrefix(irel, "internal/") {
				if strings.HasPrefix(rel, "pkg/") || from != "" {
					out = append(out, rel+" -> "+irel)
				}
				continue
			}
			to := stageOf(irel)
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
		module + "internal/bench|" + module + "segment " + module + "pkg/bus",
		module + "pkg/y|" + module + "internal/replay",
		module + "score/seg|" + module + "internal/phantom",
	})
	want := []string{"pkg/x -> ingest/pickle", "pkg/y -> internal/replay", "score -> segment/cascade", "score/seg -> internal/phantom"}
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
			t.Errorf("new import against the architecture: %s (stages meet through subjects; pkg/ imports no stage; neither imports internal/)", v)
		}
	}
	for _, v := range knownViolations {
		if !seen[v] {
			t.Errorf("%s no longer happens: remove it from knownViolations", v)
		}
	}
}
