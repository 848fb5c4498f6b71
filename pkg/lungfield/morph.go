package lungfield

import (
	"math"
	"slices"
)

// grid holds the shape of the masks (0/1 bytes, row-major) the helpers
// below work on, and, when buf is set, buffers that distSq reuses.
type grid struct {
	rows, cols int
	buf        *buffers
}

// buffers are distSq's work arrays, kept between calls on one grid.
type buffers struct {
	d   []float64
	col []int32
}

// components labels the components of the pixels of m equal to want
// (8-connected when eight, else 4-connected), returning a label per pixel
// (0: other pixels, else 1 + the component's index, components numbered
// in raster order of their first pixel) and each component's size. It
// joins runs of pixels row by row with a union-find.
func (g grid) components(m []uint8, want uint8, eight bool) ([]int32, []int) {
	rows, cols := g.rows, g.cols
	type run struct{ x0, x1, id int32 } // [x0, x1)
	var parent []int32
	find := func(i int32) int32 {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	ext := int32(0)
	if eight {
		ext = 1
	}
	var prev, cur []run
	runs := make([][]run, rows)
	for y := 0; y < rows; y++ {
		row := m[y*cols : (y+1)*cols]
		cur = nil
		for x := 0; x < cols; {
			if row[x] != want {
				x++
				continue
			}
			x0 := x
			for x < cols && row[x] == want {
				x++
			}
			r := run{int32(x0), int32(x), -1}
			for _, p := range prev {
				if p.x1+ext > r.x0 && p.x0 < r.x1+ext {
					if r.id < 0 {
						r.id = find(p.id)
					} else if a, b := find(p.id), find(r.id); a != b {
						parent[max(a, b)] = min(a, b)
					}
				}
			}
			if r.id < 0 {
				r.id = int32(len(parent))
				parent = append(parent, r.id)
			}
			cur = append(cur, r)
		}
		runs[y] = cur
		prev = cur
	}
	// Number the roots in raster order of their first run.
	num := make([]int32, len(parent))
	var sizes []int
	lab := make([]int32, len(m))
	for y, rs := range runs {
		for _, r := range rs {
			root := find(r.id)
			if num[root] == 0 {
				sizes = append(sizes, 0)
				num[root] = int32(len(sizes))
			}
			id := num[root]
			sizes[id-1] += int(r.x1 - r.x0)
			l := lab[y*cols+int(r.x0) : y*cols+int(r.x1)]
			for i := range l {
				l[i] = id
			}
		}
	}
	return lab, sizes
}

// largest returns the largest 4-connected component of m (the first in
// raster order on ties); all zero when m is empty.
func (g grid) largest(m []uint8) []uint8 {
	lab, sizes := g.components(m, 1, false)
	out := make([]uint8, len(m))
	best := -1
	for k, s := range sizes {
		if best < 0 || s > sizes[best] {
			best = k
		}
	}
	if best < 0 {
		return out
	}
	id := int32(best + 1)
	for i, l := range lab {
		if l == id {
			out[i] = 1
		}
	}
	return out
}

// fillBody fills, in place, the body (one component) within its convex
// hull: the 4-connected components of the hull's other pixels that do not
// reach its edge (or the image's), and those that do through a narrow
// opening (at most one pixel on the edge per 100 of the component) and
// have at least minPx pixels with a mean HU of at least airHU. On the
// three ct_series the air between the body and its hull touches the hull's
// edge with at least 5 pixels per 100; a lung opened by a pasted crop, with
// 18 pixels of 24,225 (0.07 per 100).
func (g grid) fillBody(body []uint8, hu []int16, minPx int, airHU float64) {
	rows, cols := g.rows, g.cols
	bl := make([]int32, len(body))
	for i, v := range body {
		bl[i] = int32(v)
	}
	hull := make([]uint8, len(body))
	if h := g.hullOf(bl, 1); len(h) > 0 {
		g.fillPolygon(h, hull)
	}
	in := make([]uint8, len(body))
	for i, v := range hull {
		in[i] = v &^ body[i]
	}
	lab, sizes := g.components(in, 1, false)
	edge := make([]int, len(sizes)) // pixels next to the hull's edge
	sums := make([]float64, len(sizes))
	for i, l := range lab {
		if l == 0 {
			continue
		}
		sums[l-1] += float64(hu[i])
		y, x := i/cols, i%cols
		if y == 0 || x == 0 || y == rows-1 || x == cols-1 ||
			hull[i-1] == 0 || hull[i+1] == 0 || hull[i-cols] == 0 || hull[i+cols] == 0 {
			edge[l-1]++
		}
	}
	for i, l := range lab {
		if l == 0 {
			continue
		}
		k := l - 1
		if edge[k] == 0 || (sizes[k] >= minPx && 100*edge[k] <= sizes[k] && sums[k]/float64(sizes[k]) >= airHU) {
			body[i] = 1
		}
	}
}

// addHulls ORs into field the pixels of the convex hull of every
// component of lab with at least minPx pixels that lie within rMm of
// field.
func (g grid) addHulls(field []uint8, lab []int32, sizes []int, minPx int, rowMm, colMm, rMm float64) {
	hull := make([]uint8, len(field))
	for k, s := range sizes {
		if s >= minPx {
			if h := g.hullOf(lab, int32(k+1)); len(h) > 0 {
				g.fillPolygon(h, hull)
			}
		}
	}
	near := make([]uint8, len(field))
	copy(near, field)
	g.dilate(near, rowMm, colMm, rMm)
	for i, v := range hull {
		field[i] |= v & near[i]
	}
}

// fillHoles sets, in place, the unset pixels of m that are not
// 4-connected to the image border through unset pixels.
func (g grid) fillHoles(m []uint8) {
	rows, cols := g.rows, g.cols
	lab, sizes := g.components(m, 0, false)
	border := make([]bool, len(sizes)+1)
	for x := 0; x < cols; x++ {
		border[lab[x]] = true
		border[lab[(rows-1)*cols+x]] = true
	}
	for y := 0; y < rows; y++ {
		border[lab[y*cols]] = true
		border[lab[y*cols+cols-1]] = true
	}
	for i, l := range lab {
		if l != 0 && !border[l] {
			m[i] = 1
		}
	}
}

// boxDilate returns the pixels within ky rows and kx columns of a set
// pixel of m (a (2ky+1)×(2kx+1) box), from running counts along the rows
// and then the columns.
func (g grid) boxDilate(m []uint8, ky, kx int) []uint8 {
	rows, cols := g.rows, g.cols
	h := make([]uint8, len(m))
	for y := 0; y < rows; y++ {
		row, out := m[y*cols:(y+1)*cols], h[y*cols:(y+1)*cols]
		n := 0
		for x := 0; x < min(kx, cols); x++ {
			n += int(row[x])
		}
		for x := 0; x < cols; x++ {
			if x+kx < cols {
				n += int(row[x+kx])
			}
			if x-kx-1 >= 0 {
				n -= int(row[x-kx-1])
			}
			if n > 0 {
				out[x] = 1
			}
		}
	}
	out := make([]uint8, len(m))
	count := make([]int32, cols)
	for y := 0; y < min(ky, rows); y++ {
		for x, v := range h[y*cols : (y+1)*cols] {
			count[x] += int32(v)
		}
	}
	for y := 0; y < rows; y++ {
		if y+ky < rows {
			for x, v := range h[(y+ky)*cols : (y+ky+1)*cols] {
				count[x] += int32(v)
			}
		}
		if y-ky-1 >= 0 {
			for x, v := range h[(y-ky-1)*cols : (y-ky)*cols] {
				count[x] -= int32(v)
			}
		}
		o := out[y*cols : (y+1)*cols]
		for x, c := range count {
			if c > 0 {
				o[x] = 1
			}
		}
	}
	return out
}

// dilate sets, in place, every pixel within rMm (Euclidean, with the
// pixel spacing) of a set pixel.
func (g grid) dilate(m []uint8, rowMm, colMm, rMm float64) {
	d := g.distSq(m, 1, rowMm, colMm)
	r2 := rMm * rMm
	for i, v := range d {
		if v <= r2 {
			m[i] = 1
		}
	}
}

// erode clears, in place, every set pixel within rMm of an unset pixel of
// the image (outside the image counts as set, so that a region touching
// the border is not eaten from there).
func (g grid) erode(m []uint8, rowMm, colMm, rMm float64) {
	d := g.distSq(m, 0, rowMm, colMm)
	r2 := rMm * rMm
	for i, v := range d {
		if v <= r2 {
			m[i] = 0
		}
	}
}

// far stands for "no such pixel" in distance maps: finite, so that the
// parabola intersections below stay finite.
const far = 1e30

// distSq returns, for every pixel, the squared distance in mm² to the
// nearest pixel whose value is want (far when there is none), in g.buf's
// array when g has one (valid until the next call): the exact
// Euclidean distance transform of Meijster et al., with the parabola
// envelope of Felzenszwalb and Huttenlocher along the rows. The first
// phase (distance along each column) sweeps whole rows, so that both
// phases read memory in order.
func (g grid) distSq(m []uint8, want uint8, rowMm, colMm float64) []float64 {
	rows, cols := g.rows, g.cols
	const none = math.MaxInt32 / 2
	b := g.buf
	if b == nil {
		b = &buffers{}
	}
	if len(b.d) != len(m) {
		b.d, b.col = make([]float64, len(m)), make([]int32, len(m))
	}
	col := b.col
	// Down: rows since the last target pixel of each column.
	for x := 0; x < cols; x++ {
		if m[x] == want {
			col[x] = 0
		} else {
			col[x] = none
		}
	}
	for y := 1; y < rows; y++ {
		cur, prev := col[y*cols:(y+1)*cols], col[(y-1)*cols:y*cols]
		mr := m[y*cols : (y+1)*cols]
		for x, v := range mr {
			if v == want {
				cur[x] = 0
			} else {
				cur[x] = min(prev[x]+1, none)
			}
		}
	}
	// Up: the nearer of the two.
	for y := rows - 2; y >= 0; y-- {
		cur, next := col[y*cols:(y+1)*cols], col[(y+1)*cols:(y+2)*cols]
		for x := range cur {
			cur[x] = min(cur[x], next[x]+1)
		}
	}
	d := b.d
	f := make([]float64, cols)
	v := make([]int, cols)
	z := make([]float64, cols+1)
	ry2 := rowMm * rowMm
	for y := 0; y < rows; y++ {
		cr := col[y*cols : (y+1)*cols]
		for x, c := range cr {
			if c >= none {
				f[x] = far
			} else {
				f[x] = float64(c) * float64(c) * ry2
			}
		}
		edt1d(f, d[y*cols:(y+1)*cols], colMm*colMm, v, z)
	}
	return d
}

// edt1d sets d[q] = min over p of f[p] + w·(q−p)² (the lower envelope of
// parabolas); v and z are scratch of len(f) and len(f)+1. f is
// overwritten. A row with no finite f is all far.
func edt1d(f, d []float64, w float64, v []int, z []float64) {
	n := len(f)
	found := false
	for q := range f {
		if f[q] < far {
			found = true
		}
		f[q] += w * float64(q*q) // each parabola's height at 0
	}
	if !found {
		for q := range d {
			d[q] = far
		}
		return
	}
	k := 0
	v[0] = 0
	z[0], z[1] = math.Inf(-1), math.Inf(1)
	for q := 1; q < n; q++ {
		s := (f[q] - f[v[k]]) / (2 * w * float64(q-v[k]))
		for s <= z[k] { // z[0] is -Inf: stops at k = 0
			k--
			s = (f[q] - f[v[k]]) / (2 * w * float64(q-v[k]))
		}
		k++
		v[k] = q
		z[k] = s
		z[k+1] = math.Inf(1)
	}
	k = 0
	for q := 0; q < n; q++ {
		for z[k+1] < float64(q) {
			k++
		}
		p := v[k]
		d[q] = f[p] - w*float64(p*p) + w*float64((q-p)*(q-p))
	}
}

// point is a pixel centre (x: column, y: row).
type point struct{ x, y int }

// hullOf returns the convex hull of the pixels labelled id, counter-
// clockwise in image coordinates, from the leftmost and rightmost pixel
// of every row (Andrew's monotone chain).
func (g grid) hullOf(lab []int32, id int32) []point {
	var pts []point
	for y := 0; y < g.rows; y++ {
		row := lab[y*g.cols : (y+1)*g.cols]
		lo, hi := -1, -1
		for x, l := range row {
			if l == id {
				if lo < 0 {
					lo = x
				}
				hi = x
			}
		}
		if lo >= 0 {
			pts = append(pts, point{lo, y})
			if hi != lo {
				pts = append(pts, point{hi, y})
			}
		}
	}
	sortPoints(pts)
	if len(pts) < 3 {
		return pts
	}
	cross := func(o, a, b point) int { return (a.x-o.x)*(b.y-o.y) - (a.y-o.y)*(b.x-o.x) }
	h := make([]point, 0, 2*len(pts))
	for _, p := range pts {
		for len(h) >= 2 && cross(h[len(h)-2], h[len(h)-1], p) <= 0 {
			h = h[:len(h)-1]
		}
		h = append(h, p)
	}
	lower := len(h) + 1
	for i := len(pts) - 2; i >= 0; i-- {
		p := pts[i]
		for len(h) >= lower && cross(h[len(h)-2], h[len(h)-1], p) <= 0 {
			h = h[:len(h)-1]
		}
		h = append(h, p)
	}
	return h[:len(h)-1]
}

// fillPolygon sets in out the pixels whose centre lies in the
// convex polygon h (within half a pixel, so that the hull's own vertices
// and edges are in).
func (g grid) fillPolygon(h []point, out []uint8) {
	if len(h) == 0 {
		return
	}
	ymin, ymax := h[0].y, h[0].y
	for _, p := range h {
		ymin, ymax = min(ymin, p.y), max(ymax, p.y)
	}
	for y := ymin; y <= ymax; y++ {
		lo, hi := math.Inf(1), math.Inf(-1)
		fy := float64(y)
		for i := range h {
			a, b := h[i], h[(i+1)%len(h)]
			if (fy < float64(a.y) && fy < float64(b.y)) || (fy > float64(a.y) && fy > float64(b.y)) {
				continue
			}
			if a.y == b.y {
				lo = math.Min(lo, float64(min(a.x, b.x)))
				hi = math.Max(hi, float64(max(a.x, b.x)))
				continue
			}
			x := float64(a.x) + (fy-float64(a.y))*float64(b.x-a.x)/float64(b.y-a.y)
			lo, hi = math.Min(lo, x), math.Max(hi, x)
		}
		if lo > hi {
			continue
		}
		x0 := max(0, int(math.Ceil(lo-0.5)))
		x1 := min(g.cols-1, int(math.Floor(hi+0.5)))
		for x := x0; x <= x1; x++ {
			out[y*g.cols+x] = 1
		}
	}
}

// sortPoints sorts by x, then y.
func sortPoints(p []point) {
	slices.SortFunc(p, func(a, b point) int {
		if a.x != b.x {
			return a.x - b.x
		}
		return a.y - b.y
	})
}
