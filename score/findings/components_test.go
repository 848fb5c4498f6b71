package findings

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

func TestCategory(t *testing.T) {
	tests := []struct {
		d    float64
		want string
	}{
		{0, LR2}, {5.99, LR2}, {6, LR3}, {7.99, LR3}, {8, LR4A}, {14.99, LR4A}, {15, LR4B}, {40, LR4B},
	}
	for _, tc := range tests {
		if got := Category(tc.d); got != tc.want {
			t.Errorf("Category(%v) = %s, want %s", tc.d, got, tc.want)
		}
	}
	if !AtLeast(LR4B, LR4A) || !AtLeast(LR4A, LR4A) || AtLeast(LR3, LR4A) || AtLeast("", LR2) || !AtLeast("4A", LR3) {
		t.Error("AtLeast ordering wrong")
	}
}

// disc draws the pixels whose centres lie within an ellipse of semi-axes
// ar (rows) and ac (columns) pixels, as the phantom draws nodules.
func disc(rows, cols int, cr, cc, ar, ac float64) *imgx.Mask {
	m := imgx.NewMask(rows, cols)
	for r := range rows {
		for c := range cols {
			dr, dc := (float64(r)-cr)/ar, (float64(c)-cc)/ac
			if dr*dr+dc*dc <= 1 {
				m.Pix[r*cols+c] = 1
			}
		}
	}
	return m
}

// TestDiameterOfDiscs measures discs of random size and sub-pixel centre,
// with square and with unequal pixel spacing, and checks the longest
// diameter against the disc's within one pixel spacing, and the area and
// centroid.
func TestDiameterOfDiscs(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	worst := 0.0
	for i := range 300 {
		sr := 0.5 + r.Float64()*0.5
		sc := sr
		if i%3 == 0 {
			sc = sr * (0.8 + 0.4*r.Float64()) // anisotropic
		}
		dMm := 3 + r.Float64()*30
		cr, cc := 40+r.Float64(), 40+r.Float64()
		m := disc(80, 80, cr, cc, dMm/2/sr, dMm/2/sc)
		meta := &lungsegv1.SliceMeta{Id: "s", SpacingRowMm: sr, SpacingColMm: sc}
		sf, err := Config{MinSizePx: 1}.Analyze(SliceInput{Meta: meta, Pred: m})
		if err != nil {
			t.Fatal(err)
		}
		if len(sf.Components) != 1 {
			t.Fatalf("disc %d: %d components", i, len(sf.Components))
		}
		k := sf.Components[0]
		tol := math.Max(sr, sc)
		if e := math.Abs(k.DiameterMm - dMm); e > tol {
			t.Errorf("disc %d (%.2f mm, spacing %.3f×%.3f): diameter %.2f mm", i, dMm, sr, sc, k.DiameterMm)
		} else {
			worst = math.Max(worst, e/tol)
		}
		if k.AreaPx != int64(m.Count()) || math.Abs(k.AreaMm2-float64(m.Count())*sr*sc) > 1e-9 {
			t.Errorf("disc %d: area %d px %.2f mm²", i, k.AreaPx, k.AreaMm2)
		}
		if math.Abs(k.CentroidRow-cr) > 0.5 || math.Abs(k.CentroidCol-cc) > 0.5 {
			t.Errorf("disc %d: centroid (%.2f, %.2f), want (%.2f, %.2f)", i, k.CentroidRow, k.CentroidCol, cr, cc)
		}
		if k.Category != Category(k.DiameterMm) {
			t.Errorf("disc %d: category %s for %.2f mm", i, k.Category, k.DiameterMm)
		}
	}
	t.Logf("worst diameter error: %.2f pixel spacings", worst)
}

func TestAnalyzeStatistics(t *testing.T) {
	m := testenv.MaskOf(
		"##....",
		"##....",
		"....#.",
		"......")
	hu := imgx.NewHU(4, 6)
	prob := make([]float32, 24)
	for i := range hu.Pix {
		hu.Pix[i] = int16(i * 10)
		prob[i] = float32(i) / 100
	}
	meta := &lungsegv1.SliceMeta{Id: "x", Rows: 4, Cols: 6} // no spacing: default, assumed
	c := Config{MinSizePx: 1, DefaultSpacingMm: 0.5}
	sf, err := c.Analyze(SliceInput{Meta: meta, Pred: m, HU: hu, Prob: prob})
	if err != nil {
		t.Fatal(err)
	}
	if len(sf.Components) != 2 {
		t.Fatalf("%d components", len(sf.Components))
	}
	a := sf.Components[0]
	// Pixels 0, 1, 6, 7.
	if !a.HuKnown || a.MeanHu != 35 || !a.ProbKnown || math.Abs(a.MeanProb-0.035) > 1e-6 {
		t.Errorf("means: HU %v (%v) p %v (%v)", a.MeanHu, a.HuKnown, a.MeanProb, a.ProbKnown)
	}
	if a.AreaMm2 != 1 || a.MinRow != 0 || a.MaxRow != 1 || a.MinCol != 0 || a.MaxCol != 1 {
		t.Errorf("area %v box %d,%d-%d,%d", a.AreaMm2, a.MinRow, a.MinCol, a.MaxRow, a.MaxCol)
	}
	// Pixel centres √2 px apart, plus half a pixel.
	if want := (math.Sqrt2 + 0.5) * 0.5; math.Abs(a.DiameterMm-want) > 1e-9 {
		t.Errorf("diameter %v, want %v", a.DiameterMm, want)
	}
	if b := sf.Components[1]; b.DiameterMm != 0.5 || b.MeanHu != 160 {
		t.Errorf("single pixel: diameter %v HU %v", b.DiameterMm, b.MeanHu)
	}
	if sf.Category != LR2 || !strings.Contains(sf.CategoryBasis, "size-based estimate") {
		t.Errorf("category %q basis %q", sf.Category, sf.CategoryBasis)
	}
	// Without HU and probabilities the means are unknown, not zero.
	sf, err = c.Analyze(SliceInput{Meta: meta, Pred: m})
	if err != nil {
		t.Fatal(err)
	}
	if sf.Components[0].HuKnown || sf.Components[0].ProbKnown {
		t.Error("means known without HU or probabilities")
	}
	// Mismatched inputs are errors.
	if _, err := c.Analyze(SliceInput{Meta: meta, Pred: m, Prob: prob[:5]}); err == nil {
		t.Error("short probability map accepted")
	}
	if _, err := c.Analyze(SliceInput{Meta: meta, Pred: m, HU: imgx.NewHU(3, 6)}); err == nil {
		t.Error("HU of another size accepted")
	}
	if _, err := c.Analyze(SliceInput{Pred: m}); err == nil {
		t.Error("slice without metadata accepted")
	}
}

// BenchmarkAnalyze512 measures one 512×512 phantom slice with nodules,
// HU and probabilities.
func BenchmarkAnalyze512(b *testing.B) {
	ps := phantom.Generate(3, 1, phantom.Options{EmptyFraction: -1, MaxNodules: 2})
	s := ps[0]
	prob := make([]float32, len(s.Mask.Pix))
	meta := &lungsegv1.SliceMeta{Id: "b", Rows: 512, Cols: 512, SpacingRowMm: 0.7, SpacingColMm: 0.7}
	b.ResetTimer()
	for range b.N {
		if _, err := (Config{}).Analyze(SliceInput{Meta: meta, Pred: s.Mask, HU: s.HU, Prob: prob}); err != nil {
			b.Fatal(err)
		}
	}
}
