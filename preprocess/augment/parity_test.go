package augment_test

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/lungseg/lungseg/pkg/testenv"
	"github.com/lungseg/lungseg/preprocess/augment"
)

func writeF32(t *testing.T, path string, v []float32) {
	t.Helper()
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readF64(t *testing.T, path string, n int) []float64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 8*n {
		t.Fatalf("%s: %d bytes, want %d", path, len(b), 8*n)
	}
	v := make([]float64, n)
	for i := range v {
		v[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	}
	return v
}

// TestScipyParity checks rotation (bilinear, air outside) and the elastic
// field's Gaussian smoothing against scipy.ndimage, run by
// testdata/scipy_parity.py.
func TestScipyParity(t *testing.T) {
	py := testenv.RequirePython(t, "numpy", "scipy.ndimage")
	const rows, cols = 40, 57
	img, _ := noise(rows, cols, 11)
	dir := t.TempDir()
	writeF32(t, filepath.Join(dir, "image.f32"), img.Pix)
	// With sigma 0 the field is the raw noise; with sigma s it is that
	// noise smoothed (same seed, same draws).
	raw, _ := augment.DisplacementField(rows, cols, 1, 0, rand.New(rand.NewPCG(5, 6)))
	writeF32(t, filepath.Join(dir, "noise.f32"), raw)
	angles := []float64{17, -25, 90, 3.3}
	args := []string{filepath.Join("testdata", "scipy_parity.py"), dir, fmt.Sprint(rows), fmt.Sprint(cols)}
	for _, a := range angles {
		args = append(args, fmt.Sprint(a))
	}
	if out, err := exec.Command(py, args...).CombinedOutput(); err != nil {
		t.Fatalf("scipy_parity.py: %v\n%s", err, out)
	}
	for i, a := range angles {
		got, _ := augment.RotateBy(img, nil, a, augment.AirHU)
		want := readF64(t, filepath.Join(dir, fmt.Sprintf("rot_%d.f64", i)), rows*cols)
		maxDiff(t, fmt.Sprintf("rotate %g°", a), got.Pix, want, 0.01)
	}
	for _, s := range []float64{1.5, 4, 10} {
		got, _ := augment.DisplacementField(rows, cols, 1, s, rand.New(rand.NewPCG(5, 6)))
		want := readF64(t, filepath.Join(dir, fmt.Sprintf("blur_%g.f64", s)), rows*cols)
		maxDiff(t, fmt.Sprintf("gaussian σ=%g", s), got, want, 1e-5)
	}
}

func maxDiff(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	worst, at := 0.0, 0
	for i := range got {
		if d := math.Abs(float64(got[i]) - want[i]); d > worst {
			worst, at = d, i
		}
	}
	if worst > tol {
		t.Errorf("%s: max |Go − scipy| = %g at pixel %d (Go %v, scipy %v), tolerance %g", what, worst, at, got[at], want[at], tol)
	} else {
		t.Logf("%s: max |Go − scipy| = %.3g", what, worst)
	}
}
