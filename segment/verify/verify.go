// Package verify judges the components of a crop model's tiled map with
// the model's verifier (model.Verifier), a small classifier trained to
// tell a nodule from what a crop model also marks in real lung: vessels,
// the hila, the chest wall.
//
// A crop model tiled over a whole slice finds most nodules and outlines
// them well, but also marks vessels (train/README.md, "A verifier for the
// components of a tiled crop model"). Apply cuts the map into 8-connected
// components of the pixels at or above the crop model's threshold (inside
// the lung field when there is one), reads a Patch×Patch window of native
// HU centred on each component's centroid and the component's own pixels
// in that window (with Zoom, a window fitted to the component and averaged
// down to Patch×Patch), runs the verifier on all of them in batches, and lowers
// every pixel of a rejected component to at most half the threshold, so
// that score's mask leaves it out while the map keeps its shape for
// inspection.
package verify

import (
	"fmt"
	"math"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
	"github.com/lungseg/lungseg/segment/cascade"
)

// Classifier runs the verifier on n patches laid out [n,2,P,P] and
// returns n probabilities (infer.Classifier).
type Classifier interface {
	Run(input []float32, n int) ([]float32, error)
}

// Chunk is the most components in one verifier call.
const Chunk = 256

// Component is one 8-connected component of the thresholded map.
type Component struct {
	// Pixels are the component's pixel indices (row*cols+col), in raster
	// order.
	Pixels []int
	// CY, CX are its centroid, each mean rounded half to even (as
	// Python's round, which trained the verifier).
	CY, CX int
	// Side is the larger side of its bounding box, in pixels.
	Side int
}

// Components labels the 8-connected components of the pixels with prob ≥
// thr (and field ≠ 0 when field is not nil), in raster order of each
// component's first pixel (imgx.Labels).
func Components(prob []float32, rows, cols int, thr float32, field *imgx.Mask) []Component {
	m := imgx.NewMask(rows, cols)
	for i, v := range prob {
		if v >= thr && (field == nil || field.Pix[i] != 0) {
			m.Pix[i] = 1
		}
	}
	lab, n := imgx.Labels(m, 1)
	out := make([]Component, n)
	sy, sx := make([]float64, n), make([]float64, n)
	box := make([][4]int, n) // min row, max row, min col, max col
	for i, l := range lab {
		if l == 0 {
			continue
		}
		k := l - 1
		y, x := i/cols, i%cols
		if len(out[k].Pixels) == 0 {
			box[k] = [4]int{y, y, x, x}
		}
		box[k] = [4]int{min(box[k][0], y), max(box[k][1], y), min(box[k][2], x), max(box[k][3], x)}
		out[k].Pixels = append(out[k].Pixels, i)
		sy[k] += float64(y)
		sx[k] += float64(x)
	}
	for k := range out {
		c := float64(len(out[k].Pixels))
		out[k].CY, out[k].CX = int(math.RoundToEven(sy[k]/c)), int(math.RoundToEven(sx[k]/c))
		out[k].Side = max(box[k][1]-box[k][0], box[k][3]-box[k][2]) + 1
	}
	return out
}

// Patch writes component c's verifier input into dst (2·p·p values):
// channel 0 the p×p window of native HU whose top-left pixel is
// (CY−p/2, CX−p/2), normalised by norm, as a crop model's window reads it
// (air beyond the image); channel 1 is 1 on c's pixels inside the window,
// else 0. It is ZoomPatch with blocks of one pixel.
func Patch(dst []float32, hu *imgx.HU, c Component, p int, norm model.Normalisation) {
	ZoomPatch(dst, hu, c, p, model.VerifierZoom{MaxFactor: 1}, norm)
}

// ZoomFactor is the block side f of ZoomPatch for component c: the least
// f ≥ 1 with c's box and z.Margin pixels on every side within p·f, at most
// z.MaxFactor (train/lungseg_train/verifier.zoom_factor).
func ZoomFactor(c Component, p int, z model.VerifierZoom) int {
	side := c.Side + 2*z.Margin
	return max(1, min(z.MaxFactor, (side+p-1)/p))
}

