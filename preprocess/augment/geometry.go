package augment

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// Rotate turns the slice by an angle drawn uniformly from
// [-MaxDeg, MaxDeg] about its centre (see RotateBy).
type Rotate struct {
	MaxDeg float64
	// Fill is the value of pixels rotated in from outside the image
	// (AirHU in HU space).
	Fill float32
}

// Name implements Transform.
func (Rotate) Name() string { return "rotate" }

// Apply implements Transform.
func (t Rotate) Apply(img *imgx.Float, mask *imgx.Mask, r *rand.Rand, p *Params) (*imgx.Float, *imgx.Mask, error) {
	if err := check(img, mask); err != nil {
		return nil, nil, err
	}
	deg := (2*r.Float64() - 1) * t.MaxDeg
	p.AngleDeg = deg
	i, m := RotateBy(img, mask, deg, t.Fill)
	return i, m, nil
}

// RotateBy rotates img and mask by deg degrees counter-clockwise as
// displayed (rows downwards) about the image centre, keeping the size:
// bilinear for the image, with fill for samples outside it, and nearest
// neighbour for the mask, with 0 outside. A zero angle returns exact
// copies.
func RotateBy(img *imgx.Float, mask *imgx.Mask, deg float64, fill float32) (*imgx.Float, *imgx.Mask) {
	rad := deg * math.Pi / 180
	cos, sin := math.Cos(rad), math.Sin(rad)
	cx, cy := float64(img.Cols-1)/2, float64(img.Rows-1)/2
	// Destination p' = R·p with R = [cos sin; -sin cos] on (x, y-down)
	// offsets, so the source of p' is Rᵀ·p'.
	return remap(img, mask, fill, func(x, y int) (float64, float64) {
		dx, dy := float64(x)-cx, float64(y)-cy
		return cx + cos*dx - sin*dy, cy + sin*dx + cos*dy
	})
}

// remap samples img bilinearly and mask by nearest neighbour at the source
// positions src gives for each destination pixel.
func remap(img *imgx.Float, mask *imgx.Mask, fill float32, src func(x, y int) (float64, float64)) (*imgx.Float, *imgx.Mask) {
	rows, cols := img.Rows, img.Cols
	out := imgx.NewFloat(rows, cols)
	var om *imgx.Mask
	if mask != nil {
		om = imgx.NewMask(rows, cols)
	}
	for y := 0; y < rows; y++ {
		for x := 0; x < cols; x++ {
			sx, sy := src(x, y)
			out.Pix[y*cols+x] = bilinear(img, sx, sy, fill)
			if om != nil {
				ix, iy := int(math.Floor(sx+0.5)), int(math.Floor(sy+0.5))
				if ix >= 0 && ix < cols && iy >= 0 && iy < rows {
					om.Pix[y*cols+x] = mask.Pix[iy*cols+ix]
				}
			}
		}
	}
	return out, om
}

// bilinear samples img at (sx, sy) in pixel-centre coordinates; taps
// outside the image take the value fill. At integer positions inside the
// image it returns the pixel exactly.
func bilinear(img *imgx.Float, sx, sy float64, fill float32) float32 {
	x0f, y0f := math.Floor(sx), math.Floor(sy)
	x0, y0 := int(x0f), int(y0f)
	fx, fy := float32(sx-x0f), float32(sy-y0f)
	rows, cols := img.Rows, img.Cols
	if x0 >= 0 && y0 >= 0 && x0+1 < cols && y0+1 < rows {
		i := y0*cols + x0
		a := img.Pix[i] + (img.Pix[i+1]-img.Pix[i])*fx
		b := img.Pix[i+cols] + (img.Pix[i+cols+1]-img.Pix[i+cols])*fx
		return a + (b-a)*fy
	}
	if x0 < -1 || y0 < -1 || x0 >= cols || y0 >= rows {
		return fill
	}
	at := func(x, y int) float32 {
		if x < 0 || y < 0 || x >= cols || y >= rows {
			return fill
		}
		return img.Pix[y*cols+x]
	}
	v00, v01, v10, v11 := at(x0, y0), at(x0+1, y0), at(x0, y0+1), at(x0+1, y0+1)
	if fx == 0 {
		v01, v11 = v00, v10
	}
	if fy == 0 {
		v10, v11 = v00, v01
	}
	a := v00 + (v01-v00)*fx
	b := v10 + (v11-v10)*fx
	return a + (b-a)*fy
}

