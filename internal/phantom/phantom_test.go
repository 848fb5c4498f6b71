package phantom

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/ingest/pickle"
	"github.com/lungseg/lungseg/ingest/pngpair"
)

// small keeps the tests fast: 128×112 at 2 mm covers a 256 mm field, so
// nodules up to 30 mm still fit in the lungs.
var small = Options{Rows: 128, Cols: 112, SpacingMm: 2}

func TestLungRADS(t *testing.T) {
	for _, tc := range []struct {
		d    float64
		want string
	}{
		{3, LR2}, {5.99, LR2}, {6, LR3}, {7.99, LR3}, {8, LR4A}, {14.99, LR4A}, {15, LR4B}, {30, LR4B},
	} {
		if got := LungRADS(tc.d); got != tc.want {
			t.Errorf("LungRADS(%v) = %s, want %s", tc.d, got, tc.want)
		}
	}
}

// nodulePixels counts the mask pixels near nodule n.
func nodulePixels(s *Slice, n Nodule) int {
	// Own pixels lie within the radius times the largest edge factor
	// (1.12); other nodules are at least 2 pixels further.
	ext := n.SectionDiameterMm/2/s.SpacingMm*1.12 + 1e-6
	c := 0
	for y := max(0, int(n.Row-ext)); y <= min(s.Mask.Rows-1, int(n.Row+ext)+1); y++ {
		for x := max(0, int(n.Col-ext)); x <= min(s.Mask.Cols-1, int(n.Col+ext)+1); x++ {
			if s.Mask.Pix[y*s.Mask.Cols+x] != 0 && math.Hypot(float64(y)-n.Row, float64(x)-n.Col) <= ext {
				c++
			}
		}
	}
	return c
}

// checkSlice checks the invariants of one slice: binary masks, mask
// pixels accounted for by the listed nodules, diameters measured from the
// mask within one pixel spacing, the label and the HU range.
func checkSlice(t *testing.T, s *Slice, o Options) {
	t.Helper()
	o = o.withDefaults()
	if s.HU.Rows != o.Rows || s.HU.Cols != o.Cols || s.Mask.Rows != o.Rows || s.Mask.Cols != o.Cols || len(s.Mask.Pix) != o.Rows*o.Cols {
		t.Fatalf("slice %d: sizes HU %d×%d mask %d×%d", s.Index, s.HU.Rows, s.HU.Cols, s.Mask.Rows, s.Mask.Cols)
	}
	for _, v := range s.Mask.Pix {
		if v > 1 {
			t.Fatalf("slice %d: mask value %d", s.Index, v)
		}
	}
	if lo, hi := slices.Min(s.HU.Pix), slices.Max(s.HU.Pix); lo < HUMin || hi > HUMax {
		t.Errorf("slice %d: HU range [%d, %d]", s.Index, lo, hi)
	}
	total, largest := 0, 0.0
	for _, n := range s.Nodules {
		total += n.Pixels
		largest = math.Max(largest, n.DiameterMm)
		if got := nodulePixels(s, n); got != n.Pixels {
			t.Errorf("slice %d nodule %d: %d mask pixels near it, Pixels says %d", s.Index, n.ID, got, n.Pixels)
		}
		measured := 2 * math.Sqrt(float64(n.Pixels)/math.Pi) * s.SpacingMm
		if math.Abs(measured-n.SectionDiameterMm) > s.SpacingMm {
			t.Errorf("slice %d nodule %d: mask diameter %.2f mm, section %.2f mm (spacing %.2f)",
				s.Index, n.ID, measured, n.SectionDiameterMm, s.SpacingMm)
		}
		if n.DiameterMm < o.MinDiameterMm-1e-9 || n.DiameterMm > o.MaxDiameterMm+1e-9 || n.SectionDiameterMm > n.DiameterMm+1e-9 {
			t.Errorf("slice %d nodule %d: diameter %v section %v outside [%v, %v]", s.Index, n.ID, n.DiameterMm, n.SectionDiameterMm, o.MinDiameterMm, o.MaxDiameterMm)
		}
		for i, v := range s.Mask.Pix {
			if v != 0 && s.Lung.Pix[i] == 0 {
				t.Fatalf("slice %d: nodule pixel %d outside the lungs", s.Index, i)
			}
		}
	}
	if got := s.Mask.Count(); got != total {
		t.Errorf("slice %d: mask has %d pixels, nodules %d", s.Index, got, total)
	}
	want := ""
	if len(s.Nodules) > 0 {
		want = LungRADS(largest)
	}
	if s.Label != want {
		t.Errorf("slice %d: label %q, want %q", s.Index, s.Label, want)
	}
}

