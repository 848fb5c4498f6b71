// Package cascade holds the arithmetic of the two-model cascade
// "<detector>+crop": where the crop windows go and how the windows'
// probabilities merge with the detector's map. The refine stage
// (segment/refine) does both and publishes the refined map, which score
// thresholds (step 6) without knowing of windows. It is pure Go with no
// model or bus, so that tests can check it on hand-made maps.
//
// The algorithm (its held-out evaluation runs it through the Go pipeline:
// task eval-lidc, which replays pickles written by train's eval_pkl):
//
//  1. The detector's probability map is resized to the slice's rows×cols
//     with imgx.ResizeBilinear (the native map).
//  2. Candidates are the 8-connected components of native pixels with
//     probability > DetectThreshold (float32 comparison) inside the
//     slice's lung field (pkg/lungfield; PlanIn: everywhere when the slice
//     has none), each with its
//     inclusive bounding box and peak probability. They are sorted by peak
//     descending, ties by bounding-box top row, then left column, then
//     raster order of the component's first pixel; the first
//     MaxCandidates are kept. Of those, a component whose box is taller or
//     wider than Window−16 is skipped (it gets no window); it still counts
//     towards MaxCandidates.
//  3. Each remaining candidate gets the Window×Window window whose top-left
//     corner is (cy−Window/2, cx−Window/2), with cy = (ymin+ymax)/2 and
//     cx = (xmin+xmax)/2 in integer division. Windows are not clamped to
//     the image: pixels outside it read OutsideHU. With BoxMargin > 0 (the
//     card's cascade.box_margin) the window also gets a box: the
//     component's bounding box grown by BoxMargin on every side, each side
//     at least MinBox, kept inside the window (BoxOf). The crop model then
//     sees only the box's HU, air around it, as it sees a nodule crop of
//     the LIDC protocol alone (train's data.pad_bare_crop), and only the
//     box counts as covered in step 5.
//  4. The crop model sees the window's HU normalised as its card says
//     (Crop) and returns a probability window.
//  5. Merge: a pixel covered by one window or more takes the maximum of
//     those windows' probabilities (the detector's value there is
//     discarded); a pixel covered by no window takes min(native,
//     threshold), threshold being the crop model's. So only crop windows
//     make mask pixels: the pixels of skipped candidates, of candidates
//     past MaxCandidates and of anything else the detector saw are capped
//     at the threshold too. With no candidate the whole map is capped.
//  6. The mask is refined > threshold (strictly, in float32: a capped
//     pixel equals the threshold at most and is never in the mask).
package cascade

import (
	"errors"
	"fmt"
	"sort"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/model"
)

// OutsideHU is the value a window reads outside the image (air).
const OutsideHU = imgx.AirHU

// Margin is how much smaller than the window a candidate's bounding box
// must be, in each direction, to get a window.
const Margin = 16

// MinBox is the least side of a boxed candidate (BoxMargin > 0): the
// smallest nodule crops of ctslicing_vois_hu, which the crop models are
// trained on, are 43–44 px.
const MinBox = 44

// ErrWindow reports a window whose size or probabilities do not fit.
var ErrWindow = errors.New("cascade: bad window")

// Params are a crop model's cascade settings.
type Params struct {
	// Window is the side of the square crop window in native pixels.
	Window int
	// DetectThreshold cuts the detector's native map into candidates.
	DetectThreshold float32
	// MaxCandidates is the most candidates kept per slice.
	MaxCandidates int
	// Threshold is the crop model's own threshold: the refined map's cap
	// and mask threshold.
	Threshold float32
	// BoxMargin > 0 boxes each candidate (step 3): the crop model sees the
	// component's box grown by BoxMargin px, air around it. 0: the whole
	// window in its context.
	BoxMargin int
}

// ParamsOf returns the cascade settings of a crop model's card.
func ParamsOf(c *model.Card) (Params, error) {
	if !c.IsCrop() || c.Cascade == nil {
		return Params{}, fmt.Errorf("cascade: %s is not a crop model", c.Name)
	}
	return Params{Window: c.Cascade.Window, DetectThreshold: float32(c.Cascade.DetectThreshold),
		MaxCandidates: c.Cascade.MaxCandidates, Threshold: float32(c.Threshold),
		BoxMargin: c.Cascade.BoxMargin}, nil
}

