// Package lungfield computes the lung field of a CT slice in HU: the
// lungs with a margin, the region where a nodule can be. Preprocess
// computes it once per slice and it travels with the slice's model inputs
// and outputs (bit-packed like the ground truth); segment takes cascade
// candidates only from inside it and score removes predicted pixels
// outside it, so nothing is predicted on the table, in the air around the
// patient or in the chest wall.
//
// The algorithm (Compute), all in pure Go on the slice's own grid:
//
//  1. Body: the largest 4-connected component of HU > BodyHU after an
//     opening by OpenMm (the CT table, blankets and a sensor that touches
//     the skin through a thin link are other components), filled within
//     its convex hull: the holes (lungs, airways) and, of the regions that
//     reach the hull's edge, those of at least MinLungMm2 whose mean HU is
//     at least AirHU and that touch the edge with at most 1 pixel per 100
//     of theirs (a lung opened to the outside through a narrow gap, as
//     where a pasted crop or the edge of the field of view cuts the chest
//     wall); the air between the arms and the chest, or under the back,
//     stays out.
//  2. Lungs: 8-connected components of HU < LungHU inside the body, each
//     of at least MinLungMm2 and with a mean HU of at least AirHU: pure
//     air (the trachea, bowel gas, the inside of a sensor on the skin) and
//     small airways and noise fall out.
//  3. Closing with a disk of CloseMm (Euclidean, in mm, using the pixel
//     spacing), then hole filling: vessels, nodules and masses inside the
//     lung join the field.
//  4. The part of each lung component's convex hull within HullMm of the
//     field joins it: the hilum, and a mass that reaches the mediastinum
//     (a closing alone leaves it out when it is wider than the disk).
//  5. Dilation by MarginMm, so that juxtapleural nodules, which sit on
//     the chest wall, stay in; then the intersection with the body.
//
// The field is generous towards the mediastinum (step 4 takes in part of
// the heart and great vessels beside each hilum); what it removes is the
// table, the air, the chest wall beyond the margin, the spine and the
// abdomen below the lungs.
//
// A slice with a body and no lung (an abdomen slice) has an empty field.
// No field is computed (an error, and callers remove nothing) for images
// smaller than MinSide, images without a pixel spacing, images that are
// not HU (a constant covering much of the image that is not air, as in
// normalised slices masked outside the lung) and images with no body.
//
// Everything here is safe for concurrent use; Compute allocates its own
// buffers.
package lungfield

