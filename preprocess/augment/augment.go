// Package augment holds the data augmentation of the training set: random
// rotation, flips, elastic deformation, brightness and contrast, and the
// resize to the model's input size. Every transform is applied identically
// to the image and its mask (bilinear sampling for the image, nearest
// neighbour for the mask, so masks stay binary) and draws its random
// parameters from one *rand.Rand, so that a seed reproduces an augmented
// slice bit for bit.
//
// Images travel as *imgx.Float holding HU values ("HU space"): geometric
// steps fill the border with air (AirHU) and the intensity step works on
// the windowed intensities, mapping the result back to HU through the same
// window (see Intensity). A "window" step turns HU into the model's [0,1]
// input; steps after it work in window space (geometric steps then fill
// with the window's value of air). A pipeline that starts with a window
// step and a resize gives the preprocess stage's model input bit for bit
// (preprocess.Input windows, then resizes); resizing HU first, as
// Default does for the HU PNGs of "lungseg dataset build", differs from
// it only next to HU outside the window, where clamping and interpolation
// do not commute.
package augment

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// AirHU is the value geometric transforms give to pixels that come from
// outside the image.
const AirHU = -1024

var (
	// ErrShape reports an image and mask of different sizes, or pixel
	// data that does not match its dimensions.
	ErrShape = errors.New("augment: image and mask shapes differ")
	// ErrConfig reports an invalid pipeline configuration.
	ErrConfig = errors.New("augment: invalid configuration")
	// ErrWindowed reports ApplyHU on a pipeline whose output is windowed
	// [0,1] intensities rather than HU.
	ErrWindowed = errors.New("augment: pipeline output is windowed, not HU")
)

// Params records what one run of a pipeline did: the steps in order and
// the random values drawn. Fields of steps that did not run are zero.
type Params struct {
	// Steps names the steps applied, in order.
	Steps []string
	// Rows and Cols are the output size.
	Rows, Cols int
	// AngleDeg is the rotation, counter-clockwise as displayed.
	AngleDeg float64
	// FlipH mirrors left-right, FlipV top-bottom.
	FlipH, FlipV bool
	// Alpha and Sigma are the elastic deformation's scale and smoothing
	// (pixels).
	Alpha, Sigma float64
	// Brightness is added to, and Contrast multiplies the distance from
	// 0.5 of, the windowed intensity (Contrast 1 is no change).
	Brightness, Contrast float64
}

// Transform is one augmentation step. Apply returns new images (the
// inputs are not modified), records its random draws in p, and treats a
// nil mask as absent. It draws from r even when its draw leaves the image
// unchanged, so the number of draws depends only on the image size.
type Transform interface {
	// Name is the step's op name as in Step.Op.
	Name() string
	Apply(img *imgx.Float, mask *imgx.Mask, r *rand.Rand, p *Params) (*imgx.Float, *imgx.Mask, error)
}

// Pipeline applies its steps in order.
type Pipeline struct {
	Steps []Transform
}

// check validates the image and mask shapes.
func check(img *imgx.Float, mask *imgx.Mask) error {
	if img == nil {
		return fmt.Errorf("%w: nil image", ErrShape)
	}
	if err := imgx.CheckSize(img.Rows, img.Cols); err != nil {
		return err
	}
	if len(img.Pix) != img.Rows*img.Cols {
		return fmt.Errorf("%w: %d pixels for %d×%d", ErrShape, len(img.Pix), img.Rows, img.Cols)
	}
	if mask == nil {
		return nil
	}
	if mask.Rows != img.Rows || mask.Cols != img.Cols || len(mask.Pix) != mask.Rows*mask.Cols {
		return fmt.Errorf("%w: image %d×%d, mask %d×%d (%d pixels)", ErrShape, img.Rows, img.Cols, mask.Rows, mask.Cols, len(mask.Pix))
	}
	return nil
}

// Apply runs every step on img and mask (mask may be nil) with random
// values from r, and returns the results with the parameters drawn. The
// inputs are not modified; with no steps the results are copies.
func (pl *Pipeline) Apply(img *imgx.Float, mask *imgx.Mask, r *rand.Rand) (*imgx.Float, *imgx.Mask, Params, error) {
	var p Params
	if err := check(img, mask); err != nil {
		return nil, nil, p, err
	}
	img, mask = cloneFloat(img), cloneMask(mask)
	for _, t := range pl.Steps {
		var err error
		img, mask, err = t.Apply(img, mask, r, &p)
		if err != nil {
			return nil, nil, p, fmt.Errorf("applying %s: %w", t.Name(), err)
		}
		p.Steps = append(p.Steps, t.Name())
	}
	p.Rows, p.Cols = img.Rows, img.Cols
	return img, mask, p, nil
}

