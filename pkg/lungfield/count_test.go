package lungfield_test

import (
	"flag"
	"image/png"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
)

var (
	countMasks  = flag.String("count-masks", "", "a folder that replay --masks-out wrote (MODEL/<slice id>.png) for a ct_series run: count the predicted pixels outside each slice's lung field and body")
	countSeries = flag.String("series", "", "with -count-masks: the ct_series folder the masks belong to")
)

// TestCountMasks is a measuring tool, not a check: with -count-masks and
// -series it logs, per model, the predicted pixels of the written masks,
// how many lie outside the lung field and outside the body, and on how
// many slices any lies outside the body, and how many lie in the box of
// the series' visible mass on its slices (TestRealSeries). Example:
//
//	go test ./pkg/lungfield -run CountMasks -v -args -count-masks /tmp/masks -series popi_00_141
func TestCountMasks(t *testing.T) {
	if *countMasks == "" {
		t.Skip("-count-masks not given")
	}
	type field struct {
		field, body *imgx.Mask
		mass        bool // a slice of the series' visible mass
	}
	var mass seriesCase
	for _, c := range realCases {
		if c.folder == *countSeries {
			mass = c
		}
	}
	fields := map[string]field{}
	for k, s := range readSeries(t, *countSeries) {
		r, err := lungfield.ComputeDetail(s.hu, s.rowMm, s.colMm, lungfield.Options{})
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		fields[s.name] = field{r.Field, r.Body, k >= mass.mass[0] && k <= mass.mass[1]}
	}
	models, err := os.ReadDir(*countMasks)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range models {
		if m.IsDir() {
			names = append(names, m.Name())
		}
	}
	sort.Strings(names)
	t.Logf("%-28s %6s %9s %14s %13s %17s %9s", "model", "slices", "predicted", "outside field", "outside body", "slices out body", "mass box")
	for _, name := range names {
		var slices, pred, outField, outBody, slicesOutBody, inMass int
		for id, f := range fields {
			file, err := os.Open(filepath.Join(*countMasks, name, id+".png"))
			if err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(file)
			file.Close()
			if err != nil {
				t.Fatal(err)
			}
			b := img.Bounds()
			if b.Dy() != f.field.Rows || b.Dx() != f.field.Cols {
				t.Fatalf("%s/%s: %v mask for a %d×%d slice", name, id, b, f.field.Rows, f.field.Cols)
			}
			slices++
			body := 0
			for y := 0; y < b.Dy(); y++ {
				for x := 0; x < b.Dx(); x++ {
					if r, _, _, _ := img.At(b.Min.X+x, b.Min.Y+y).RGBA(); r == 0 {
						continue
					}
					pred++
					i := y*f.field.Cols + x
					if f.field.Pix[i] == 0 {
						outField++
					}
					if f.body.Pix[i] == 0 {
						body++
					}
					if b := mass.massBox; f.mass && y >= b.y0 && y <= b.y1 && x >= b.x0 && x <= b.x1 {
						inMass++
					}
				}
			}
			outBody += body
			if body > 0 {
				slicesOutBody++
			}
		}
		t.Logf("%-28s %6d %9d %14d %13d %17d %9d", name, slices, pred, outField, outBody, slicesOutBody, inMass)
	}
}