func TestIndependentSlices(t *testing.T) {
	const n = 120
	sl := Generate(1, n, small)
	empty := 0
	labels := map[string]int{}
	irregular := 0
	for i := range sl {
		checkSlice(t, &sl[i], small)
		if len(sl[i].Nodules) == 0 {
			empty++
		}
		labels[sl[i].Label]++
		for _, nd := range sl[i].Nodules {
			if nd.Irregular {
				irregular++
			}
		}
		if sl[i].PositionMm != float64(i)*1.25 || sl[i].Index != i {
			t.Errorf("slice %d: index %d position %v", i, sl[i].Index, sl[i].PositionMm)
		}
	}
	if f := float64(empty) / n; f < 0.1 || f > 0.45 {
		t.Errorf("%d of %d slices empty, want about 25%%", empty, n)
	}
	for _, l := range []string{LR2, LR3, LR4A, LR4B} {
		if labels[l] < n/20 {
			t.Errorf("label %s on %d of %d slices", l, labels[l], n)
		}
	}
	if irregular == 0 {
		t.Error("no irregular nodule")
	}
}

func TestDefaultSize(t *testing.T) {
	s := Generate(42, 1, Options{EmptyFraction: -1})[0]
	if s.HU.Rows != 512 || s.HU.Cols != 512 || s.SpacingMm != 0.7 {
		t.Fatalf("default slice %d×%d at %v mm", s.HU.Rows, s.HU.Cols, s.SpacingMm)
	}
	if len(s.Nodules) == 0 {
		t.Fatal("EmptyFraction -1 gave an empty slice")
	}
	checkSlice(t, &s, Options{})
}

func TestAnatomy(t *testing.T) {
	o := small
	o.NoiseSigma = -1
	s := Generate(3, 1, o)[0]
	at := func(r, c int) int16 { return s.HU.Pix[r*s.HU.Cols+c] }
	if v := at(0, 0); v != HUAir {
		t.Errorf("corner %d HU, want air %d", v, HUAir)
	}
	// Between the lungs (mediastinum): soft tissue.
	if v := at(s.HU.Rows/2, s.HU.Cols/2); v != HUSoftTissue {
		t.Errorf("centre %d HU, want soft tissue %d", v, HUSoftTissue)
	}
	var lung []int16
	fat := 0
	for i, v := range s.HU.Pix {
		if s.Lung.Pix[i] != 0 && s.Mask.Pix[i] == 0 && v < -500 {
			lung = append(lung, v)
		}
		if v == HUFat {
			fat++
		}
	}
	if len(lung) < len(s.HU.Pix)/10 {
		t.Fatalf("only %d lung pixels", len(lung))
	}
	if lo, hi := slices.Min(lung), slices.Max(lung); lo < HULung-45 || hi > HULung+45 {
		t.Errorf("lung parenchyma HU in [%d, %d]", lo, hi)
	}
	if fat == 0 {
		t.Error("no fat rim")
	}
	// Noise: with σ 20 the air outside the body has a standard deviation
	// near 20.
	noisy := Generate(3, 1, small)[0]
	var sum, sum2, cnt float64
	for y := range 6 {
		for x := range noisy.HU.Cols {
			v := float64(noisy.HU.Pix[y*noisy.HU.Cols+x])
			sum, sum2, cnt = sum+v, sum2+v*v, cnt+1
		}
	}
	mean := sum / cnt
	sd := math.Sqrt(sum2/cnt - mean*mean)
	if math.Abs(mean-HUAir) > 5 || sd < 15 || sd > 25 {
		t.Errorf("air mean %.1f sd %.1f, want -1000 and 20", mean, sd)
	}
}

