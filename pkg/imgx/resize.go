package imgx

// ResizeBilinear resamples a rows×cols float map to dr×dc with bilinear
// interpolation on pixel centres (the convention of PyTorch's
// F.interpolate(mode="bilinear", align_corners=False) without
// antialiasing), so the Go pipeline feeds models what training fed them.
// Halving a size averages each 2×2 block exactly.
func ResizeBilinear(src []float32, rows, cols, dr, dc int) []float32 {
	dst := make([]float32, dr*dc)
	if dr == rows && dc == cols {
		copy(dst, src)
		return dst
	}
	ys := axisTaps(rows, dr)
	xs := axisTaps(cols, dc)
	for y, ty := range ys {
		r0 := src[ty.i0*cols : ty.i0*cols+cols]
		r1 := src[ty.i1*cols : ty.i1*cols+cols]
		out := dst[y*dc : (y+1)*dc]
		for x, tx := range xs {
			a := r0[tx.i0]*(1-tx.w) + r0[tx.i1]*tx.w
			b := r1[tx.i0]*(1-tx.w) + r1[tx.i1]*tx.w
			out[x] = a*(1-ty.w) + b*ty.w
		}
	}
	return dst
}

type tap struct {
	i0, i1 int
	w      float32
}

// axisTaps returns, for each output index, the two source indices and the
// weight of the second, for half-pixel-centre sampling.
func axisTaps(n, m int) []tap {
	t := make([]tap, m)
	scale := float64(n) / float64(m)
	for j := range t {
		s := (float64(j)+0.5)*scale - 0.5
		if s < 0 {
			s = 0
		}
		i0 := int(s)
		if i0 > n-1 {
			i0 = n - 1
		}
		i1 := i0 + 1
		if i1 > n-1 {
			i1 = n - 1
		}
		t[j] = tap{i0, i1, float32(s - float64(i0))}
	}
	return t
}

// ResizeNearest resamples a mask to dr×dc by nearest neighbour on pixel
// centres.
func ResizeNearest(m *Mask, dr, dc int) *Mask {
	out := NewMask(dr, dc)
	for y := 0; y < dr; y++ {
		sy := (y*m.Rows*2 + m.Rows) / (2 * dr)
		for x := 0; x < dc; x++ {
			sx := (x*m.Cols*2 + m.Cols) / (2 * dc)
			out.Pix[y*dc+x] = m.Pix[sy*m.Cols+sx]
		}
	}
	return out
}
