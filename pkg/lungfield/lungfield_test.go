package lungfield_test

import (
	"errors"
	"flag"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/lungfield"
	"github.com/lungseg/lungseg/pkg/overlay"
	"github.com/lungseg/lungseg/pkg/testenv"
)

var pngDir = flag.String("png", "", "write overlays of the field (yellow), body (cyan) and lungs (blue) on the real series into this folder")

// realSlice is one slice of the ct_series of the shared data.
type realSlice struct {
	name         string
	hu           *imgx.HU
	rowMm, colMm float64
}

func readSeries(t testing.TB, folder string) []realSlice {
	t.Helper()
	dir := filepath.Join(testenv.SharedData(t), "ct_series", folder)
	files, err := filepath.Glob(filepath.Join(dir, "*.dcm"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no DICOM in %s: %v", dir, err)
	}
	var out []realSlice
	for _, f := range files {
		img, err := dicomio.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		fr := img.Frames[0]
		out = append(out, realSlice{name: strings.TrimSuffix(filepath.Base(f), ".dcm"), hu: fr.HU, rowMm: fr.SpacingRowMm, colMm: fr.SpacingColMm})
	}
	return out
}

func writeOverlay(t *testing.T, name string, s realSlice, r *lungfield.Result) {
	t.Helper()
	if *pngDir == "" {
		return
	}
	img, err := overlay.Render(s.hu, overlay.LungWindow, 0, []overlay.Layer{
		{Mask: r.Body, Color: color.RGBA{0, 255, 255, 255}},
		{Mask: r.Lungs, Color: color.RGBA{60, 60, 255, 255}},
		{Mask: r.Field, Color: color.RGBA{255, 255, 0, 255}, Thickness: 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(*pngDir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(*pngDir, name+".png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
}

// TestRealSeriesOverview logs per-slice figures and writes the overlays;
// it runs only with -png.
func TestRealSeriesOverview(t *testing.T) {
	if *pngDir == "" {
		t.Skip("-png not given")
	}
	for _, folder := range []string{"lungmask_1", "lungdx_a0002_30", "popi_00_141"} {
		for _, s := range readSeries(t, folder) {
			r, err := lungfield.ComputeDetail(s.hu, s.rowMm, s.colMm, lungfield.Options{})
			if err != nil {
				t.Logf("%s/%s: %v", folder, s.name, err)
				continue
			}
			t.Logf("%s/%s: body %d lungs %d field %d", folder, s.name, r.Body.Count(), r.Lungs.Count(), r.Field.Count())
			writeOverlay(t, folder+"_"+s.name, s, r)
		}
	}
}

// box is an inclusive rectangle of rows and columns.
type box struct{ y0, y1, x0, x1 int }

// seriesCase says what must hold on the slices of one real series. The
// rows and boxes were read off the slices in a lung window.
type seriesCase struct {
	folder string
	// tableFrom: the CT table lies at rows ≥ tableFrom; the body and the
	// field must not reach it (and pixels > -500 HU must be there, so
	// that the check is not empty).
	tableFrom int
	// bothLungs: slices (by index) on which each half of the image must
	// hold at least minHalf field pixels.
	bothLungs [2]int
	minHalf   int
	// mass: slices (by index, inclusive) on which every pixel of box must
	// be in the field: the visible mass and the lung around it.
	mass    [2]int
	massBox box
	// sensorRows: no field pixel lies above this row on any slice, and on
	// slice sensorSlice the body reaches above it (a sensor on the skin
	// with air inside, which must not count as lung).
	sensorRows, sensorSlice int
}

var realCases = []seriesCase{
	// Mass: slices 00-slice057..067, round, about 25 px across,
	// centred near row 252, column 168 on slice 062.
	{folder: "popi_00_141", tableFrom: 395, bothLungs: [2]int{40, 110}, minHalf: 10000,
		mass: [2]int{57, 67}, massBox: box{240, 265, 155, 182},
		// The respiratory sensor on the anterior abdomen, rows 15-45 on
		// 00-slice138.
		sensorRows: 60, sensorSlice: 138},
	// Mass: slices 1-14..1-19, irregular, from the right hilum
	// backwards, rows about 255-330, columns 120-235 on 1-16; the box
	// is the part of it that every one of those slices shows.
	{folder: "lungdx_a0002_30", tableFrom: 445, bothLungs: [2]int{7, 23}, minHalf: 10000,
		mass: [2]int{13, 18}, massBox: box{258, 312, 140, 205}},
	{folder: "lungmask_1", bothLungs: [2]int{0, 0}, minHalf: 10000, mass: [2]int{-1, -1}},
}

func TestRealSeries(t *testing.T) {
	for _, c := range realCases {
		t.Run(c.folder, func(t *testing.T) {
			for k, s := range readSeries(t, c.folder) {
				r, err := lungfield.ComputeDetail(s.hu, s.rowMm, s.colMm, lungfield.Options{})
				if err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				rows, cols := s.hu.Rows, s.hu.Cols
				var left, right, tableHU, tableBody, outside, aboveField, aboveBody int
				for i, f := range r.Field.Pix {
					y, x := i/cols, i%cols
					if f != 0 && r.Body.Pix[i] == 0 {
						outside++
					}
					if f != 0 && x < cols/2 {
						left++
					} else if f != 0 {
						right++
					}
					if y < c.sensorRows {
						aboveField += int(f)
						aboveBody += int(r.Body.Pix[i])
					}
					if c.tableFrom > 0 && y >= c.tableFrom {
						if s.hu.Pix[i] > -500 {
							tableHU++
						}
						tableBody += int(r.Body.Pix[i])
					}
				}
				if aboveField != 0 || (c.sensorRows > 0 && k == c.sensorSlice && aboveBody == 0) {
					t.Errorf("%s: above row %d: %d field pixels, %d body pixels", s.name, c.sensorRows, aboveField, aboveBody)
				}
				if outside != 0 {
					t.Errorf("%s: %d field pixels outside the body", s.name, outside)
				}
				if c.tableFrom > 0 && (tableHU < 300 || tableBody != 0) {
					t.Errorf("%s: rows from %d (the table): %d pixels > -500 HU, %d of them in the body", s.name, c.tableFrom, tableHU, tableBody)
				}
				if k >= c.bothLungs[0] && k <= c.bothLungs[1] && (left < c.minHalf || right < c.minHalf) {
					t.Errorf("%s: field pixels %d in the left half, %d in the right, want ≥ %d each", s.name, left, right, c.minHalf)
				}
				if k >= c.mass[0] && k <= c.mass[1] {
					miss := 0
					for y := c.massBox.y0; y <= c.massBox.y1; y++ {
						for x := c.massBox.x0; x <= c.massBox.x1; x++ {
							if r.Field.Pix[y*cols+x] == 0 {
								miss++
							}
						}
					}
					if miss != 0 {
						t.Errorf("%s: %d pixels of the mass box %v outside the field", s.name, miss, c.massBox)
					}
				}
				_ = rows
			}
		})
	}
}

// withTable adds a CT table to a phantom slice: a band of HU 200, 12 px
// thick, starting 8 px below the body's lowest row. It returns the band.
func withTable(t *testing.T, hu *imgx.HU) *imgx.Mask {
	t.Helper()
	bottom := -1
	for i, v := range hu.Pix {
		if v > -500 {
			bottom = max(bottom, i/hu.Cols)
		}
	}
	if bottom+20 >= hu.Rows {
		t.Fatalf("no room for a table below row %d", bottom)
	}
	band := imgx.NewMask(hu.Rows, hu.Cols)
	for y := bottom + 8; y < bottom+20; y++ {
		for x := 0; x < hu.Cols; x++ {
			hu.Pix[y*hu.Cols+x] = 200
			band.Pix[y*hu.Cols+x] = 1
		}
	}
	return band
}

// lungExtremes returns, on the middle row of the lung in the given half of
// the image (left: columns < cols/2), the lung's outermost and innermost
// columns.
func lungExtremes(lung *imgx.Mask, left bool) (row, outer, inner int) {
	y0, y1 := lung.Rows, -1
	in := func(x int) bool { return (x < lung.Cols/2) == left }
	for i, v := range lung.Pix {
		if v != 0 && in(i%lung.Cols) {
			y0, y1 = min(y0, i/lung.Cols), max(y1, i/lung.Cols)
		}
	}
	row = (y0 + y1) / 2
	lo, hi := lung.Cols, -1
	for x := 0; x < lung.Cols; x++ {
		if lung.Pix[row*lung.Cols+x] != 0 && in(x) {
			lo, hi = min(lo, x), max(hi, x)
		}
	}
	if left {
		return row, lo, hi
	}
	return row, hi, lo
}

// disc paints a disc of soft tissue and returns its pixels.
func disc(hu *imgx.HU, cy, cx int, rPx float64) *imgx.Mask {
	m := imgx.NewMask(hu.Rows, hu.Cols)
	for y := 0; y < hu.Rows; y++ {
		for x := 0; x < hu.Cols; x++ {
			dy, dx := float64(y-cy), float64(x-cx)
			if dy*dy+dx*dx <= rPx*rPx {
				hu.Pix[y*hu.Cols+x] = 35
				m.Pix[y*hu.Cols+x] = 1
			}
		}
	}
	return m
}

// missing counts the pixels of m that f lacks.
func missing(m, f *imgx.Mask) int {
	n := 0
	for i, v := range m.Pix {
		if v != 0 && f.Pix[i] == 0 {
			n++
		}
	}
	return n
}

func TestPhantom(t *testing.T) {
	slices := phantom.Generate(7, 6, phantom.Options{})
	for _, s := range slices {
		hu := &imgx.HU{Rows: s.HU.Rows, Cols: s.HU.Cols, Pix: append([]int16(nil), s.HU.Pix...)}
		table := withTable(t, hu)
		// A juxtapleural nodule of 8 mm centred on the outer edge of the
		// left lung (half of it in the chest wall), and a 30 mm mass in
		// the right lung against its inner (mediastinal) edge.
		y, outer, _ := lungExtremes(s.Lung, true)
		juxta := disc(hu, y, outer, 4/s.SpacingMm)
		y, _, inner := lungExtremes(s.Lung, false)
		mass := disc(hu, y, inner+int(14/s.SpacingMm), 15/s.SpacingMm)

		r, err := lungfield.ComputeDetail(hu, s.SpacingMm, s.SpacingMm, lungfield.Options{})
		if err != nil {
			t.Fatalf("%s: %v", s.Name(), err)
		}
		f := r.Field
		if n := missing(s.Lung, f); n != 0 {
			t.Errorf("%s: %d lung pixels outside the field", s.Name(), n)
		}
		if n := missing(s.Mask, f); n != 0 {
			t.Errorf("%s: %d nodule pixels outside the field", s.Name(), n)
		}
		if n := missing(juxta, f); n != 0 {
			t.Errorf("%s: %d pixels of the juxtapleural nodule outside the field", s.Name(), n)
		}
		if n := missing(mass, f); n != 0 {
			t.Errorf("%s: %d pixels of the mediastinal mass outside the field", s.Name(), n)
		}
		var onTable, inAir int
		for i, v := range f.Pix {
			if v == 0 {
				continue
			}
			onTable += int(table.Pix[i])
			if hu.Pix[i] < -950 && s.Lung.Pix[i] == 0 {
				inAir++
			}
		}
		if onTable != 0 || inAir != 0 {
			t.Errorf("%s: field pixels on the table %d, in the air around the body %d", s.Name(), onTable, inAir)
		}
		// The field is the lungs and a margin, not the body.
		if lf, bf := f.Count(), r.Body.Count(); float64(lf) > 0.75*float64(bf) {
			t.Errorf("%s: field %d px of a body of %d", s.Name(), lf, bf)
		}

		// Without the hull band, the closing alone loses the mass: the
		// band is what keeps it.
		noHull, err := lungfield.Compute(hu, s.SpacingMm, s.SpacingMm, lungfield.Options{HullMm: -1})
		if err != nil {
			t.Fatal(err)
		}
		if missing(mass, noHull) == 0 {
			t.Errorf("%s: the mass is in the field without the hull band too; the test does not test the band", s.Name())
		}
	}
}

func TestNoField(t *testing.T) {
	chest := phantom.Generate(3, 1, phantom.Options{NoiseSigma: -1})[0]
	small := phantom.Generate(3, 1, phantom.Options{Rows: 109, Cols: 109})[0]
	air := imgx.NewHU(256, 256)
	for i := range air.Pix {
		air.Pix[i] = -1000
	}
	// A normalised slice: z-scored lung, 0 outside the lung.
	norm := &imgx.HU{Rows: 512, Cols: 512, Pix: make([]int16, 512*512)}
	for i, v := range chest.Lung.Pix {
		if v != 0 {
			norm.Pix[i] = int16(i%5 - 2)
		}
	}
	cases := []struct {
		name         string
		hu           *imgx.HU
		rowMm, colMm float64
		err          error
	}{
		{"nodule crop", small.HU, 0.7, 0.7, lungfield.ErrTooSmall},
		{"no spacing", chest.HU, 0, 0.7, lungfield.ErrSpacing},
		{"NaN spacing", chest.HU, math.NaN(), 0.7, lungfield.ErrSpacing},
		{"normalised", norm, 0.7, 0.7, lungfield.ErrNotHU},
		{"air only", air, 0.7, 0.7, lungfield.ErrNoBody},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := lungfield.Compute(c.hu, c.rowMm, c.colMm, lungfield.Options{})
			if !errors.Is(err, c.err) || f != nil {
				t.Fatalf("got field %v, error %v; want %v", f != nil, err, c.err)
			}
		})
	}
}

// TestAbdomen: a body without lungs has an empty field (everything is
// removed), not "no field".
func TestAbdomen(t *testing.T) {
	s := phantom.Generate(5, 1, phantom.Options{})[0]
	hu := &imgx.HU{Rows: s.HU.Rows, Cols: s.HU.Cols, Pix: append([]int16(nil), s.HU.Pix...)}
	for i, v := range s.Lung.Pix {
		if v != 0 {
			hu.Pix[i] = 45 // liver
		}
	}
	// Bowel gas: a few small pockets below MinLungMm2.
	for _, c := range [][2]int{{250, 200}, {280, 300}} {
		disc(hu, c[0], c[1], 5)
		for y := c[0] - 4; y <= c[0]+4; y++ {
			for x := c[1] - 4; x <= c[1]+4; x++ {
				hu.Pix[y*hu.Cols+x] = -1000
			}
		}
	}
	f, err := lungfield.Compute(hu, s.SpacingMm, s.SpacingMm, lungfield.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := f.Count(); n != 0 {
		t.Fatalf("abdomen slice: field of %d px, want empty", n)
	}
}

func BenchmarkCompute(b *testing.B) {
	s := phantom.Generate(1, 1, phantom.Options{})[0]
	b.ResetTimer()
	for b.Loop() {
		if _, err := lungfield.Compute(s.HU, s.SpacingMm, s.SpacingMm, lungfield.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkComputeReal(b *testing.B) {
	s := readSeries(b, "popi_00_141")[62]
	b.ResetTimer()
	for b.Loop() {
		if _, err := lungfield.Compute(s.hu, s.rowMm, s.colMm, lungfield.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestRemove(t *testing.T) {
	field := imgx.NewMask(2, 3)
	field.Pix = []uint8{1, 1, 0, 0, 1, 0}
	pred := imgx.NewMask(2, 3)
	pred.Pix = []uint8{1, 0, 1, 1, 1, 0}
	if n := lungfield.Remove(pred, field); n != 2 {
		t.Fatalf("removed %d, want 2", n)
	}
	if want := []uint8{1, 0, 0, 0, 1, 0}; string(pred.Pix) != string(want) {
		t.Fatalf("pred %v, want %v", pred.Pix, want)
	}
	if n := lungfield.Remove(pred, nil); n != 0 || pred.Count() != 2 {
		t.Fatalf("nil field removed %d", n)
	}
	got, err := lungfield.FromBits(2, 3, field.PackBits(), true)
	if err != nil || string(got.Pix) != string(field.Pix) {
		t.Fatalf("FromBits: %v %v", got, err)
	}
	if got, err := lungfield.FromBits(2, 3, nil, false); got != nil || err != nil {
		t.Fatalf("FromBits without field: %v %v", got, err)
	}
	if _, err := lungfield.FromBits(2, 3, []byte{1, 2}, true); err == nil {
		t.Fatal("FromBits accepted 2 bytes for 6 pixels")
	}
}

// TestOpenedLung: a lung opened to the outside air through a gap in the
// chest wall (as a pasted nodule crop or a cut field of view leaves it)
// is still in the field.
func TestOpenedLung(t *testing.T) {
	s := phantom.Generate(9, 1, phantom.Options{})[0]
	hu := &imgx.HU{Rows: s.HU.Rows, Cols: s.HU.Cols, Pix: append([]int16(nil), s.HU.Pix...)}
	y, outer, _ := lungExtremes(s.Lung, true)
	// A channel 12 px high of lung-like HU from the left lung to the
	// image's left edge.
	for yy := y - 6; yy < y+6; yy++ {
		for x := 0; x <= outer; x++ {
			hu.Pix[yy*hu.Cols+x] = -850
		}
	}
	f, err := lungfield.Compute(hu, s.SpacingMm, s.SpacingMm, lungfield.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := missing(s.Lung, f); n != 0 {
		t.Fatalf("%d lung pixels of %d outside the field", n, s.Lung.Count())
	}
}