// Component is one 8-connected component of the native map above the
// detect threshold.
type Component struct {
	// Inclusive bounding box.
	YMin, XMin, YMax, XMax int
	// Peak is the highest probability in the component.
	Peak float32
	// Pixels is the component's size.
	Pixels int
}

// Height and Width are the bounding box's sides.
func (c Component) Height() int { return c.YMax - c.YMin + 1 }

// Width is the bounding box's width.
func (c Component) Width() int { return c.XMax - c.XMin + 1 }

// Window is a rectangle on the native grid; Y0 and X0 may be negative and
// the rectangle may reach past the image.
type Window struct {
	Y0, X0, H, W int
	// Box, when not empty, is the part of the window the crop model sees
	// (in native coordinates, inside the window); the rest reads air and
	// is not covered in Merge.
	Box Rect
}

// Rect is a rectangle on the native grid: rows Y0..Y0+H-1, columns
// X0..X0+W-1. The zero Rect is empty.
type Rect struct {
	Y0, X0, H, W int
}

// Empty reports whether r holds no pixel.
func (r Rect) Empty() bool { return r.H <= 0 || r.W <= 0 }

// Has reports whether the pixel (y, x) lies in r.
func (r Rect) Has(y, x int) bool { return y >= r.Y0 && y < r.Y0+r.H && x >= r.X0 && x < r.X0+r.W }

// seen reports whether the crop model sees the pixel (y, x) of w's
// window, in native coordinates: all of the window when it has no box.
func (w Window) seen(y, x int) bool { return w.Box.Empty() || w.Box.Has(y, x) }

// Components labels the 8-connected components of the pixels of prob
// (rows×cols) with a value > thr, in raster order of each component's
// first pixel.
func Components(prob []float32, rows, cols int, thr float32) []Component {
	seen := make([]bool, len(prob))
	var out []Component
	var stack []int
	for start, v := range prob {
		if seen[start] || !(v > thr) {
			continue
		}
		c := Component{YMin: rows, XMin: cols, YMax: -1, XMax: -1, Peak: v}
		seen[start] = true
		stack = append(stack[:0], start)
		for len(stack) > 0 {
			i := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			y, x := i/cols, i%cols
			c.Pixels++
			c.YMin, c.YMax = min(c.YMin, y), max(c.YMax, y)
			c.XMin, c.XMax = min(c.XMin, x), max(c.XMax, x)
			if prob[i] > c.Peak {
				c.Peak = prob[i]
			}
			for dy := -1; dy <= 1; dy++ {
				ny := y + dy
				if ny < 0 || ny >= rows {
					continue
				}
				for dx := -1; dx <= 1; dx++ {
					nx := x + dx
					if nx < 0 || nx >= cols {
						continue
					}
					j := ny*cols + nx
					if !seen[j] && prob[j] > thr {
						seen[j] = true
						stack = append(stack, j)
					}
				}
			}
		}
		out = append(out, c)
	}
	return out
}

// Select orders components (given in raster order, as Components returns
// them) by peak descending, ties by top row then left column, keeps the
// first p.MaxCandidates, drops those whose box exceeds Window−Margin in
// height or width, and returns the windows of the rest, in that order.
func Select(comps []Component, p Params) []Window {
	cs := append([]Component(nil), comps...)
	sort.SliceStable(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if a.Peak != b.Peak {
			return a.Peak > b.Peak
		}
		if a.YMin != b.YMin {
			return a.YMin < b.YMin
		}
		return a.XMin < b.XMin
	})
	if len(cs) > p.MaxCandidates {
		cs = cs[:p.MaxCandidates]
	}
	var out []Window
	for _, c := range cs {
		if c.Height() > p.Window-Margin || c.Width() > p.Window-Margin {
			continue
		}
		w := WindowOf(c, p.Window)
		if p.BoxMargin > 0 {
			w.Box = BoxOf(c, w, p.BoxMargin)
		}
		out = append(out, w)
	}
	return out
}

