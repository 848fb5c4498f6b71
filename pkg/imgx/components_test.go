package imgx_test

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
)

func TestLabels(t *testing.T) {
	tests := []struct {
		name    string
		mask    []string
		minSize int
		want    []string // label digits, '.' for 0
	}{
		{"diagonal joins (8-connectivity)", []string{
			"#...",
			".#..",
			"..#.",
			"...."}, 1, []string{
			"1...",
			".1..",
			"..1.",
			"...."}},
		{"raster order of first pixel", []string{
			"..##",
			"#...",
			"#..#"}, 1, []string{
			"..11",
			"2...",
			"2..3"}},
		{"small components dropped and the rest renumbered", []string{
			"#..##",
			"...##",
			"#....",
			"##..."}, 3, []string{
			"...11",
			"...11",
			"2....",
			"22..."}},
		{"empty", []string{"...", "..."}, 1, []string{"...", "..."}},
		{"u shape is one component", []string{
			"#.#",
			"#.#",
			"###"}, 1, []string{
			"1.1",
			"1.1",
			"111"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := testenv.MaskOf(tc.mask...)
			lab, n := imgx.Labels(m, tc.minSize)
			var got []string
			maxL := 0
			for r := 0; r < m.Rows; r++ {
				var b strings.Builder
				for c := 0; c < m.Cols; c++ {
					l := lab[r*m.Cols+c]
					if l == 0 {
						b.WriteByte('.')
					} else {
						b.WriteByte(byte('0' + l))
						maxL = max(maxL, int(l))
					}
				}
				got = append(got, b.String())
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("labels\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if n != maxL {
				t.Errorf("n = %d, highest label %d", n, maxL)
			}
		})
	}
}

func TestFeret(t *testing.T) {
	tests := []struct {
		pts  [][2]float64
		want float64
	}{
		{nil, 0},
		{[][2]float64{{1, 1}}, 0},
		{[][2]float64{{0, 0}, {3, 4}}, 5},
		{[][2]float64{{0, 0}, {1, 1}, {2, 2}, {3, 3}}, 3 * math.Sqrt2},
		{[][2]float64{{0, 0}, {0, 2}, {2, 0}, {2, 2}, {1, 1}}, 2 * math.Sqrt2},
	}
	for _, tc := range tests {
		if got := imgx.Feret(tc.pts); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("Feret(%v) = %v, want %v", tc.pts, got, tc.want)
		}
	}
}

// disc draws the pixels whose centres lie within an ellipse of semi-axes
// ar (rows) and ac (columns) pixels centred at (cr, cc).
func disc(m *imgx.Mask, cr, cc, ar, ac float64) {
	for r := range m.Rows {
		for c := range m.Cols {
			dr, dc := (float64(r)-cr)/ar, (float64(c)-cc)/ac
			if dr*dr+dc*dc <= 1 {
				m.Pix[r*m.Cols+c] = 1
			}
		}
	}
}

// TestLargestDiameterOfDiscs draws a large disc of known diameter and a
// smaller one beside it, with square and unequal spacing, and checks that
// the diameter is the large disc's within one pixel spacing.
func TestLargestDiameterOfDiscs(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 14))
	for i := range 200 {
		sr := 0.5 + r.Float64()*0.5
		sc := sr
		if i%3 == 0 {
			sc = sr * (0.8 + 0.4*r.Float64())
		}
		dMm := 4 + r.Float64()*30
		m := imgx.NewMask(100, 140)
		disc(m, 50+r.Float64(), 45+r.Float64(), dMm/2/sr, dMm/2/sc)
		// A smaller disc (at most 3/4 of the diameter), not touching.
		small := dMm * (0.2 + 0.55*r.Float64())
		disc(m, 50, 115, small/2/sr, small/2/sc)
		got := imgx.LargestDiameter(m, sr, sc)
		if e := math.Abs(got - dMm); e > math.Max(sr, sc) {
			t.Errorf("disc %d (%.2f mm beside %.2f mm, spacing %.3f×%.3f): diameter %.2f mm", i, dMm, small, sr, sc, got)
		}
	}
}

func TestLargestDiameter(t *testing.T) {
	tests := []struct {
		name   string
		mask   []string
		sr, sc float64
		want   float64
	}{
		{"empty", []string{"...", "..."}, 1, 1, 0},
		{"one pixel", []string{"...", ".#."}, 0.7, 0.7, 0},
		{"row of 4", []string{"####", "...."}, 2, 0.5, 1.5},
		{"column of 3", []string{"#.", "#.", "#."}, 2, 0.5, 4},
		{"diagonal is one component", []string{"#..", ".#.", "..#"}, 1, 1, 2 * math.Sqrt2},
		{"the largest component, not the longest", []string{
			"#.###",
			"#.###",
			"#.###",
			"#....",
			"#...."}, 1, 1, 2 * math.Sqrt2},
		{"a tie goes to the first in raster order", []string{
			"##..#",
			"....#"}, 2, 1, 1},
		{"no spacing", []string{"##"}, 0, 1, 0},
		{"NaN spacing", []string{"##"}, math.NaN(), 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := imgx.LargestDiameter(testenv.MaskOf(tc.mask...), tc.sr, tc.sc); math.Abs(got-tc.want) > 1e-12 {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
