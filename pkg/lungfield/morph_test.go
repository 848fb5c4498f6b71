package lungfield

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestDistSq checks the distance transform against brute force on random
// masks with anisotropic spacing, including masks with no target pixel.
func TestDistSq(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for k := 0; k < 40; k++ {
		g := grid{rows: 1 + r.IntN(23), cols: 1 + r.IntN(31)}
		m := make([]uint8, g.rows*g.cols)
		p := r.Float64() * 0.3
		if k == 0 {
			p = 0
		}
		for i := range m {
			if r.Float64() < p {
				m[i] = 1
			}
		}
		sy, sx := 0.5+r.Float64(), 0.5+r.Float64()
		d := g.distSq(m, 1, sy, sx)
		for i := range m {
			want := math.Inf(1)
			for j, v := range m {
				if v == 1 {
					dy, dx := float64(i/g.cols-j/g.cols)*sy, float64(i%g.cols-j%g.cols)*sx
					want = math.Min(want, dy*dy+dx*dx)
				}
			}
			got := d[i]
			if math.IsInf(want, 1) {
				if got < far {
					t.Fatalf("case %d pixel %d: %g, want none", k, i, got)
				}
				continue
			}
			if math.Abs(got-want) > 1e-9*(1+want) {
				t.Fatalf("case %d (%d×%d, %.2f×%.2f mm) pixel %d: %g, want %g", k, g.rows, g.cols, sy, sx, i, got, want)
			}
		}
	}
}

// TestComponents checks the run labelling against a flood fill, for 4-
// and 8-connectivity.
func TestComponents(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for k := 0; k < 40; k++ {
		g := grid{rows: 1 + r.IntN(20), cols: 1 + r.IntN(20)}
		m := make([]uint8, g.rows*g.cols)
		for i := range m {
			if r.Float64() < 0.45 {
				m[i] = 1
			}
		}
		for _, eight := range []bool{false, true} {
			lab, sizes := g.components(m, 1, eight)
			// Flood fill from each pixel: same component iff same label.
			for i, v := range m {
				if v == 0 {
					if lab[i] != 0 {
						t.Fatalf("unset pixel %d labelled", i)
					}
					continue
				}
				seen := map[int]bool{i: true}
				stack := []int{i}
				for len(stack) > 0 {
					j := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					y, x := j/g.cols, j%g.cols
					for dy := -1; dy <= 1; dy++ {
						for dx := -1; dx <= 1; dx++ {
							if (dx == 0 && dy == 0) || (!eight && dx != 0 && dy != 0) {
								continue
							}
							ny, nx := y+dy, x+dx
							if ny < 0 || nx < 0 || ny >= g.rows || nx >= g.cols {
								continue
							}
							n := ny*g.cols + nx
							if m[n] == 1 && !seen[n] {
								seen[n] = true
								stack = append(stack, n)
							}
						}
					}
				}
				if len(seen) != sizes[lab[i]-1] {
					t.Fatalf("case %d eight=%v pixel %d: component of %d, size says %d", k, eight, i, len(seen), sizes[lab[i]-1])
				}
				for j := range seen {
					if lab[j] != lab[i] {
						t.Fatalf("case %d eight=%v: pixels %d and %d connected, labels %d and %d", k, eight, i, j, lab[i], lab[j])
					}
				}
			}
		}
	}
}

// TestBoxDilate checks the running-count box dilation against brute force.
func TestBoxDilate(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for k := 0; k < 40; k++ {
		g := grid{rows: 1 + r.IntN(15), cols: 1 + r.IntN(15)}
		m := make([]uint8, g.rows*g.cols)
		for i := range m {
			if r.Float64() < 0.08 {
				m[i] = 1
			}
		}
		ky, kx := r.IntN(4), r.IntN(4)
		got := g.boxDilate(m, ky, kx)
		for i := range m {
			want := uint8(0)
			for j, v := range m {
				dy, dx := i/g.cols-j/g.cols, i%g.cols-j%g.cols
				if v != 0 && dy >= -ky && dy <= ky && dx >= -kx && dx <= kx {
					want = 1
				}
			}
			if got[i] != want {
				t.Fatalf("case %d (%d×%d, k %d,%d) pixel %d: %d, want %d", k, g.rows, g.cols, ky, kx, i, got[i], want)
			}
		}
	}
}