// BoxOf returns a component's box in window w: its bounding box grown by
// margin on every side, each side at least MinBox (grown about the box's
// centre), cut to the window.
func BoxOf(c Component, w Window, margin int) Rect {
	grow := func(lo, hi, wlo, wn int) (int, int) {
		lo, hi = lo-margin, hi+margin // inclusive
		if n := hi - lo + 1; n < MinBox {
			lo -= (MinBox - n) / 2
			hi = lo + MinBox - 1
		}
		lo, hi = max(lo, wlo), min(hi, wlo+wn-1)
		return lo, hi - lo + 1
	}
	y0, h := grow(c.YMin, c.YMax, w.Y0, w.H)
	x0, wd := grow(c.XMin, c.XMax, w.X0, w.W)
	return Rect{Y0: y0, X0: x0, H: h, W: wd}
}

// WindowOf returns the size×size window centred on a component's box.
func WindowOf(c Component, size int) Window {
	cy, cx := (c.YMin+c.YMax)/2, (c.XMin+c.XMax)/2
	return Window{Y0: cy - size/2, X0: cx - size/2, H: size, W: size}
}

// Plan returns the crop windows of a native-resolution detector map
// (steps 2 and 3).
func Plan(native []float32, rows, cols int, p Params) []Window {
	return Select(Components(native, rows, cols, p.DetectThreshold), p)
}

// PlanIn is Plan with candidates taken only from inside field (rows×cols;
// nil: everywhere): pixels outside it count as 0. native is not changed.
func PlanIn(native []float32, rows, cols int, p Params, field *imgx.Mask) []Window {
	if field == nil {
		return Plan(native, rows, cols, p)
	}
	in := make([]float32, len(native))
	for i, v := range native {
		if field.Pix[i] != 0 {
			in[i] = v
		}
	}
	return Plan(in, rows, cols, p)
}

// Crop returns the crop model's input of one window: the HU of the window
// (OutsideHU beyond the image and outside the window's box when it has
// one), normalised by norm, row-major.
func Crop(hu *imgx.HU, w Window, norm model.Normalisation) []float32 {
	out := make([]float32, w.H*w.W)
	air := norm.Apply(OutsideHU)
	for y := 0; y < w.H; y++ {
		sy := w.Y0 + y
		row := out[y*w.W : (y+1)*w.W]
		for x := range row {
			sx := w.X0 + x
			if sy < 0 || sy >= hu.Rows || sx < 0 || sx >= hu.Cols || !w.seen(sy, sx) {
				row[x] = air
				continue
			}
			row[x] = norm.Apply(float64(hu.Pix[sy*hu.Cols+sx]))
		}
	}
	return out
}

// Merge builds the refined map (step 5) from the native detector map
// (rows×cols) and the crop model's probability windows (probs[k] holds
// wins[k].H×wins[k].W values). native is not changed.
func Merge(native []float32, rows, cols int, wins []Window, probs [][]float32, thr float32) ([]float32, error) {
	if len(native) != rows*cols {
		return nil, fmt.Errorf("%w: native map of %d values for %d×%d", ErrWindow, len(native), rows, cols)
	}
	if len(wins) != len(probs) {
		return nil, fmt.Errorf("%w: %d windows, %d probability maps", ErrWindow, len(wins), len(probs))
	}
	refined := make([]float32, len(native))
	covered := make([]bool, len(native))
	for k, w := range wins {
		if w.H < 1 || w.W < 1 || w.H > imgx.MaxSide || w.W > imgx.MaxSide || len(probs[k]) != w.H*w.W {
			return nil, fmt.Errorf("%w: window %d is %d×%d with %d values", ErrWindow, k, w.H, w.W, len(probs[k]))
		}
		for y := max(0, -w.Y0); y < w.H && w.Y0+y < rows; y++ {
			py := w.Y0 + y
			for x := max(0, -w.X0); x < w.W && w.X0+x < cols; x++ {
				if !w.seen(py, w.X0+x) {
					continue
				}
				i := py*cols + w.X0 + x
				v := probs[k][y*w.W+x]
				if !covered[i] || v > refined[i] {
					refined[i] = v
				}
				covered[i] = true
			}
		}
	}
	for i, v := range native {
		if !covered[i] {
			refined[i] = min(v, thr)
		}
	}
	return refined, nil
}

// Mask thresholds a refined map (step 6): pixels with a value > thr.
func Mask(refined []float32, rows, cols int, thr float32) *imgx.Mask {
	m := imgx.NewMask(rows, cols)
	for i, v := range refined {
		if v > thr {
			m.Pix[i] = 1
		}
	}
	return m
}