import (
	"errors"
	"fmt"
	"math"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// Reasons why no field is computed.
var (
	ErrTooSmall = errors.New("lungfield: image too small for a lung field")
	ErrSpacing  = errors.New("lungfield: no pixel spacing")
	ErrNotHU    = errors.New("lungfield: image does not look like CT in HU")
	ErrNoBody   = errors.New("lungfield: no body found")
)

// Options tune Compute; zero values take the defaults of Default.
type Options struct {
	// BodyHU: the body is HU > BodyHU (default -500).
	BodyHU int16
	// LungHU: lung candidates are HU < LungHU (default -400).
	LungHU int16
	// MinLungMm2 drops lung components smaller than this (default 150 mm²).
	MinLungMm2 float64
	// OpenMm: the body threshold is opened with a square of 2·OpenMm
	// (whole pixels) before its largest component is taken, so that
	// things that touch the skin through a thin link stay out (default
	// 2 mm; negative: no opening).
	OpenMm float64
	// AirHU: a lung component whose mean HU is below AirHU is air, not
	// lung (default -950); an opening of the body whose mean HU is at
	// least AirHU is lung (step 1).
	AirHU int16
	// CloseMm is the radius of the closing disk (default 10 mm).
	CloseMm float64
	// MarginMm is the final dilation (default 5 mm).
	MarginMm float64
	// HullMm: the part of each lung component's convex hull within HullMm
	// of the closed field joins the field (default 25 mm; negative: none):
	// the hilum and masses that reach the mediastinum, which closing alone
	// leaves out.
	HullMm float64
	// MinSide: images with fewer rows or columns get no field (default 200).
	MinSide int
	// MinBodyFraction: a body smaller than this fraction of the image
	// means no field (default 0.05).
	MinBodyFraction float64
	// MaxConstantFraction: an image in which one value other than air
	// (≥ -900 HU) covers more than this fraction is not HU (default 0.25).
	MaxConstantFraction float64
}

// Default are the settings Compute uses for zero Options.
var Default = Options{BodyHU: -500, LungHU: -400, MinLungMm2: 150, OpenMm: 2, AirHU: -950, CloseMm: 10, MarginMm: 5, HullMm: 25,
	MinSide: 200, MinBodyFraction: 0.05, MaxConstantFraction: 0.25}

func (o Options) withDefaults() Options {
	d := Default
	if o.BodyHU == 0 {
		o.BodyHU = d.BodyHU
	}
	if o.LungHU == 0 {
		o.LungHU = d.LungHU
	}
	if o.MinLungMm2 == 0 {
		o.MinLungMm2 = d.MinLungMm2
	}
	if o.OpenMm == 0 {
		o.OpenMm = d.OpenMm
	}
	if o.AirHU == 0 {
		o.AirHU = d.AirHU
	}
	if o.CloseMm == 0 {
		o.CloseMm = d.CloseMm
	}
	if o.MarginMm == 0 {
		o.MarginMm = d.MarginMm
	}
	if o.HullMm == 0 {
		o.HullMm = d.HullMm
	}
	if o.MinSide == 0 {
		o.MinSide = d.MinSide
	}
	if o.MinBodyFraction == 0 {
		o.MinBodyFraction = d.MinBodyFraction
	}
	if o.MaxConstantFraction == 0 {
		o.MaxConstantFraction = d.MaxConstantFraction
	}
	return o
}

// Result holds a field and the masks it was built from.
type Result struct {
	// Field is the lung field.
	Field *imgx.Mask
	// Body is the body with its holes filled (step 1).
	Body *imgx.Mask
	// Lungs are the kept lung components (step 2).
	Lungs *imgx.Mask
}

// Compute returns the lung field of a slice (rowMm and colMm: the pixel
// spacing), or an error wrapping one of the Err values when no field can
// be computed.
func Compute(hu *imgx.HU, rowMm, colMm float64, o Options) (*imgx.Mask, error) {
	r, err := ComputeDetail(hu, rowMm, colMm, o)
	if err != nil {
		return nil, err
	}
	return r.Field, nil
}

// ComputeDetail is Compute returning the intermediate masks as well.
func ComputeDetail(hu *imgx.HU, rowMm, colMm float64, o Options) (*Result, error) {
	o = o.withDefaults()
	rows, cols := hu.Rows, hu.Cols
	if rows < o.MinSide || cols < o.MinSide {
		return nil, fmt.Errorf("%w: %d×%d, under %d px a side", ErrTooSmall, rows, cols, o.MinSide)
	}
	if !(rowMm > 0) || !(colMm > 0) {
		return nil, fmt.Errorf("%w: %g×%g mm", ErrSpacing, rowMm, colMm)
	}
	if v, n := mode(hu.Pix); v >= -900 && float64(n) > o.MaxConstantFraction*float64(len(hu.Pix)) {
		return nil, fmt.Errorf("%w: %d HU covers %.0f%% of the image", ErrNotHU, v, 100*float64(n)/float64(len(hu.Pix)))
	}
	n := rows * cols
	g := grid{rows: rows, cols: cols}

	// 1. Body.
	fg := make([]uint8, n)
	for i, v := range hu.Pix {
		if v > o.BodyHU {
			fg[i] = 1
		}
	}
	if o.OpenMm > 0 {
		// Break thin links to the body: a sensor, a cable, a blanket.
		ky, kx := int(math.Ceil(o.OpenMm/rowMm)), int(math.Ceil(o.OpenMm/colMm))
		for i, v := range fg {
			fg[i] = 1 - v
		}
		fg = g.boxDilate(fg, ky, kx) // the complement's dilation: fg eroded
		for i, v := range fg {
			fg[i] = 1 - v
		}
		fg = g.boxDilate(fg, ky, kx)
	}
	body := g.largest(fg)
	area := 0
	for _, v := range body {
		area += int(v)
	}
	if float64(area) < o.MinBodyFraction*float64(n) {
		return nil, fmt.Errorf("%w: largest component of HU > %d is %d px", ErrNoBody, o.BodyHU, area)
	}
	minPx := int(o.MinLungMm2/(rowMm*colMm) + 0.5)
	g.fillBody(body, hu.Pix, minPx, float64(o.AirHU))

	// 2. Lungs.
	cand := make([]uint8, n)
	for i, v := range hu.Pix {
		if v < o.LungHU && body[i] != 0 {
			cand[i] = 1
		}
	}
	lab, sizes := g.components(cand, 1, true)
	// Components of pure air are not lung: the trachea, gas in the bowel,
	// the inside of a sensor on the skin.
	sums := make([]float64, len(sizes))
	for i, l := range lab {
		if l != 0 {
			sums[l-1] += float64(hu.Pix[i])
		}
	}
	for k, s := range sizes {
		if s > 0 && sums[k]/float64(s) < float64(o.AirHU) {
			sizes[k] = 0
		}
	}
	lungs := make([]uint8, n)
	for i, l := range lab {
		if l != 0 && sizes[l-1] >= minPx {
			lungs[i] = 1
		}
	}

	// 3. Closing and hole filling; 4. hulls; 5. margin, within the body.
	// These run on the lungs' bounding box, padded so that nothing they do
	// reaches its edge: the closing and the hulls stay inside the box, the
	// margin adds MarginMm.
	field := make([]uint8, n)
	y0, y1, x0, x1 := bounds(lungs, rows, cols)
	if y1 >= y0 {
		pad := int(math.Ceil(max(o.CloseMm, o.MarginMm, 0)/min(rowMm, colMm))) + 2
		y0, y1, x0, x1 = max(0, y0-pad), min(rows-1, y1+pad), max(0, x0-pad), min(cols-1, x1+pad)
		c := grid{rows: y1 - y0 + 1, cols: x1 - x0 + 1, buf: &buffers{}}
		sub := make([]uint8, c.rows*c.cols)
		subLab := make([]int32, c.rows*c.cols)
		for y := 0; y < c.rows; y++ {
			copy(sub[y*c.cols:(y+1)*c.cols], lungs[(y0+y)*cols+x0:])
			copy(subLab[y*c.cols:(y+1)*c.cols], lab[(y0+y)*cols+x0:])
		}
		if o.CloseMm > 0 {
			c.dilate(sub, rowMm, colMm, o.CloseMm)
			c.erode(sub, rowMm, colMm, o.CloseMm)
		}
		c.fillHoles(sub)
		if o.HullMm > 0 {
			c.addHulls(sub, subLab, sizes, minPx, rowMm, colMm, o.HullMm)
		}
		if o.MarginMm > 0 {
			c.dilate(sub, rowMm, colMm, o.MarginMm)
		}
		for y := 0; y < c.rows; y++ {
			row := (y0+y)*cols + x0
			for x, v := range sub[y*c.cols : (y+1)*c.cols] {
				field[row+x] = v & body[row+x]
			}
		}
	}
	return &Result{
		Field: &imgx.Mask{Rows: rows, Cols: cols, Pix: field},
		Body:  &imgx.Mask{Rows: rows, Cols: cols, Pix: body},
		Lungs: &imgx.Mask{Rows: rows, Cols: cols, Pix: lungs},
	}, nil
}

// bounds returns the inclusive bounding box of the set pixels of m
// (y1 < y0 when there is none).
func bounds(m []uint8, rows, cols int) (y0, y1, x0, x1 int) {
	y0, y1, x0, x1 = rows, -1, cols, -1
	for y := 0; y < rows; y++ {
		for x, v := range m[y*cols : (y+1)*cols] {
			if v != 0 {
				y0, y1 = min(y0, y), max(y1, y)
				x0, x1 = min(x0, x), max(x1, x)
			}
		}
	}
	return y0, y1, x0, x1
}

// mode returns the most frequent value and its count.
func mode(px []int16) (int16, int) {
	var hist [1 << 16]int32
	for _, v := range px {
		hist[uint16(v)]++
	}
	best, bn := 0, int32(-1)
	for i, c := range hist {
		if c > bn {
			best, bn = i, c
		}
	}
	return int16(uint16(best)), int(bn)
}

// FromBits decodes the field a message carries (rows×cols bits, as
// imgx.Mask.PackBits writes them); nil when has is false (no field: keep
// everything).
func FromBits(rows, cols int, bits []byte, has bool) (*imgx.Mask, error) {
	if !has {
		return nil, nil
	}
	m, err := imgx.UnpackMask(rows, cols, bits)
	if err != nil {
		return nil, fmt.Errorf("lungfield: %w", err)
	}
	return m, nil
}

// Remove clears, in place, the set pixels of pred outside field and
// returns how many it cleared; a nil field clears nothing. The masks must
// have the same size.
func Remove(pred, field *imgx.Mask) int {
	if field == nil {
		return 0
	}
	n := 0
	for i, v := range pred.Pix {
		if v != 0 && field.Pix[i] == 0 {
			pred.Pix[i] = 0
			n++
		}
	}
	return n
}