func TestDeterminism(t *testing.T) {
	for _, o := range []Options{small, {Rows: 96, Cols: 96, SpacingMm: 2, Series: true}} {
		a := Generate(11, 6, o)
		b := Generate(11, 6, o)
		c := Generate(12, 6, o)
		differ := false
		for i := range a {
			if !slices.Equal(a[i].HU.Pix, b[i].HU.Pix) || !slices.Equal(a[i].Mask.Pix, b[i].Mask.Pix) ||
				a[i].Label != b[i].Label || a[i].InstanceUID != b[i].InstanceUID {
				t.Fatalf("series=%v slice %d differs between runs", o.Series, i)
			}
			if !slices.Equal(a[i].HU.Pix, c[i].HU.Pix) {
				differ = true
			}
		}
		if !differ {
			t.Errorf("series=%v: seeds 11 and 12 give the same slices", o.Series)
		}
		if a[0].SeriesUID == c[0].SeriesUID {
			t.Error("seeds 11 and 12 share a series UID")
		}
	}
	// Independent slices do not depend on how many are generated.
	short, long := Generate(5, 2, small), Generate(5, 4, small)
	for i := range short {
		if !slices.Equal(short[i].HU.Pix, long[i].HU.Pix) {
			t.Errorf("slice %d depends on n", i)
		}
	}
	// The files written are the same bytes.
	sl := Generate(9, 2, small)
	d1, d2 := t.TempDir(), t.TempDir()
	for _, d := range []string{d1, d2} {
		if err := WriteDICOM(d, sl); err != nil {
			t.Fatal(err)
		}
		if err := WritePNG(d, sl); err != nil {
			t.Fatal(err)
		}
		if err := WritePKL(filepath.Join(d, "p.pkl"), sl); err != nil {
			t.Fatal(err)
		}
	}
	for _, rel := range []string{"slice0001.dcm", "slice0002.dcm", "masks/slice0001.png", "slice0002_image.png", "slice0002_mask.png", "p.pkl"} {
		a, err1 := os.ReadFile(filepath.Join(d1, rel))
		b, err2 := os.ReadFile(filepath.Join(d2, rel))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs between two writes (%v, %v)", rel, err1, err2)
		}
	}
}

func TestSeries(t *testing.T) {
	o := Options{Rows: 128, Cols: 128, SpacingMm: 2, SliceSpacingMm: 2, Series: true, MaxNodules: 3, MinDiameterMm: 10}
	const n = 24
	sl := Generate(21, n, o)
	sections := map[int][]float64{} // nodule id → section diameters by slice (0 = absent)
	for i := range sl {
		checkSlice(t, &sl[i], o)
		if sl[i].SeriesUID != sl[0].SeriesUID || sl[i].StudyUID != sl[0].StudyUID {
			t.Error("slices of one series have different UIDs")
		}
		if sl[i].PositionMm != float64(i)*2 {
			t.Errorf("slice %d at %v mm", i, sl[i].PositionMm)
		}
		for _, nd := range sl[i].Nodules {
			if sections[nd.ID] == nil {
				sections[nd.ID] = make([]float64, n)
			}
			sections[nd.ID][i] = nd.SectionDiameterMm
		}
	}
	if len(sections) == 0 {
		t.Fatal("no nodule in the series")
	}
	for id, d := range sections {
		// Present on consecutive slices, growing then shrinking.
		first := slices.IndexFunc(d, func(x float64) bool { return x > 0 })
		last := len(d) - 1
		for d[last] == 0 {
			last--
		}
		run := d[first : last+1]
		if slices.Contains(run, 0) {
			t.Errorf("nodule %d: gap in %v", id, run)
		}
		if len(run) < 3 {
			t.Errorf("nodule %d of ≥10 mm on %d slices of 2 mm", id, len(run))
		}
		peak := slices.Index(run, slices.Max(run))
		for i := 1; i <= peak; i++ {
			if run[i] < run[i-1] {
				t.Errorf("nodule %d: sections %v not unimodal", id, run)
			}
		}
		for i := peak + 1; i < len(run); i++ {
			if run[i] > run[i-1] {
				t.Errorf("nodule %d: sections %v not unimodal", id, run)
			}
		}
	}
}