// Flip mirrors the slice left-right with probability H and top-bottom
// with probability V.
type Flip struct {
	H, V float64
}

// Name implements Transform.
func (Flip) Name() string { return "flip" }

// Apply implements Transform.
func (t Flip) Apply(img *imgx.Float, mask *imgx.Mask, r *rand.Rand, p *Params) (*imgx.Float, *imgx.Mask, error) {
	if err := check(img, mask); err != nil {
		return nil, nil, err
	}
	h := r.Float64() < t.H
	v := r.Float64() < t.V
	p.FlipH, p.FlipV = h, v
	i, m := FlipBy(img, mask, h, v)
	return i, m, nil
}

// FlipBy mirrors img and mask left-right when h and top-bottom when v.
func FlipBy(img *imgx.Float, mask *imgx.Mask, h, v bool) (*imgx.Float, *imgx.Mask) {
	rows, cols := img.Rows, img.Cols
	out := imgx.NewFloat(rows, cols)
	var om *imgx.Mask
	if mask != nil {
		om = imgx.NewMask(rows, cols)
	}
	for y := 0; y < rows; y++ {
		sy := y
		if v {
			sy = rows - 1 - y
		}
		src, dst := img.Pix[sy*cols:(sy+1)*cols], out.Pix[y*cols:(y+1)*cols]
		if h {
			for x := range dst {
				dst[x] = src[cols-1-x]
			}
		} else {
			copy(dst, src)
		}
		if om == nil {
			continue
		}
		ms, md := mask.Pix[sy*cols:(sy+1)*cols], om.Pix[y*cols:(y+1)*cols]
		if h {
			for x := range md {
				md[x] = ms[cols-1-x]
			}
		} else {
			copy(md, ms)
		}
	}
	return out, om
}

// Elastic is the elastic deformation of Simard et al. (2003): a random
// displacement field, uniform in [-1,1] per pixel and axis, smoothed by a
// Gaussian of standard deviation Sigma pixels and scaled by Alpha pixels.
type Elastic struct {
	Alpha, Sigma float64
	// Fill is the value of pixels pulled in from outside the image.
	Fill float32
}

// Name implements Transform.
func (Elastic) Name() string { return "elastic" }

// Apply implements Transform.
func (t Elastic) Apply(img *imgx.Float, mask *imgx.Mask, r *rand.Rand, p *Params) (*imgx.Float, *imgx.Mask, error) {
	if err := check(img, mask); err != nil {
		return nil, nil, err
	}
	dx, dy := DisplacementField(img.Rows, img.Cols, t.Alpha, t.Sigma, r)
	p.Alpha, p.Sigma = t.Alpha, t.Sigma
	i, m := Displace(img, mask, dx, dy, t.Fill)
	return i, m, nil
}

// DisplacementField draws the two components (columns, rows) of an
// elastic displacement field: uniform noise in [-1,1] smoothed by a
// Gaussian of sigma pixels (reflecting at the borders, truncated at 4σ,
// as scipy.ndimage.gaussian_filter) and multiplied by alpha. It draws
// 2·rows·cols values from r whatever alpha is; with alpha 0 the field is
// zero.
func DisplacementField(rows, cols int, alpha, sigma float64, r *rand.Rand) (dx, dy []float32) {
	n := rows * cols
	dx, dy = make([]float32, n), make([]float32, n)
	for i := range dx {
		dx[i] = float32(2*r.Float64() - 1)
	}
	for i := range dy {
		dy[i] = float32(2*r.Float64() - 1)
	}
	k := gaussKernel(sigma)
	tmp := make([]float32, n)
	for _, f := range [][]float32{dx, dy} {
		blur(f, tmp, rows, cols, k)
		for i := range f {
			f[i] *= float32(alpha)
		}
	}
	return dx, dy
}

// Displace samples img (bilinear, fill outside) and mask (nearest, 0
// outside) at each pixel plus its displacement (dx columns, dy rows). A
// zero field returns exact copies.
func Displace(img *imgx.Float, mask *imgx.Mask, dx, dy []float32, fill float32) (*imgx.Float, *imgx.Mask) {
	cols := img.Cols
	return remap(img, mask, fill, func(x, y int) (float64, float64) {
		i := y*cols + x
		return float64(x) + float64(dx[i]), float64(y) + float64(dy[i])
	})
}