// ZoomPatch writes component c's verifier input into dst (2·p·p values):
// the window of side p·f (f = ZoomFactor) whose
// top-left pixel is (CY−p·f/2, CX−p·f/2), air beyond the image, averaged
// over f×f blocks of HU and then normalised by norm; channel 1 is the
// share of each block's pixels in c. With f = 1 it is Patch.
func ZoomPatch(dst []float32, hu *imgx.HU, c Component, p int, z model.VerifierZoom, norm model.Normalisation) {
	f := ZoomFactor(c, p, z)
	s := p * f
	y0, x0 := c.CY-s/2, c.CX-s/2
	sum := make([]float64, p*p)
	for y := 0; y < s; y++ {
		sy := y0 + y
		for x := 0; x < s; x++ {
			sx := x0 + x
			v := float64(cascade.OutsideHU)
			if sy >= 0 && sy < hu.Rows && sx >= 0 && sx < hu.Cols {
				v = float64(hu.Pix[sy*hu.Cols+sx])
			}
			sum[(y/f)*p+x/f] += v
		}
	}
	n := float64(f * f)
	for i, v := range sum {
		// the mean rounded to float32 first, as numpy's pooled window is
		dst[i] = norm.Apply(float64(float32(v / n)))
	}
	m := dst[p*p : 2*p*p]
	clear(m)
	for _, i := range c.Pixels {
		y, x := i/hu.Cols-y0, i%hu.Cols-x0
		if y >= 0 && y < s && x >= 0 && x < s {
			m[(y/f)*p+x/f]++
		}
	}
	for i := range m {
		m[i] = float32(float64(m[i]) / n)
	}
}

// Result says what Apply did.
type Result struct {
	Components, Rejected int
	// Probs are the verifier's probabilities, one per component in the
	// order of Components.
	Probs []float32
}

// Apply verifies the components of prob (the crop model's map on hu's
// grid) and lowers the rejected ones in place; thr is the crop model's
// threshold, field the lung field (nil: none).
func Apply(cl Classifier, v *model.Verifier, hu *imgx.HU, prob []float32, thr float32, field *imgx.Mask) (Result, error) {
	if len(prob) != hu.Rows*hu.Cols {
		return Result{}, fmt.Errorf("verify: map of %d values for a %d×%d slice", len(prob), hu.Rows, hu.Cols)
	}
	if field != nil && (field.Rows != hu.Rows || field.Cols != hu.Cols) {
		return Result{}, fmt.Errorf("verify: lung field %d×%d for a %d×%d slice", field.Rows, field.Cols, hu.Rows, hu.Cols)
	}
	comps := Components(prob, hu.Rows, hu.Cols, thr, field)
	res := Result{Components: len(comps), Probs: make([]float32, 0, len(comps))}
	p := v.Patch
	size := 2 * p * p
	zoom := model.VerifierZoom{MaxFactor: 1} // no zoom: Patch
	if v.Zoom != nil {
		zoom = *v.Zoom
	}
	for k := 0; k < len(comps); k += Chunk {
		chunk := comps[k:min(k+Chunk, len(comps))]
		in := make([]float32, len(chunk)*size)
		for j, c := range chunk {
			ZoomPatch(in[j*size:(j+1)*size], hu, c, p, zoom, v.Normalisation)
		}
		out, err := cl.Run(in, len(chunk))
		if err != nil {
			return res, err
		}
		if len(out) != len(chunk) {
			return res, fmt.Errorf("verify: %d probabilities for %d components", len(out), len(chunk))
		}
		res.Probs = append(res.Probs, out...)
	}
	low := thr / 2
	for k, c := range comps {
		if float64(res.Probs[k]) >= v.Threshold {
			continue
		}
		res.Rejected++
		for _, i := range c.Pixels {
			prob[i] = min(prob[i], low)
		}
	}
	return res, nil
}
