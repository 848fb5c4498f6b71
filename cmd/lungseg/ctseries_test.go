package main

import (
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/testenv"
)

// massCheck is what the shipped models must do on slices of one real
// series of ../shared/data/ct_series (no annotations come with them): no
// predicted pixel outside the body, and on the slices of its visible mass
// (ct_series/README.md) the mass found, as a nodule of a series is: at
// least minInBox predicted pixels (a blob of about 7-11 mm at these
// spacings) inside box (inclusive rows y0..y1, columns x0..x1, read off the
// slices in a lung window; the same boxes as pkg/lungfield's real-series
// test) on at least minSlices of those slices.
type massCheck struct {
	folder string
	files  []string // file names in the folder
	mass   []string // the slice ids of the visible mass among files
	box    [4]int   // y0, y1, x0, x1
}

// Measured at 4f3722f (pixels in the box per mass slice): every selection
// has ≥ 100 on 10-11 of popi's 11 slices; on lungdx's 6, from 2
// (unetr-small: 150, 0, 46, 52, 566, 8) to 6 (every cascade). Without the
// lung field 62-75% of the whole-slice models' pixels on lungdx lay outside
// the body, on the table.
const minInBox, minSlices = 100, 2

// knownMissed lists the masses a selection is known to miss, with the
// measurement: the test fails when such a selection finds its mass (the
// entry is stale then) as it fails when any other misses one. Each entry is
// an open gap of issue 14, said in the README.
var knownMissed = map[string]string{
	// Empty since the crop models tile a slice at stride 64 with Gaussian
	// weights (segment.TileStride): before, with stride 96 and a plain mean,
	// version 1.1.0 of resnet50-unet-small-crop alone had 134, 0, 0, 0, 19, 0
	// pixels in the box on lungdx 1-14..1-19 and missed the 6 cm hilar mass;
	// now it finds it on 5 of 6 slices.
}

func sliceNames(format string, from, to int, extra ...int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf(format, i))
	}
	for _, i := range extra {
		out = append(out, fmt.Sprintf(format, i))
	}
	return out
}

// TestShippedModelsOnCTSeries replays 29 slices of the three real chest CT
// series (popi_00_141 around its 2.5 cm mass, with a liver and a sensor
// slice; lungdx_a0002_30 around its hilar mass, with a neck and an abdomen
// slice; lungmask_1) through every shipped selection (--model all: the
// whole-slice models, the crop models alone, the cascades) with the lung
// field on, as a user would, and checks that no selection predicts a pixel
// outside the body (the body of pkg/lungfield, computed here from the same
// HU) and that every selection finds both visible masses (but those in
// knownMissed).
func TestShippedModelsOnCTSeries(t *testing.T) {
	if testing.Short() {
		t.Skip("replays 29 real slices through nine selections")
	}
	data := testenv.SharedData(t)
	root := testenv.RepoRoot(t)
	checks := []massCheck{
		{folder: "popi_00_141", files: sliceNames("00-slice%03d", 55, 69, 100, 138), mass: sliceNames("00-slice%03d", 57, 67),
			box: [4]int{240, 265, 155, 182}},
		{folder: "lungdx_a0002_30", files: sliceNames("1-%02d", 12, 20, 3, 27), mass: sliceNames("1-%02d", 14, 19),
			box: [4]int{258, 312, 140, 205}},
		{folder: "lungmask_1", files: []string{"0"}},
	}
	var inputs []string
	type slice struct {
		body  *imgx.Mask
		check *massCheck
		mass  bool
	}
	slices := map[string]slice{}
	for k := range checks {
		c := &checks[k]
		for _, f := range c.files {
			path := filepath.Join(data, "ct_series", c.folder, f+".dcm")
			img, err := dicomio.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			fr := img.Frames[0]
			r, err := lungfield.ComputeDetail(fr.HU, fr.SpacingRowMm, fr.SpacingColMm, lungfield.Options{})
			if err != nil {
				t.Fatalf("%s: no body: %v", path, err)
			}
			isMass := false
			for _, m := range c.mass {
				isMass = isMass || m == f
			}
			slices[f] = slice{body: r.Body, check: c, mass: isMass}
			inputs = append(inputs, path)
		}
	}
	dir := t.TempDir()
	masksOut := filepath.Join(dir, "masks")
	rep := runReplay(t, filepath.Join(root, "models"), 10*time.Minute,
		replayArgs{inputs: inputs, models: []string{"all"}, report: filepath.Join(dir, "r.json"), masksOut: masksOut})
	if len(rep.Errors) != 0 {
		t.Fatalf("errors: %+v", rep.Errors)
	}
	models, err := os.ReadDir(masksOut)
	if err != nil {
		t.Fatal(err)
	}
	if len(models) != 9 {
		t.Fatalf("%d model folders in %s, want the 9 selections of 'all'", len(models), masksOut)
	}
	for _, m := range models {
		outside, predicted, inBoxes := 0, 0, 0 // inBoxes: on the mass slices, inside their box
		found := map[string]int{}              // folder → mass slices with the mass found
		for id, s := range slices {
			// several inputs: ids are "<input base name>/<id>"
			pred := readMaskPNG(t, filepath.Join(masksOut, m.Name(), id, id+".png"))
			if pred.Rows != s.body.Rows || pred.Cols != s.body.Cols {
				t.Fatalf("%s %s: mask %d×%d for a %d×%d slice", m.Name(), id, pred.Rows, pred.Cols, s.body.Rows, s.body.Cols)
			}
			in := 0
			b := s.check.box
			for i, v := range pred.Pix {
				if v == 0 {
					continue
				}
				predicted++
				if s.body.Pix[i] == 0 {
					outside++
				}
				if y, x := i/pred.Cols, i%pred.Cols; y >= b[0] && y <= b[1] && x >= b[2] && x <= b[3] {
					in++
				}
			}
			if s.mass {
				inBoxes += in
				if in >= minInBox {
					found[s.check.folder]++
				}
			}
		}
		t.Logf("%-26s predicted %6d (%6d in the mass boxes), outside the body %d, mass found on popi %d/11, lungdx %d/6 slices",
			m.Name(), predicted, inBoxes, outside, found["popi_00_141"], found["lungdx_a0002_30"])
		if outside != 0 {
			t.Errorf("%s: %d predicted pixels outside the body", m.Name(), outside)
		}
		for _, c := range checks {
			if why, ok := knownMissed[m.Name()+"/"+c.folder]; ok {
				if found[c.folder] >= minSlices {
					t.Errorf("%s: found the mass of %s on %d slices, but knownMissed says %q: remove the entry", m.Name(), c.folder, found[c.folder], why)
				} else {
					t.Logf("%s: known miss on %s: %s", m.Name(), c.folder, why)
				}
				continue
			}
			if len(c.mass) > 0 && found[c.folder] < minSlices {
				t.Errorf("%s: the visible mass of %s found on %d of its %d slices (at least %d pixels of its box predicted), want %d",
					m.Name(), c.folder, found[c.folder], len(c.mass), minInBox, minSlices)
			}
		}
	}
}

func readMaskPNG(t *testing.T, path string) *imgx.Mask {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		ents, _ := os.ReadDir(filepath.Dir(path))
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("%v (the folder holds %v)", err, names)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b := img.Bounds()
	m := imgx.NewMask(b.Dy(), b.Dx())
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			if r, _, _, _ := img.At(b.Min.X+x, b.Min.Y+y).RGBA(); r != 0 {
				m.Pix[y*b.Dx()+x] = 1
			}
		}
	}
	return m
}