// Windowed reports whether the pipeline's output is windowed [0,1]
// intensities (it has a ToWindow step).
func (pl *Pipeline) Windowed() bool {
	for _, t := range pl.Steps {
		if _, ok := t.(ToWindow); ok {
			return true
		}
	}
	return false
}

// ApplyHU runs a pipeline that works in HU on a HU slice and rounds the
// result back to HU (clamped to int16). It fails with ErrWindowed on a
// pipeline with a window step.
func (pl *Pipeline) ApplyHU(hu *imgx.HU, mask *imgx.Mask, r *rand.Rand) (*imgx.HU, *imgx.Mask, Params, error) {
	if pl.Windowed() {
		return nil, nil, Params{}, ErrWindowed
	}
	if hu == nil || len(hu.Pix) != hu.Rows*hu.Cols {
		return nil, nil, Params{}, fmt.Errorf("%w: bad HU image", ErrShape)
	}
	f, m, p, err := pl.Apply(FloatFromHU(hu), mask, r)
	if err != nil {
		return nil, nil, p, err
	}
	return HUFromFloat(f), m, p, nil
}

// NewRand returns the random source for one augmented item: PCG seeded
// with seed and a 64-bit FNV-1a hash of key (for example the item's output
// name and copy number), so that each item's draws depend only on the
// seed and its key, not on the order or concurrency of processing.
func NewRand(seed uint64, key string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(key))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// FloatFromHU converts a HU slice to a float map of HU values.
func FloatFromHU(hu *imgx.HU) *imgx.Float {
	f := imgx.NewFloat(hu.Rows, hu.Cols)
	for i, v := range hu.Pix {
		f.Pix[i] = float32(v)
	}
	return f
}

// HUFromFloat rounds a float map of HU values to the nearest integer
// (halves away from zero), clamping to the int16 range; NaN becomes air.
func HUFromFloat(f *imgx.Float) *imgx.HU {
	h := &imgx.HU{Rows: f.Rows, Cols: f.Cols, Pix: make([]int16, len(f.Pix))}
	for i, v := range f.Pix {
		x := math.Round(float64(v))
		switch {
		case math.IsNaN(x):
			h.Pix[i] = AirHU
		case x < math.MinInt16:
			h.Pix[i] = math.MinInt16
		case x > math.MaxInt16:
			h.Pix[i] = math.MaxInt16
		default:
			h.Pix[i] = int16(x)
		}
	}
	return h
}

func cloneFloat(f *imgx.Float) *imgx.Float {
	return &imgx.Float{Rows: f.Rows, Cols: f.Cols, Pix: append([]float32(nil), f.Pix...)}
}

func cloneMask(m *imgx.Mask) *imgx.Mask {
	if m == nil {
		return nil
	}
	return &imgx.Mask{Rows: m.Rows, Cols: m.Cols, Pix: append([]uint8(nil), m.Pix...)}
}

// Window is an HU window: [Center-Width/2, Center+Width/2] maps linearly
// onto [0,1] (the model card's "window" normalisation).
type Window struct {
	Center float64 `json:"center"`
	Width  float64 `json:"width"`
}

// LungWindow is the window of the shipped model cards (-600/1500 HU).
var LungWindow = Window{Center: -600, Width: 1500}

func (w Window) lo() float64 { return w.Center - w.Width/2 }

// Norm maps HU to window space without clamping.
func (w Window) Norm(hu float64) float64 { return (hu - w.lo()) / w.Width }

// HU maps a window-space value back to HU.
func (w Window) HU(v float64) float64 { return w.lo() + v*w.Width }

// Value maps one HU value to [0,1], as model.Normalisation.Apply does.
func (w Window) Value(hu float64) float32 {
	return float32(clamp01(w.Norm(hu)))
}

// Apply maps a HU map to windowed [0,1] intensities.
func (w Window) Apply(f *imgx.Float) *imgx.Float {
	out := imgx.NewFloat(f.Rows, f.Cols)
	for i, v := range f.Pix {
		out.Pix[i] = w.Value(float64(v))
	}
	return out
}

func (w Window) validate() error {
	if !(w.Width > 0) || math.IsInf(w.Width, 0) || math.IsNaN(w.Center) || math.IsInf(w.Center, 0) {
		return fmt.Errorf("%w: window %g/%g needs a finite centre and a positive width", ErrConfig, w.Center, w.Width)
	}
	return nil
}

func clamp01(v float64) float64 {
	if v < 0 {
		return 0
	}
	if v > 1 {
		return 1
	}
	return v
}
