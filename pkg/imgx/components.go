package imgx

import (
	"math"
	"sort"
)

// Labels numbers the 8-connected components of m that have at least
// minSize pixels, 1..n in raster order of their first pixel; other pixels
// are 0. It returns the label image and n.
func Labels(m *Mask, minSize int) ([]int32, int) {
	rows, cols := m.Rows, m.Cols
	lab := make([]int32, rows*cols)
	var stack, comp []int
	n := int32(0)
	for start, v := range m.Pix {
		if v == 0 || lab[start] != 0 {
			continue
		}
		// Flood fill with a provisional label of -1, then keep or clear.
		comp = comp[:0]
		stack = append(stack[:0], start)
		lab[start] = -1
		for len(stack) > 0 {
			p := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			comp = append(comp, p)
			r, c := p/cols, p%cols
			for dr := -1; dr <= 1; dr++ {
				for dc := -1; dc <= 1; dc++ {
					rr, cc := r+dr, c+dc
					if rr < 0 || rr >= rows || cc < 0 || cc >= cols {
						continue
					}
					q := rr*cols + cc
					if m.Pix[q] != 0 && lab[q] == 0 {
						lab[q] = -1
						stack = append(stack, q)
					}
				}
			}
		}
		id := int32(-2) // too small: marked so it is not visited again
		if len(comp) >= minSize {
			n++
			id = n
		}
		for _, p := range comp {
			lab[p] = id
		}
	}
	for i, v := range lab {
		if v < 0 {
			lab[i] = 0
		}
	}
	return lab, int(n)
}

// edge returns the centres, in mm, of the pixels of component l of a
// rows×cols label image that touch a pixel outside it (4-neighbours or the
// image border): point (r·sr, c·sc) for the pixel at row r, column c. They
// span the component's convex hull, so Feret(edge(...)) is its longest
// diameter between pixel centres.
func edge(lab []int32, rows, cols int, l int32, sr, sc float64) [][2]float64 {
	in := func(r, c int) bool { return r >= 0 && r < rows && c >= 0 && c < cols && lab[r*cols+c] == l }
	var pts [][2]float64
	for p, v := range lab {
		if v != l {
			continue
		}
		r, c := p/cols, p%cols
		if !in(r-1, c) || !in(r+1, c) || !in(r, c-1) || !in(r, c+1) {
			pts = append(pts, [2]float64{float64(r) * sr, float64(c) * sc})
		}
	}
	return pts
}

// LargestDiameter returns the longest diameter of the largest
// 8-connected component of m (most pixels; the first in raster order on
// a tie): the largest distance between the centres of two of its pixels,
// with rows sr and columns sc apart (in mm for a slice's spacing). It is 0
// for an empty mask or a single pixel, and for a spacing that is not a
// positive finite number.
func LargestDiameter(m *Mask, sr, sc float64) float64 {
	if !(sr > 0 && sc > 0) || math.IsInf(sr, 0) || math.IsInf(sc, 0) || m.Count() == 0 {
		return 0
	}
	lab, n := Labels(m, 1)
	area := make([]int, n+1)
	for _, v := range lab {
		area[v]++
	}
	best := int32(1)
	for l := 2; l <= n; l++ {
		if area[l] > area[best] {
			best = int32(l)
		}
	}
	return Feret(edge(lab, m.Rows, m.Cols, best, sr, sc))
}

// Feret returns the largest distance between two of the points (the
// diameter of their convex hull); 0 for fewer than two points.
func Feret(pts [][2]float64) float64 {
	h := hull(pts)
	best := 0.0
	for i := range h {
		for j := i + 1; j < len(h); j++ {
			best = math.Max(best, math.Hypot(h[i][0]-h[j][0], h[i][1]-h[j][1]))
		}
	}
	return best
}

// hull returns the convex hull of pts (Andrew's monotone chain).
func hull(pts [][2]float64) [][2]float64 {
	if len(pts) < 3 {
		return pts
	}
	p := append([][2]float64(nil), pts...)
	sort.Slice(p, func(i, j int) bool {
		if p[i][0] != p[j][0] {
			return p[i][0] < p[j][0]
		}
		return p[i][1] < p[j][1]
	})
	cross := func(o, a, b [2]float64) float64 {
		return (a[0]-o[0])*(b[1]-o[1]) - (a[1]-o[1])*(b[0]-o[0])
	}
	h := make([][2]float64, 0, 2*len(p))
	for _, q := range p {
		for len(h) >= 2 && cross(h[len(h)-2], h[len(h)-1], q) <= 0 {
			h = h[:len(h)-1]
		}
		h = append(h, q)
	}
	lower := len(h) + 1
	for i := len(p) - 2; i >= 0; i-- {
		q := p[i]
		for len(h) >= lower && cross(h[len(h)-2], h[len(h)-1], q) <= 0 {
			h = h[:len(h)-1]
		}
		h = append(h, q)
	}
	return h[:len(h)-1]
}