// gaussKernel returns normalised Gaussian weights over [-4σ, 4σ]; a sigma
// of zero gives the identity kernel.
func gaussKernel(sigma float64) []float32 {
	if !(sigma > 0) {
		return []float32{1}
	}
	rad := int(4*sigma + 0.5)
	w := make([]float64, 2*rad+1)
	var sum float64
	for i := range w {
		x := float64(i - rad)
		w[i] = math.Exp(-0.5 * x * x / (sigma * sigma))
		sum += w[i]
	}
	k := make([]float32, len(w))
	for i := range w {
		k[i] = float32(w[i] / sum)
	}
	return k
}

// reflect maps an index onto [0,n) by half-sample symmetric reflection
// (d c b a | a b c d | d c b a).
func reflect(i, n int) int {
	p := 2 * n
	m := i % p
	if m < 0 {
		m += p
	}
	if m >= n {
		m = p - 1 - m
	}
	return m
}

// blur convolves f (rows×cols) in place with the separable, symmetric
// kernel k, using tmp (same length) as scratch. Symmetry halves the
// multiplications: taps at ±j share a weight.
func blur(f, tmp []float32, rows, cols int, k []float32) {
	if len(k) == 1 {
		return
	}
	rad := len(k) / 2
	kc, kh := k[rad], k[:rad]
	// Rows: pad each row by reflection, then convolve.
	pad := make([]float32, cols+2*rad)
	for y := 0; y < rows; y++ {
		row := f[y*cols : (y+1)*cols]
		for i := range pad {
			pad[i] = row[reflect(i-rad, cols)]
		}
		out := tmp[y*cols : (y+1)*cols]
		for x := range out {
			p := pad[x : x+2*rad+1]
			s := kc * p[rad]
			for j, w := range kh {
				s += w * (p[j] + p[2*rad-j])
			}
			out[x] = s
		}
	}
	// Columns: accumulate whole rows so the inner loop runs along memory.
	for y := 0; y < rows; y++ {
		out := f[y*cols : (y+1)*cols]
		mid := tmp[y*cols : (y+1)*cols]
		for x := range out {
			out[x] = kc * mid[x]
		}
		for j, w := range kh {
			a := tmp[reflect(y+j-rad, rows)*cols:]
			b := tmp[reflect(y+rad-j, rows)*cols:]
			a, b = a[:len(out)], b[:len(out)]
			for x := range out {
				out[x] += w * (a[x] + b[x])
			}
		}
	}
}

// Resize resamples the slice to Rows×Cols with imgx.ResizeBilinear for
// the image and imgx.ResizeNearest for the mask (PyTorch's
// align_corners=False convention, as the preprocess stage uses).
type Resize struct {
	Rows, Cols int
}

// Name implements Transform.
func (Resize) Name() string { return "resize" }

// Apply implements Transform. It draws nothing from r.
func (t Resize) Apply(img *imgx.Float, mask *imgx.Mask, _ *rand.Rand, _ *Params) (*imgx.Float, *imgx.Mask, error) {
	if err := check(img, mask); err != nil {
		return nil, nil, err
	}
	if err := imgx.CheckSize(t.Rows, t.Cols); err != nil {
		return nil, nil, fmt.Errorf("%w: resize: %v", ErrConfig, err)
	}
	i, m := ResizeTo(img, mask, t.Rows, t.Cols)
	return i, m, nil
}

// ResizeTo resamples img (bilinear) and mask (nearest) to rows×cols.
func ResizeTo(img *imgx.Float, mask *imgx.Mask, rows, cols int) (*imgx.Float, *imgx.Mask) {
	out := &imgx.Float{Rows: rows, Cols: cols, Pix: imgx.ResizeBilinear(img.Pix, img.Rows, img.Cols, rows, cols)}
	if mask == nil {
		return out, nil
	}
	if mask.Rows == rows && mask.Cols == cols {
		return out, cloneMask(mask)
	}
	return out, imgx.ResizeNearest(mask, rows, cols)
}
