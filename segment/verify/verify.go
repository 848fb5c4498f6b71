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
// in that window, runs the verifier on all of them in batches, and lowers
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
	for i, l := range lab {
		if l == 0 {
			continue
		}
		k := l - 1
		out[k].Pixels = append(out[k].Pixels, i)
		sy[k] += float64(i / cols)
		sx[k] += float64(i % cols)
	}
	for k := range out {
		c := float64(len(out[k].Pixels))
		out[k].CY, out[k].CX = int(math.RoundToEven(sy[k]/c)), int(math.RoundToEven(sx[k]/c))
	}
	return out
}

// Patch writes component c's verifier input into dst (2·p·p values):
// channel 0 the p×p window of native HU whose top-left pixel is
// (CY−p/2, CX−p/2), normalised by norm, as a crop model's window reads it
// (cascade.Crop: air beyond the image); channel 1 is 1 on c's pixels
// inside the window, else 0.
func Patch(dst []float32, hu *imgx.HU, c Component, p int, norm model.Normalisation) {
	y0, x0 := c.CY-p/2, c.CX-p/2
	copy(dst[:p*p], cascade.Crop(hu, cascade.Window{Y0: y0, X0: x0, H: p, W: p}, norm))
	m := dst[p*p : 2*p*p]
	clear(m)
	for _, i := range c.Pixels {
		y, x := i/hu.Cols-y0, i%hu.Cols-x0
		if y >= 0 && y < p && x >= 0 && x < p {
			m[y*p+x] = 1
		}
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
	for k := 0; k < len(comps); k += Chunk {
		chunk := comps[k:min(k+Chunk, len(comps))]
		in := make([]float32, len(chunk)*size)
		for j, c := range chunk {
			Patch(in[j*size:(j+1)*size], hu, c, p, v.Normalisation)
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
