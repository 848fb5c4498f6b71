package augment

import (
	"math/rand/v2"

	"github.com/lungseg/lungseg/pkg/imgx"
)

// Intensity changes brightness and contrast of the windowed intensities:
// with v the windowed value clamped to [0,1], b drawn uniformly from
// [-Brightness, Brightness] and c from [1-Contrast, 1+Contrast], the new
// value is clamp01(c·(v−0.5) + 0.5 + b).
//
// With Window set the image is in HU: each pixel is windowed, adjusted and
// mapped back to HU through the same window, so the result lies in the
// window's HU range and windowing it again gives the adjusted intensities
// exactly (up to float rounding, or 1/Width per HU once rounded to int16).
// HU outside the window are clamped to its edges first, as windowing would
// do anyway. With Window nil the image is already in window space.
type Intensity struct {
	Brightness, Contrast float64
	Window               *Window
}

// Name implements Transform.
func (Intensity) Name() string { return "intensity" }

// Apply implements Transform. The mask is passed through unchanged.
func (t Intensity) Apply(img *imgx.Float, mask *imgx.Mask, r *rand.Rand, p *Params) (*imgx.Float, *imgx.Mask, error) {
	if err := check(img, mask); err != nil {
		return nil, nil, err
	}
	b := (2*r.Float64() - 1) * t.Brightness
	c := 1 + (2*r.Float64()-1)*t.Contrast
	p.Brightness, p.Contrast = b, c
	return AdjustIntensity(img, t.Window, b, c), cloneMask(mask), nil
}

// AdjustIntensity applies clamp01(c·(v−0.5) + 0.5 + b) to the windowed
// value v of every pixel; w nil means img is already windowed, otherwise
// img is HU and the result is mapped back to HU through w.
func AdjustIntensity(img *imgx.Float, w *Window, b, c float64) *imgx.Float {
	out := imgx.NewFloat(img.Rows, img.Cols)
	for i, x := range img.Pix {
		v := float64(x)
		if w != nil {
			v = w.Norm(v)
		}
		v = clamp01(c*(clamp01(v)-0.5) + 0.5 + b)
		if w != nil {
			v = w.HU(v)
		}
		out.Pix[i] = float32(v)
	}
	return out
}

// ToWindow maps HU to the model's [0,1] input through Window (the
// preprocess stage's normalisation). Steps after it work in window space.
type ToWindow struct {
	Window Window
}

// Name implements Transform.
func (ToWindow) Name() string { return "window" }

// Apply implements Transform. It draws nothing from r.
func (t ToWindow) Apply(img *imgx.Float, mask *imgx.Mask, _ *rand.Rand, _ *Params) (*imgx.Float, *imgx.Mask, error) {
	if err := check(img, mask); err != nil {
		return nil, nil, err
	}
	if err := t.Window.validate(); err != nil {
		return nil, nil, err
	}
	return t.Window.Apply(img), cloneMask(mask), nil
}
