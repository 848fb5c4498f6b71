package imgx_test

import (
	"encoding/json"
	"os/exec"
	"slices"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
)

// numpyPad is the Python side of TestPadCentreMatchesNumpy: for each
// [h, w, H, W] it centres an h×w image of its own pixel indices on H×W
// the way the crop models' training does and pads it with np.pad's
// "constant" mode (value -1), printing the offsets and the padded indices.
const numpyPad = `
import json, sys
import numpy as np
out = []
for h, w, H, W in json.loads(sys.argv[1]):
    y0, x0 = (H - h) // 2, (W - w) // 2
    a = np.arange(h * w).reshape(h, w)
    p = np.pad(a, ((y0, H - h - y0), (x0, W - w - x0)), mode="constant", constant_values=-1)
    out.append({"y0": y0, "x0": x0, "pix": p.flatten().tolist()})
print(json.dumps(out))
`

// TestPadCentreMatchesNumpy checks PadCentre's placement and padding
// against numpy's np.pad(mode="constant") for sizes from a single pixel
// and pads several times the image to LIDC crop sizes and the whole
// window.
func TestPadCentreMatchesNumpy(t *testing.T) {
	py := testenv.RequirePython(t, "numpy")
	cases := [][4]int{{1, 1, 128, 128}, {1, 5, 8, 9}, {2, 3, 17, 20}, {3, 2, 9, 9}, {43, 44, 128, 128},
		{109, 60, 128, 128}, {127, 128, 128, 128}, {128, 128, 128, 128}, {5, 4, 5, 31}}
	arg, _ := json.Marshal(cases)
	b, err := exec.Command(py, "-c", numpyPad, string(arg)).Output()
	if err != nil {
		t.Fatalf("numpy: %v", err)
	}
	var want []struct {
		Y0, X0 int
		Pix    []int
	}
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	if len(want) != len(cases) {
		t.Fatalf("numpy returned %d cases for %d", len(want), len(cases))
	}
	for k, c := range cases {
		h, w, H, W := c[0], c[1], c[2], c[3]
		src := make([]int, h*w)
		for i := range src {
			src[i] = i
		}
		got, r, err := imgx.PadCentre(src, h, w, H, W, -1)
		if err != nil {
			t.Fatalf("%v: %v", c, err)
		}
		if r != (imgx.Region{Y0: want[k].Y0, X0: want[k].X0, H: h, W: w}) {
			t.Errorf("%v: placement %+v, numpy (%d,%d)", c, r, want[k].Y0, want[k].X0)
		}
		if !slices.Equal(got, want[k].Pix) {
			t.Errorf("%v: padded indices differ from numpy's\n got %v\nwant %v", c, head(got), head(want[k].Pix))
		}
		back, err := imgx.Cut(got, H, W, r)
		if err != nil || !slices.Equal(back, src) {
			t.Errorf("%v: cutting the placement back: %v, %v", c, err, head(back))
		}
	}
}

func head(v []int) []int { return v[:min(len(v), 40)] }

func TestPadAndCutRejectBadSizes(t *testing.T) {
	if _, _, err := imgx.PadCentre(make([]int, 6), 2, 3, 2, 2, 0); err == nil {
		t.Error("2×3 centred in 2×2: no error")
	}
	if _, err := imgx.Pad(make([]int, 5), 2, 3, 1, 1, 1, 1, 0); err == nil {
		t.Error("5 values as 2×3: no error")
	}
	if _, err := imgx.Pad(make([]int, 6), 2, 3, -1, 1, 1, 1, 0); err == nil {
		t.Error("negative pad: no error")
	}
	if _, err := imgx.Cut(make([]int, 16), 4, 4, imgx.Region{Y0: 2, X0: 1, H: 3, W: 2}); err == nil {
		t.Error("region past the bottom: no error")
	}
}