func TestRoundTripDICOM(t *testing.T) {
	dir := t.TempDir()
	sl := Generate(4, 3, Options{Rows: 96, Cols: 80, SpacingMm: 2.5, EmptyFraction: -1})
	if err := WriteDICOM(dir, sl); err != nil {
		t.Fatal(err)
	}
	for i := range sl {
		s := &sl[i]
		var items []ingest.Item
		err := dicomio.Read(context.Background(), filepath.Join(dir, s.Name()+".dcm"), dir, filepath.Join(dir, MasksDir),
			func(it ingest.Item) error { items = append(items, it); return nil })
		if err != nil || len(items) != 1 || items[0].Err != nil {
			t.Fatalf("%s: %v %v", s.Name(), err, items)
		}
		it := items[0]
		if !slices.Equal(it.HU.Pix, s.HU.Pix) || it.Mask == nil || !slices.Equal(it.Mask.Pix, s.Mask.Pix) {
			t.Errorf("%s: pixels differ after the DICOM round trip", s.Name())
		}
		m := it.Meta
		if m.Id != s.Name() || m.SlicePosition != s.PositionMm || m.SpacingRowMm != 2.5 || m.SpacingAssumed ||
			m.SeriesUid != s.SeriesUID || m.InstanceUid != s.InstanceUID || m.Rows != 96 || m.Cols != 80 {
			t.Errorf("%s: meta %v", s.Name(), m)
		}
	}
	if err := WriteDICOM(dir, append(sl, sl[0])); err == nil {
		t.Error("duplicate names accepted")
	}
}

func TestRoundTripPNG(t *testing.T) {
	dir := t.TempDir()
	sl := Generate(6, 3, Options{Rows: 64, Cols: 72, SpacingMm: 3})
	if err := WritePNG(dir, sl); err != nil {
		t.Fatal(err)
	}
	for i := range sl {
		s := &sl[i]
		var it ingest.Item
		err := pngpair.Read(context.Background(), filepath.Join(dir, s.Name()+pngpair.ImageSuffix), dir,
			func(x ingest.Item) error { it = x; return nil })
		if err != nil || it.Err != nil {
			t.Fatalf("%s: %v %v", s.Name(), err, it.Err)
		}
		if it.Meta.Id != s.Name() || !slices.Equal(it.HU.Pix, s.HU.Pix) || it.Mask == nil || !slices.Equal(it.Mask.Pix, s.Mask.Pix) {
			t.Errorf("%s: differs after the PNG round trip", s.Name())
		}
	}
}

func TestRoundTripPKL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "phantom.pkl")
	sl := Generate(8, 4, Options{Rows: 64, Cols: 64, SpacingMm: 3, EmptyFraction: -1})
	if err := WritePKL(path, sl); err != nil {
		t.Fatal(err)
	}
	var items []ingest.Item
	if err := pickle.Read(context.Background(), path, func(it ingest.Item) error { items = append(items, it); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(items) != len(sl) {
		t.Fatalf("%d items, want %d", len(items), len(sl))
	}
	for i, it := range items {
		if it.Err != nil {
			t.Fatalf("row %d: %v", i, it.Err)
		}
		if it.Meta.Label != sl[i].Label || !slices.Equal(it.HU.Pix, sl[i].HU.Pix) || it.Mask == nil || !slices.Equal(it.Mask.Pix, sl[i].Mask.Pix) {
			t.Errorf("row %d differs after the pickle round trip", i)
		}
	}
}

func BenchmarkGenerate512(b *testing.B) {
	for b.Loop() {
		Generate(1, 1, Options{})
	}
}
