package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/pkg/testenv"
)

// TestReplayCascade replays phantom slices with `--model
// tiny-det+crop,tiny-det` on the tiny cascade models of segment/testdata
// (1×1 convolutions): both selections are reported apart, and the cascade,
// which keeps only what its crop windows find, predicts fewer pixels than
// its detector, which keeps the whole body. internal/pipeline's cascade test
// checks the cascade's masks pixel by pixel.
func TestReplayCascade(t *testing.T) {
	reg := t.TempDir()
	for _, name := range []string{"tiny-det", "tiny-crop"} {
		src := filepath.Join(testenv.RepoRoot(t), "segment", "testdata", name)
		if err := os.MkdirAll(filepath.Join(reg, name), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{model.ModelFile, model.CardFile} {
			copyFile(t, filepath.Join(src, f), filepath.Join(reg, name, f))
		}
	}
	dir := t.TempDir()
	in, err := writePhantoms(dir, "png", 11, 2, phantom.Options{EmptyFraction: -1})
	if err != nil {
		t.Fatal(err)
	}
	rep := runReplay(t, reg, 2*time.Minute, replayArgs{inputs: []string{in}, models: []string{"tiny-det+crop,tiny-det"}, report: filepath.Join(dir, "r.json")})
	if len(rep.Errors) != 0 {
		t.Fatalf("errors %+v", rep.Errors)
	}
	casc, det := rep.Models["tiny-det+crop"], rep.Models["tiny-det"]
	if casc.Slices != 2 || det.Slices != 2 {
		t.Fatalf("slices: cascade %d, detector %d; models %v", casc.Slices, det.Slices, rep.Models)
	}
	pred := map[string]int64{}
	for _, s := range rep.Slices {
		pred[s.Model] += s.Predicted
	}
	if pred["tiny-det+crop"] == 0 || pred["tiny-det+crop"] >= pred["tiny-det"] {
		t.Fatalf("predicted pixels: cascade %d, detector %d", pred["tiny-det+crop"], pred["tiny-det"])
	}
}
