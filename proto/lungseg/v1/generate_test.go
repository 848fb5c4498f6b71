package lungsegv1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/testenv"
)

// TestGeneratedCodeIsCurrent regenerates the Go code of every .proto file
// here with protoc and the protoc-gen-go pinned in tools/go.mod, and fails
// when the committed code differs (run `task proto` to refresh it).
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds protoc-gen-go")
	}
	protoc := testenv.RequireCommand(t, "protoc")
	root := testenv.RepoRoot(t)
	tmp := t.TempDir()
	plugin := filepath.Join(tmp, "protoc-gen-go")
	build := exec.Command("go", "build", "-modfile=tools/go.mod", "-o", plugin, "google.golang.org/protobuf/cmd/protoc-gen-go")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building protoc-gen-go: %v\n%s", err, out)
	}
	files, _ := filepath.Glob(filepath.Join(root, "proto", "lungseg", "v1", "*.proto"))
	if len(files) == 0 {
		t.Fatal("no .proto files")
	}
	out := filepath.Join(tmp, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		cmd := exec.Command(protoc, "--plugin=protoc-gen-go="+plugin, "--go_out="+out, "--go_opt=module=github.com/lungseg/lungseg", rel)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("protoc %s: %v\n%s", rel, err, b)
		}
		gen := strings.TrimSuffix(rel, ".proto") + ".pb.go"
		want, err := os.ReadFile(filepath.Join(out, gen))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(root, gen))
		if err != nil {
			t.Fatal(err)
		}
		// The header names the protoc version, which differs between
		// machines; compare from the package clause on.
		if !bytes.Equal(afterPackage(got), afterPackage(want)) {
			t.Errorf("%s is stale: run `task proto`", gen)
		}
	}
}

func afterPackage(b []byte) []byte {
	if i := bytes.Index(b, []byte("\npackage ")); i >= 0 {
		return b[i:]
	}
	return b
}
