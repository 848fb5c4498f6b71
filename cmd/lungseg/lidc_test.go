package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/testenv"
)

// TestShippedCascadeOnHeldOutLIDC replays the 24 real whole slices of
// held-out test patient LIDC-IDRI-0007 (train's eval_pkl --what real: the
// normalised slices in HU fitted against the patient's HU crops, written
// to a temp folder) through the whole pipeline with the shipped
// ResNet50-UNet detector, its +crop cascade and its crop model alone
// (tiled, with its verifier). It guards both crop-model paths with the real
// models, which the tiny-model tests cannot: the cascade must beat its
// detector and the dataset authors' 0.40, and the crop model alone must
// reach the aim of 0.60 mean Dice per slice on real slices
// (measured 2026-12-04: detector 0.345; cascade 0.384 at the detect
// threshold 0.25 of 1.2.0, 0.422 at 1.2.1's 0.05, which the validation
// bare crops chose; crop model with its verifier 0.619; 0.385 without; the
// verifier recipe with seeds 2 and 3 gave 0.492 and 0.515, so this guards
// the shipped verifier file, not the recipe).
// Until 1.2.0 this test used 60 crops pasted into synthetic chests, where
// 1.2.0's cascade scores 0.681 pooled against 1.1.0's 0.873: composites are
// a training aid, not the evidence.
func TestShippedCascadeOnHeldOutLIDC(t *testing.T) {
	if testing.Short() {
		t.Skip("replays 24 real slices through three selections")
	}
	data := testenv.SharedData(t)
	py := testenv.RequireTrain(t)
	root := testenv.RepoRoot(t)
	dir := t.TempDir()
	pkl := filepath.Join(dir, "heldout.pkl")
	cmd := exec.Command(py, "-m", "lungseg_train.eval_pkl", "--data", data, "--split", "test",
		"--what", "real", "--out", pkl)
	cmd.Dir = filepath.Join(root, "train")
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("eval_pkl: %v\n%s", err, out)
	}
	const det, casc, crop = "resnet50-unet-small", "resnet50-unet-small+crop", "resnet50-unet-small-crop"
	rep := runReplay(t, filepath.Join(root, "models"), 5*time.Minute,
		replayArgs{inputs: []string{pkl}, models: []string{det + "," + casc + "," + crop}, report: filepath.Join(dir, "r.json")})
	if len(rep.Errors) != 0 {
		t.Fatalf("errors: %+v", rep.Errors)
	}
	d, c, k := rep.Models[det], rep.Models[casc], rep.Models[crop]
	for name, m := range map[string]int{det: d.Slices, casc: c.Slices, crop: k.Slices} {
		if m != 24 {
			t.Fatalf("%s: %d slices, want 24", name, m)
		}
	}
	t.Logf("mean Dice per slice on 0007's 24 real slices: %s %.3f, %s %.3f, %s %.3f (pooled %.3f, %.3f, %.3f)",
		det, d.MeanDice.Mean, casc, c.MeanDice.Mean, crop, k.MeanDice.Mean, d.DicePooled, c.DicePooled, k.DicePooled)
	if !(c.MeanDice.Mean > d.MeanDice.Mean) {
		t.Errorf("the cascade (%.3f) does not beat its detector (%.3f)", c.MeanDice.Mean, d.MeanDice.Mean)
	}
	if !(c.MeanDice.Mean > 0.40) {
		t.Errorf("the cascade: mean Dice %.3f, not above the dataset authors' 0.40", c.MeanDice.Mean)
	}
	if !(k.MeanDice.Mean >= 0.60) {
		t.Errorf("crop model alone: mean Dice %.3f < 0.60", k.MeanDice.Mean)
	}
}
